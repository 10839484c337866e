"""SageMaker script-mode training entry point for the two-tower recommender.

Channels: `train` (the ratings training data, Parquet hive-partitioned by customernumber) and `catalog`
(optional: `products.parquet` and `customers.parquet`, so every product and customer gets an
embedding, not only those with ratings). Writes the lab's layout into `SM_MODEL_DIR`: `model/`,
`scalers/` (JSON), `embeddings/` (CSV `id,embedding` in pgvector text form) and `metrics.json`.

Quality: `eval_seeds` random held-out splits (`validation_fraction` of the ratings each, seeds `seed`,
`seed + 1`, ...): on each, the training procedure runs on the rest (its penalty chosen inside that part) and
the model and the baselines are scored on the held-out ratings: NDCG@5 (each user's held-out items ranked
by the cosine of the published vectors, as pgvector ranks them) and RMSE. `metrics.json` has the means and
standard deviations over the seeds (`validation_rmse`, `validation_ndcg_at_5`, `popularity_ndcg_at_5`,
`item_mean_ndcg_at_5`, `item_mean_baseline_rmse`, ... and `..._std`), `evaluation` the per-seed figures
and which baselines the model beats. The published model is then trained on all ratings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import torch

import two_tower as tt
from training_defaults import TRAINING_DEFAULTS, factor_l2_candidates


def parse_args(argv=None) -> argparse.Namespace:
    defaults = TRAINING_DEFAULTS
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedding-dim", "--embedding_dim", dest="embedding_dim", type=int,
                        default=defaults["embedding_dim"])
    parser.add_argument("--hidden", type=int, default=defaults["hidden"])
    parser.add_argument("--epochs", type=int, default=defaults["epochs"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--factor-l2", "--factor_l2", dest="factor_l2", type=str, default=defaults["factor_l2"],
                        help="comma-separated candidates for the factors' L2 penalty, chosen on an inner split")
    parser.add_argument("--inner-fraction", "--inner_fraction", dest="inner_fraction", type=float,
                        default=defaults["inner_fraction"])
    parser.add_argument("--validation-fraction", "--validation_fraction", dest="validation_fraction", type=float,
                        default=defaults["validation_fraction"])
    parser.add_argument("--eval-seeds", "--eval_seeds", dest="eval_seeds", type=int, default=defaults["eval_seeds"],
                        help="held-out splits the model and the baselines are scored on (seeds seed, seed+1, ...)")
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "train"))
    parser.add_argument("--catalog", default=os.environ.get("SM_CHANNEL_CATALOG", ""))
    args, _unknown = parser.parse_known_args(argv)
    return args


def hyperparameters(args: argparse.Namespace) -> tt.Hyperparameters:
    return tt.Hyperparameters(dim=args.embedding_dim, hidden=args.hidden, epochs=args.epochs, lr=args.lr,
                              factor_l2=factor_l2_candidates(args.factor_l2),
                              inner_fraction=args.inner_fraction)


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
    torch.set_num_threads(1)  # a small model: one thread is the fastest here, and the figures reproducible
    try:
        hp = hyperparameters(args)
    except ValueError as exc:
        return fail(f"bad hyperparameter: {exc}")
    if hp.dim < 3 or args.eval_seeds < 1 or not hp.factor_l2:
        return fail("embedding_dim must be at least 3, eval_seeds at least 1, factor_l2 at least one number")
    ratings = read_ratings(args.train)
    required = [tt.USER_ID, tt.ITEM_ID, tt.RATING, *tt.USER_CATEGORICAL, *tt.USER_NUMERIC, *tt.ITEM_CATEGORICAL,
                *tt.ITEM_NUMERIC]
    missing = [c for c in required if c not in ratings.columns]
    if missing:
        return fail(f"train channel lacks column(s) {', '.join(missing)}")
    if ratings.empty:
        return fail("the train channel holds no ratings: nothing to train on")
    ratings = tt.in_order(ratings)
    seeds = [args.seed + k for k in range(args.eval_seeds)]
    started = time.perf_counter()
    try:  # the quality figures: the procedure below, on held-out splits of several seeds
        evaluation = tt.evaluate(ratings, hp, seeds, args.validation_fraction)
    except ValueError as exc:
        return fail(str(exc))
    evaluated = time.perf_counter() - started
    model = tt.fit(ratings, hp, args.seed)  # the published model: the same procedure on all ratings

    products = ratings.drop_duplicates(tt.ITEM_ID)[[tt.ITEM_ID, *tt.ITEM_CATEGORICAL, *tt.ITEM_NUMERIC]]
    customers = ratings.drop_duplicates(tt.USER_ID)[[tt.USER_ID, *tt.USER_CATEGORICAL, *tt.USER_NUMERIC]]
    if args.catalog and Path(args.catalog, "products.parquet").exists():
        products = pd.read_parquet(Path(args.catalog, "products.parquet"))
        customers = pd.read_parquet(Path(args.catalog, "customers.parquet"))
    metrics = {
        **tt.flat_metrics(evaluation),
        "train_ratings": len(ratings),
        "validation_ratings": int(np.mean([row["held_out_ratings"] for row in evaluation["per_seed"]])),
        "held_out_fraction": args.validation_fraction,
        "factor_l2": model.factor_l2,
        "dimension": hp.dim,
        "item_embeddings": len(products),
        "user_embeddings": len(customers),
        "evaluation_seconds": round(evaluated, 2),
        "evaluation": evaluation,
        "published_model": "trained on all ratings with the procedure evaluated above (its factor_l2 chosen on "
                           "an inner split of them)",
    }
    out = Path(args.model_dir)
    for name, data in tt.bundle_files(model, products, customers, metrics).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    tt.pack_serving_code(out)
    for name in ("validation_rmse", "validation_ndcg_at_5", "popularity_ndcg_at_5", "item_mean_ndcg_at_5",
                 "item_mean_baseline_rmse"):
        print(f"metric {name}={metrics[name]:.6f}")
        print(f"metric {name}_std={metrics[name + '_std']:.6f}")
    print("targets met: " + json.dumps(evaluation["targets_met"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
