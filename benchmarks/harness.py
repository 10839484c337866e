"""What every benchmark shares: a throw-away folder for the run (its embedded PostgreSQL server is stopped
and the folder removed at the end, whatever happens), the platform settings for that folder, and peak RSS;
and what the benchmarks and the tests both set up: a root connection to the MariaDB server on
127.0.0.1:3306, the lab's ratings training frame, and a small two-tower model published and loaded.

The tests import these from here (`benchmarks.harness`); heavy imports stay inside the functions, so a
benchmark that needs none of them does not pay for them in its time or peak RSS."""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.embedded_postgres import stop_embedded_server  # noqa: E402
from resources.settings import PlatformSettings  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

    from resources.artifacts import ArtifactStore
    from resources.pgvector import PgVectorStore

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@contextmanager
def scratch_folder(name: str, keep: Path | None = None) -> Iterator[Path]:
    """A new temporary folder (or `keep`, which is left in place) holding the run's data."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"mldp-bench-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        stop_embedded_server(work / "postgres")
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def settings_for(work: Path) -> PlatformSettings:
    """The platform's settings with the run's folder as DATA_DIR (DATASETS_DIR still taken from the environment)."""
    return PlatformSettings.from_env({"DATA_DIR": str(work), "DATASETS_DIR": os.environ.get("DATASETS_DIR", "")})


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> int:
    """Peak resident memory so far, in MB (of this process, or of its finished children)."""
    return round(resource.getrusage(who).ru_maxrss / 1024)


def mysql_connection(database: str | None = None, **extra):
    """A PyMySQL connection (autocommit) to the MariaDB server the tests and benchmarks use."""
    import pymysql

    return pymysql.connect(**MYSQL, database=database, charset="utf8mb4", autocommit=True, **extra)


def training_frame(datasets_dir: Path) -> pd.DataFrame:
    """The lab's real training data (`classicmodels/ratings_ml_training_dataset.csv`) when it is present, so
    the real stream record's product codes exist; the generated demo tables, joined the same way, otherwise."""
    import pandas as pd

    from resources import classicmodels_demo

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
    import numpy as np

    from recsys_assets.embeddings import EmbeddingRows
    from recsys_assets.model_code import two_tower as tt
    from resources.artifact_keys import MODEL_VERSIONS_PREFIX
    from resources.model_versions import publish_version

    fitted = tt.fit(frame, tt.Hyperparameters(epochs=epochs, factor_l2=(10.0,)), seed)
    products = frame.drop_duplicates(tt.ITEM_ID).sort_values(tt.ITEM_ID)
    users = frame.drop_duplicates(tt.USER_ID).sort_values(tt.USER_ID)
    files = tt.bundle_files(fitted, products, users, numpy_export=numpy_export)
    item_vectors, _norm = fitted.item_vectors(products)
    user_vectors = fitted.user_vectors(users)
    publish_version(artifacts, MODEL_VERSIONS_PREFIX, version, files,
                    {"dimension": 32, "rows": {"item_embeddings": len(products), "user_embeddings": len(users)}})
    store.load_version(version, {
        store.item_table: EmbeddingRows(products[tt.ITEM_ID].to_numpy(dtype=object), item_vectors, "items"),
        store.user_table: EmbeddingRows(users[tt.USER_ID].to_numpy(dtype=np.int64), user_vectors, "users"),
    }, 32)
    return {"products": products, "users": users, "item_vectors": item_vectors, "user_vectors": user_vectors,
            "fitted": fitted, "user_scaler": fitted.user_scaler}
