"""Benchmark: the credit scorecard's quality against gradient-boosted trees and a plain logistic regression.

On the real bank file (`DATASETS_DIR/credit/BankCaseStudyData.csv`; the generated population when it is
absent) and its own Development/Validation split, three models on the same 12 features:

- the project's points scorecard, fitted as `train.py` fits it (`scorecard.fit`: monotone bins on
  Development, one weight per attribute, points monotone along each characteristic's risk order), and, for
  the price of that constraint, the same scorecard without it;
- scikit-learn's HistGradientBoostingClassifier: numbers with the data set's negative codes as missing,
  categories as native categorical features; early stopping on 15% of Development. Its Gini moves by a few
  thousandths with the seed, so it is fitted with `--gbm-seeds` seeds (0, 1, ...): their mean, min and max;
- the naive baseline, a plain logistic regression (numbers clipped to their 1-99% range and standardised,
  missing indicators, one-hot categories: the scorecard before it was binned).

It prints their validation Gini, the gap between the trees (mean over the seeds, and the worst seed) and the
scorecard, and whether the scorecard is within 0.01 of the trees' mean. Then the realism of the demo data:
the scorecard trained on generated applications (as many as the real file) and on the real file, each
scored on its own Validation split. One JSON line.

    .venv/bin/python benchmarks/scorecard_quality.py [--generated-rows 24859] [--gbm-seeds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import peak_rss_mb  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from credit_assets import population, training_data  # noqa: E402
from credit_assets.model_code import scorecard  # noqa: E402
from resources.settings import PROJECT_ROOT  # noqa: E402

GINI_GAP_TARGET = 0.01
GENERATED_AUC_GAP_TARGET = 0.05


def gini(labels: np.ndarray, scores: np.ndarray) -> float:
    return 2 * scorecard.roc_auc(labels, scores) - 1


def fit_scorecard(development: pd.DataFrame, validation: pd.DataFrame, monotone: bool = True) -> tuple[np.ndarray, int]:
    """(validation log-odds, attributes) of the project's scorecard."""
    preprocessing, model = scorecard.fit(development, monotone=monotone)
    codes = scorecard.attribute_codes(validation, preprocessing)
    return scorecard.attribute_log_odds(model, codes), len(preprocessing["feature_names"])


