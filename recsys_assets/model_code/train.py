"""SageMaker script-mode training entry point for the two-tower recommender.

Channels: `train` (the ratings training data, Parquet hive-partitioned by customernumber) and `catalog`
(optional: `products.parquet` and `customers.parquet`, so every product and customer gets an
embedding, not only those with ratings). Writes the lab's layout into `SM_MODEL_DIR`: `model/`,
`scalers/` (JSON), `embeddings/` (CSV `id,embedding` in pgvector text form) and `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import torch

import two_tower as tt


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedding-dim", "--embedding_dim", dest="embedding_dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=1e-4)
    parser.add_argument("--validation-fraction", "--validation_fraction", dest="validation_fraction", type=float,
                        default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "train"))
    parser.add_argument("--catalog", default=os.environ.get("SM_CHANNEL_CATALOG", ""))
    args, _unknown = parser.parse_known_args(argv)
    return args


def read_ratings(channel: str) -> pd.DataFrame:
    """The training data: the files its `_manifest.json` lists (all Parquet files when it has none)."""
    partitioning = ds.partitioning(pa.schema([(tt.USER_ID, pa.int64())]), flavor="hive")
    manifest = Path(channel) / "_manifest.json"
    if manifest.exists():
        files = [str(Path(channel) / name) for name in json.loads(manifest.read_text())["files"]]
        if not files:
            return pd.DataFrame(columns=[tt.USER_ID, tt.ITEM_ID, tt.RATING])
        dataset = ds.dataset(files, format="parquet", partitioning=partitioning, partition_base_dir=channel)
    else:
        dataset = ds.dataset(channel, format="parquet", partitioning=partitioning)
    return dataset.to_table().to_pandas()


def fail(message: str) -> int:
    output = Path(os.environ.get("SM_OUTPUT_DIR", "output"))
    output.mkdir(parents=True, exist_ok=True)
    (output / "failure").write_text(f"ClientError: {message}")
    print(f"training input error: {message}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = parse_args(argv)
    ratings = read_ratings(args.train)
    required = [tt.USER_ID, tt.ITEM_ID, tt.RATING, *tt.USER_CATEGORICAL, *tt.USER_NUMERIC, *tt.ITEM_CATEGORICAL,
                *tt.ITEM_NUMERIC]
    missing = [c for c in required if c not in ratings.columns]
    if missing:
        return fail(f"train channel lacks column(s) {', '.join(missing)}")
    if ratings.empty:
        return fail("the train channel holds no ratings: nothing to train on")
    user_scaler = tt.fit_scaler(ratings, tt.USER_CATEGORICAL, tt.USER_NUMERIC)
    item_scaler = tt.fit_scaler(ratings, tt.ITEM_CATEGORICAL, tt.ITEM_NUMERIC)
    rng = np.random.default_rng(args.seed)
    validation = rng.random(len(ratings)) < args.validation_fraction
    if validation.all() or not validation.any():
        return fail(f"{len(ratings)} ratings are too few for a train/validation split")
    user_x, item_x = tt.transform(ratings, user_scaler), tt.transform(ratings, item_scaler)
    model, best = tt.train(user_x, item_x, ratings[tt.RATING].to_numpy(), validation, dim=args.embedding_dim,
                           hidden=args.hidden, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                           seed=args.seed)

    held_out = ratings[validation].copy()
    with torch.no_grad():
        held_out["model_score"] = model(torch.from_numpy(user_x[validation]), torch.from_numpy(item_x[validation])).numpy()
    train_part = ratings[~validation]
    item_stats = train_part.groupby(tt.ITEM_ID)[tt.RATING].agg(["count", "mean"])
    popularity = held_out[tt.ITEM_ID].map(item_stats["count"]).fillna(0)
    item_mean = held_out[tt.ITEM_ID].map(item_stats["mean"]).fillna(train_part[tt.RATING].mean())
    held_out["popularity_score"] = popularity + 1e-3 * item_mean  # most rated first, then best rated
    metrics = {
        "validation_rmse": best["rmse"],
        "best_epoch": best["epoch"],
        "item_mean_baseline_rmse": float(np.sqrt(((item_mean - held_out[tt.RATING]) ** 2).mean())),
        "validation_ndcg_at_5": tt.mean_ndcg(held_out, "model_score"),
        "popularity_ndcg_at_5": tt.mean_ndcg(held_out, "popularity_score"),
        "train_ratings": int((~validation).sum()),
        "validation_ratings": int(validation.sum()),
        "dimension": args.embedding_dim,
    }

    products = ratings.drop_duplicates(tt.ITEM_ID)[[tt.ITEM_ID, *tt.ITEM_CATEGORICAL, *tt.ITEM_NUMERIC]]
    customers = ratings.drop_duplicates(tt.USER_ID)[[tt.USER_ID, *tt.USER_CATEGORICAL, *tt.USER_NUMERIC]]
    if args.catalog and Path(args.catalog, "products.parquet").exists():
        products = pd.read_parquet(Path(args.catalog, "products.parquet"))
        customers = pd.read_parquet(Path(args.catalog, "customers.parquet"))
    products = products.sort_values(tt.ITEM_ID)
    customers = customers.sort_values(tt.USER_ID)
    item_vectors = tt.embed(model.item_tower, tt.transform(products, item_scaler))
    user_vectors = tt.embed(model.user_tower, tt.transform(customers, user_scaler))
    metrics["item_embeddings"] = len(products)
    metrics["user_embeddings"] = len(customers)

    out = Path(args.model_dir)
    for folder in ("model", "scalers", "embeddings"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / tt.MODEL_FILE)
    (out / tt.USER_TOWER_FILE).write_text(json.dumps(tt.export_user_tower(model)))
    (out / tt.CONFIG_FILE).write_text(json.dumps(tt.config_for(user_scaler, item_scaler, args.embedding_dim,
                                                               args.hidden), indent=2))
    (out / tt.USER_SCALER_FILE).write_text(json.dumps(user_scaler, indent=2))
    (out / tt.ITEM_SCALER_FILE).write_text(json.dumps(item_scaler, indent=2))
    (out / tt.ITEM_EMBEDDINGS_FILE).write_text(tt.embeddings_csv(products[tt.ITEM_ID].tolist(), item_vectors))
    (out / tt.USER_EMBEDDINGS_FILE).write_text(tt.embeddings_csv(customers[tt.USER_ID].astype(int).tolist(), user_vectors))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tt.pack_serving_code(out)
    for name in ("validation_rmse", "validation_ndcg_at_5", "popularity_ndcg_at_5", "item_mean_baseline_rmse"):
        print(f"metric {name}={metrics[name]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
