"""A small trained two-tower model, published and loaded, for the streaming tests.

Trained on the lab's real training data (``ratings_ml_training_dataset.csv``) when it is present, so the
real stream record's product codes exist; on generated demo data otherwise.
"""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

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
                     epochs: int = 60, seed: int = 7) -> dict:
    """Train, publish the lab layout's model files under ml-artifacts/<version>/, load both tables."""
    user_scaler = tt.fit_scaler(frame, tt.USER_CATEGORICAL, tt.USER_NUMERIC)
    item_scaler = tt.fit_scaler(frame, tt.ITEM_CATEGORICAL, tt.ITEM_NUMERIC)
    validation = np.random.default_rng(seed).random(len(frame)) < 0.2
    model, _best = tt.train(tt.transform(frame, user_scaler), tt.transform(frame, item_scaler),
                            frame[tt.RATING].to_numpy(), validation, epochs=epochs, seed=seed)
    products = frame.drop_duplicates(tt.ITEM_ID).sort_values(tt.ITEM_ID)
    users = frame.drop_duplicates(tt.USER_ID).sort_values(tt.USER_ID)
    item_vectors = tt.embed(model.item_tower, tt.transform(products, item_scaler))
    user_vectors = tt.embed(model.user_tower, tt.transform(users, user_scaler))
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    files = {
        tt.MODEL_FILE: state.getvalue(),
        tt.CONFIG_FILE: json.dumps(tt.config_for(user_scaler, item_scaler, 32, 64)).encode(),
        tt.USER_SCALER_FILE: json.dumps(user_scaler).encode(),
        tt.ITEM_SCALER_FILE: json.dumps(item_scaler).encode(),
        tt.ITEM_EMBEDDINGS_FILE: tt.embeddings_csv(products[tt.ITEM_ID].tolist(), item_vectors).encode(),
        tt.USER_EMBEDDINGS_FILE: tt.embeddings_csv(users[tt.USER_ID].astype(int).tolist(), user_vectors).encode(),
    }
    for name, data in files.items():
        artifacts.write_bytes(join_key(version_prefix(version), name), data)
    artifacts.write_json(join_key(version_prefix(version), "manifest.json"),
                         {"version": version, "dimension": 32, "files": sorted(files),
                          "rows": {"item_embeddings": len(products), "user_embeddings": len(users)}})
    store.load_embeddings(store.item_table, EmbeddingRows(products[tt.ITEM_ID].to_numpy(dtype=object), item_vectors,
                                                          "items"), 32, version=version)
    store.load_embeddings(store.user_table, EmbeddingRows(users[tt.USER_ID].to_numpy(dtype=np.int64), user_vectors,
                                                          "users"), 32, version=version)
    return {"products": products, "users": users, "item_vectors": item_vectors, "model": model,
            "user_scaler": user_scaler}