def tree_features(frame: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
    features = scorecard.feature_frame(frame)
    for name in scorecard.CATEGORICAL_FEATURES:  # a category Development never had is missing
        features[name] = pd.Categorical(features[name].astype(object), categories=categories[name])
    return features


def fit_gbm(development: pd.DataFrame, validation: pd.DataFrame, seed: int) -> tuple[np.ndarray, int]:
    """(validation probabilities, boosting iterations) of gradient-boosted trees on the same features."""
    categories = {name: sorted(scorecard.feature_frame(development)[name].unique())
                  for name in scorecard.CATEGORICAL_FEATURES}
    model = HistGradientBoostingClassifier(
        learning_rate=0.05, max_leaf_nodes=31, min_samples_leaf=20, l2_regularization=1.0, max_iter=2000,
        categorical_features="from_dtype", early_stopping=True, validation_fraction=0.15, n_iter_no_change=50,
        random_state=seed)
    model.fit(tree_features(development, categories), scorecard.labels(development))
    return model.predict_proba(tree_features(validation, categories))[:, 1], int(model.n_iter_)


def plain_matrix(frame: pd.DataFrame, reference: pd.DataFrame) -> np.ndarray:
    """Numbers clipped to the reference's 1-99% range, median-imputed and standardised, with missing
    indicators; one-hot categories (the reference's)."""
    features, ref = scorecard.feature_frame(frame), scorecard.feature_frame(reference)
    columns = []
    for name in scorecard.NUMERIC_FEATURES:
        low, high = ref[name].quantile(0.01), ref[name].quantile(0.99)
        clipped_ref = ref[name].clip(low, high)
        values = features[name].clip(low, high).fillna(clipped_ref.median())
        columns += [((values - clipped_ref.mean()) / (clipped_ref.std() or 1.0)).to_numpy(),
                    features[name].isna().to_numpy(dtype=float)]
    for name in scorecard.CATEGORICAL_FEATURES:
        columns += [(features[name] == value).to_numpy(dtype=float) for value in sorted(ref[name].unique())]
    return np.column_stack(columns)


def fit_plain_logistic(development: pd.DataFrame, validation: pd.DataFrame) -> np.ndarray:
    model = LogisticRegression(max_iter=5000)
    model.fit(plain_matrix(development, development), scorecard.labels(development))
    return model.decision_function(plain_matrix(validation, development))


def scorecard_auc(frame: pd.DataFrame) -> float:
    development, validation = scorecard.split_frame(frame, 7)
    log_odds, _attributes = fit_scorecard(development, validation)
    return scorecard.roc_auc(scorecard.labels(validation), log_odds)


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - started, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated-rows", type=int, default=24_859,
                        help="generated applications for the demo data's comparison (and when the real file is absent)")
    parser.add_argument("--gbm-seeds", type=int, default=5, help="fit the trees with seeds 0 .. N-1")
    args = parser.parse_args()

    datasets = Path(os.environ.get("DATASETS_DIR") or PROJECT_ROOT.parent / "shared" / "datasets")
    path = datasets / "credit" / "BankCaseStudyData.csv"
    generated = population.training_applications(args.generated_rows)
    frame = training_data.read_bank_applications(path) if path.is_file() else generated
    development, validation = scorecard.split_frame(frame, 7)
    y = scorecard.labels(validation)

    (scorecard_odds, attributes), scorecard_seconds = timed(fit_scorecard, development, validation)
    (free_odds, _attributes), _seconds = timed(fit_scorecard, development, validation, False)
    trees, gbm_seconds = timed(lambda: [fit_gbm(development, validation, seed) for seed in range(args.gbm_seeds)])
    logistic_odds, logistic_seconds = timed(fit_plain_logistic, development, validation)
    scorecard_gini, logistic_gini = gini(y, scorecard_odds), gini(y, logistic_odds)
    gbm_ginis = [gini(y, probability) for probability, _iterations in trees]
    gbm_gini = float(np.mean(gbm_ginis))
    gap = gbm_gini - scorecard_gini

    # the demo data: the scorecard learns from generated applications about as well as from the real ones
    generated_auc = scorecard_auc(generated)
    real_auc = scorecard.roc_auc(y, scorecard_odds) if path.is_file() else None
    line = {
        "benchmark": "scorecard_quality",
        "data": str(path) if path.is_file() else f"generated ({len(frame):,} applications; the real file is absent)",
        "development_rows": len(development),
        "validation_rows": len(validation),
        "scorecard_validation_gini": round(scorecard_gini, 4),
        "gbm_validation_gini": round(gbm_gini, 4),
        "logistic_validation_gini": round(logistic_gini, 4),
        "gini_gap_gbm_minus_scorecard": round(gap, 4),
        "gbm_seeds": args.gbm_seeds,
        "gbm_validation_gini_min_max": [round(min(gbm_ginis), 4), round(max(gbm_ginis), 4)],
        "gini_gap_worst_seed": round(max(gbm_ginis) - scorecard_gini, 4),
        "scorecard_without_monotone_points_gini": round(gini(y, free_odds), 4),
        "scorecard_attributes": attributes,
        "gbm_iterations": [iterations for _probability, iterations in trees],
        "fit_seconds": {"scorecard": scorecard_seconds, "gbm_each": round(gbm_seconds / max(args.gbm_seeds, 1), 2),
                        "logistic": logistic_seconds},
        "generated_data": {
            "rows": len(generated),
            "scorecard_validation_auc": round(generated_auc, 4),
            "real_data_scorecard_validation_auc": None if real_auc is None else round(real_auc, 4),
            "auc_gap": None if real_auc is None else round(generated_auc - real_auc, 4),
        },
        "peak_rss_mb": peak_rss_mb(),
        "targets_met": {
            f"scorecard_gini_within_{GINI_GAP_TARGET}_of_gbm_mean": bool(gap <= GINI_GAP_TARGET),
            f"generated_auc_within_{GENERATED_AUC_GAP_TARGET}_of_real": (
                None if real_auc is None else bool(abs(generated_auc - real_auc) <= GENERATED_AUC_GAP_TARGET)),
        },
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
