"""A small trained two-tower model, published and loaded, for the streaming tests.

Trained on the lab's real training data (`ratings_ml_training_dataset.csv`) when it is present, so the
real stream record's product codes exist; on generated demo data otherwise.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_assets.embeddings import EmbeddingRows, version_prefix
from recsys_assets.model_code import two_tower as tt
from resources import classicmodels_demo
from resources.artifacts import ArtifactStore, join_key
from resources.pgvector import PgVectorStore


def training_frame(datasets_dir: Path) -> pd.DataFrame:
    csv = datasets_dir / "classicmodels" / "ratings_ml_training_dataset.csv"
    if csv.exists():
        return pd.read_csv(csv)
    tables = classicmodels_demo.generate()
    ratings = tables["ratings"].rename(columns=str.lower)
    products = tables["products"].rename(columns=str.lower)
    customers = tables["customers"].rename(columns=str.lower)
    return ratings.merge(products, on="productcode").merge(customers, on="customernumber")


def publish_and_load(frame: pd.DataFrame, artifacts: ArtifactStore, store: PgVectorStore, version: str,
                     epochs: int = 60, seed: int = 7, numpy_export: bool = True) -> dict:
    """Train (one factor penalty, no inner selection: quick), publish the lab layout's model files under
    ml-artifacts/<version>/, load both tables. `numpy_export=False` publishes a version as earlier platform
    versions did, without `model/user_tower.json`."""
    fitted = tt.fit(frame, tt.Hyperparameters(epochs=epochs, factor_l2=(10.0,)), seed)
    products = frame.drop_duplicates(tt.ITEM_ID).sort_values(tt.ITEM_ID)
    users = frame.drop_duplicates(tt.USER_ID).sort_values(tt.USER_ID)
    files = tt.bundle_files(fitted, products, users, numpy_export=numpy_export)
    item_vectors, _norm = fitted.item_vectors(products)
    user_vectors = fitted.user_vectors(users)
    for name, data in files.items():
        artifacts.write_bytes(join_key(version_prefix(version), name), data)
    artifacts.write_json(join_key(version_prefix(version), "manifest.json"),
                         {"version": version, "dimension": 32, "files": sorted(files),
                          "rows": {"item_embeddings": len(products), "user_embeddings": len(users)}})
    store.load_version(version, {
        store.item_table: EmbeddingRows(products[tt.ITEM_ID].to_numpy(dtype=object), item_vectors, "items"),
        store.user_table: EmbeddingRows(users[tt.USER_ID].to_numpy(dtype=np.int64), user_vectors, "users"),
    }, 32)
    return {"products": products, "users": users, "item_vectors": item_vectors, "user_vectors": user_vectors,
            "fitted": fitted, "user_scaler": fitted.user_scaler}


# --- session events, good and poisonous ------------------------------------------------------------------

GOOD = {"session_id": "s-1", "customer_number": 103, "city": "Nantes", "country": "France", "credit_limit": 21000,
        "browse_history": [{"product_code": "S10_1678", "quantity": "1", "in_shopping_cart": True}]}


def nested(depth: int) -> bytes:
    return b'{"session_id": "s", "deep": ' + b"[" * depth + b"]" * depth + b"}"


def with_history(code: str) -> dict:
    return {**GOOD, "browse_history": [{"product_code": code, "quantity": "1", "in_shopping_cart": True}]}


# Each of these failed a whole micro-batch (and so a whole hour, or a whole Firehose invocation) before.
POISON = {
    "deeply nested": (nested(1_500), "nested deeper than 32 levels"),
    "nested just inside the parser's limit, as the session id": (
        b'{"session_id": ' + b"[" * 500 + b"]" * 500 + b"}", "field session_id must be a non-empty string, not an array"),
    "nested 40 levels in a field nobody reads": (json.dumps({**GOOD, "extra": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}).encode(),
                                                 "nested deeper than 32 levels"),
    "NaN in a field nobody reads": (json.dumps(GOOD)[:-1].encode() + b', "extra": NaN}', "NaN is not a JSON value"),
    "1e400 in a field nobody reads": (json.dumps(GOOD)[:-1].encode() + b', "extra": 1e400}', "extra is not a finite number"),
    "NUL in a field nobody reads": (json.dumps({**GOOD, "extra": "a\u0000b"}).encode(), "extra contains a NUL character"),
    "NUL in a product code": (json.dumps(with_history("S10_\u0000")).encode(), "product_code contains a NUL character"),
    "NUL in the city": (json.dumps({**GOOD, "city": "Nan\u0000tes"}).encode(), "field city contains a NUL character"),
    "lone surrogate in a product code": (json.dumps(with_history("S10_\ud800")).encode(),
                                         "product_code is not valid Unicode text"),
    "lone surrogate in the country": (json.dumps({**GOOD, "country": "Fran\udc00ce"}).encode(),
                                      "field country is not valid Unicode text"),
    "credit limit 1e308": (json.dumps({**GOOD, "credit_limit": 1e308}).encode(),
                           "field credit_limit must be a number from 0 to 1e+12, not 1e+308"),
    "a 5,000-digit customer number": (
        b'{"session_id": "s", "customer_number": ' + b"9" * 5_000 + b', "city": "a"}', "not JSON"),
    "a 1e400 credit limit": (json.dumps(GOOD).replace("21000", "1e400").encode(), "must be a number from 0"),
    "a credit limit of 400 digits": (json.dumps(GOOD).replace("21000", "9" * 400).encode(),
                                     "field credit_limit must be a number from 0 to 1e+12"),
    "a quantity of 10^40": (json.dumps({**GOOD, "browse_history": [
        {"product_code": "S10_1678", "quantity": 10**40, "in_shopping_cart": True}]}).encode(),
        "browse_history[0].quantity must be a whole number"),
    "too large": (json.dumps({**GOOD, "padding": "x" * 20_000}).encode(), "event too large: 20,"),
}
