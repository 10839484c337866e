"""Benchmark: the recommender's quality on the lab's real ratings, next to the naive baselines.

The real data is the recommender lab's ETL output of `classicmodels` with its ratings
(`$DATASETS_DIR/classicmodels/ratings_ml_training_dataset.csv`). For each of N seeds (default 10: seeds
7, 8, ..., the first five being the training job's own), 20% of the ratings are held out at random; the
model's training procedure (`two_tower.fit`, its choices made inside the training part) runs on the rest,
and the model and the baselines are scored on the held-out ratings, as `train.py` scores them:

- NDCG@5 per customer over the customer's held-out items (graded by the true rating), the model ranking
  them by the cosine of its published vectors (what pgvector does online); baselines: popularity (most
  rated in training first) and the item mean.
- RMSE of the predicted ratings; baselines: the item mean, the global mean and the customer mean.

One JSON line: mean and standard deviation over the seeds of every figure, and `targets_met` (the model
beats popularity and the item mean on NDCG@5, and the item mean on RMSE). Without the real data it says so
(`"real_data": false`, and on stderr) and measures the generated demo data instead.

    .venv/bin/python benchmarks/recsys_quality.py [--seeds 10] [--first-seed 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import scratch_folder, settings_for, training_frame  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from recsys_assets.model_code import two_tower as tt  # noqa: E402


def summary(evaluation: dict, name: str) -> dict[str, float]:
    figures = evaluation["summary"][name]
    return {"mean": round(figures["mean"], 4), "std": round(figures["std"], 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="held-out splits (at least 2 for a standard deviation)")
    parser.add_argument("--first-seed", type=int, default=7, help="the training job's default seed")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of the ratings held out")
    parser.add_argument("--epochs", type=int, default=tt.Hyperparameters().epochs)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with scratch_folder("recsys-quality") as work:
        datasets = settings_for(work).datasets_dir
    csv = datasets / "classicmodels" / "ratings_ml_training_dataset.csv"
    real = csv.exists()
    if not real:
        print(f"recsys_quality: the real ratings are absent at {csv} (set DATASETS_DIR): measuring the generated "
              "demo data instead, which says nothing about the model on real data", file=sys.stderr)
    frame = pd.read_csv(csv) if real else training_frame(datasets)
    hp = tt.Hyperparameters(epochs=args.epochs)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.perf_counter()
    evaluation = tt.evaluate(frame, hp, seeds, args.fraction)
    seconds = time.perf_counter() - started
    line = {
        "benchmark": "recsys_quality",
        "real_data": real,
        "data": str(csv) if real else f"generated demo data (the real ratings are absent at {csv})",
        "ratings": len(frame),
        "customers": int(frame[tt.USER_ID].nunique()),
        "products": int(frame[tt.ITEM_ID].nunique()),
        "seeds": seeds,
        "held_out_fraction": args.fraction,
        "model": {"ndcg_at_5": summary(evaluation, "model_ndcg_at_5"), "rmse": summary(evaluation, "model_rmse")},
        "baselines": {
            "popularity": {"ndcg_at_5": summary(evaluation, "popularity_ndcg_at_5")},
            "item_mean": {"ndcg_at_5": summary(evaluation, "item_mean_ndcg_at_5"),
                          "rmse": summary(evaluation, "item_mean_rmse")},
            "global_mean": {"rmse": summary(evaluation, "global_mean_rmse")},
            "user_mean": {"rmse": summary(evaluation, "user_mean_rmse")},
        },
        "factor_l2_chosen": [row["factor_l2"] for row in evaluation["per_seed"]],
        "evaluation_seconds": round(seconds, 1),
        "targets_met": evaluation["targets_met"],
        "also_beats": evaluation["also_beats"],
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
