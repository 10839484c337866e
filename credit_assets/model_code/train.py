"""SageMaker script-mode training entry point for the credit scorecard.

Reads every CSV in the `train` channel (`SM_CHANNEL_TRAIN`), bins the characteristics and fits the
points scorecard on the Development split (`scorecard.py`), evaluates on Validation, and writes the model
bundle to `SM_MODEL_DIR`: weights as a state_dict, bins and scaling as JSON, and the points per attribute
for people (`points.csv`, `points.md`). Metrics are printed as `metric <name>=<value>` lines, which the
job's metric definitions scrape. On bad input it writes the reason to `<SM_OUTPUT_DIR>/failure` and exits
non-zero, as SageMaker expects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import scorecard


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pdo", type=float, default=scorecard.DEFAULT_PDO)
    parser.add_argument("--target-score", "--target_score", dest="target_score", type=float,
                        default=scorecard.DEFAULT_TARGET_SCORE)
    parser.add_argument("--target-odds", "--target_odds", dest="target_odds", type=float,
                        default=scorecard.DEFAULT_TARGET_ODDS)
    parser.add_argument("--l2", type=float, default=scorecard.DEFAULT_L2)
    parser.add_argument("--max-iter", "--max_iter", dest="max_iter", type=int, default=scorecard.DEFAULT_MAX_ITER)
    parser.add_argument("--prebins", type=int, default=scorecard.DEFAULT_PREBINS)
    parser.add_argument("--min-bin-share", "--min_bin_share", dest="min_bin_share", type=float,
                        default=scorecard.DEFAULT_MIN_BIN_SHARE)
    parser.add_argument("--min-special-share", "--min_special_share", dest="min_special_share", type=float,
                        default=scorecard.DEFAULT_MIN_SPECIAL_SHARE)
    parser.add_argument("--special-z", "--special_z", dest="special_z", type=float,
                        default=scorecard.DEFAULT_SPECIAL_Z)
    parser.add_argument("--seed", type=int, default=scorecard.DEFAULT_SEED)
    parser.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "data"))
    parser.add_argument("--output-data-dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "output"))
    args, _unknown = parser.parse_known_args(argv)
    return args


def load_training_frame(channel: Path) -> pd.DataFrame:
    files = sorted(p for p in channel.rglob("*.csv"))
    if not files:
        raise ValueError(f"no CSV files in the train channel {channel}")
    frames = []
    for path in files:
        frame = pd.read_csv(path, dtype={c: "string" for c in scorecard.CATEGORICAL_FEATURES},
                            keep_default_na=False, na_values={c: [""] for c in scorecard.FEATURES})
        missing = [c for c in scorecard.FEATURES + [scorecard.LABEL] if c not in frame.columns]
        if missing:
            raise ValueError(f"{path.name}: missing column(s) {', '.join(missing)}")
        labels = set(frame[scorecard.LABEL].dropna().unique())
        unknown = labels - {"Accept", scorecard.POSITIVE_LABEL}
        if unknown:
            row = int(frame.index[frame[scorecard.LABEL].isin(unknown)][0]) + 2
            raise ValueError(f"{path.name}, line {row}: {scorecard.LABEL} must be Accept or Decline, not {sorted(unknown)[0]!r}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        frame = load_training_frame(Path(args.train))
        development, validation = scorecard.split_frame(frame, args.seed)
        if development.empty or validation.empty:
            raise ValueError("training data needs both Development and Validation rows")
        y_dev = (development[scorecard.LABEL] == scorecard.POSITIVE_LABEL).to_numpy()
        y_val = (validation[scorecard.LABEL] == scorecard.POSITIVE_LABEL).to_numpy()
        if y_dev.all() or not y_dev.any():
            raise ValueError("the Development split needs both Accept and Decline rows")
    except ValueError as exc:
        output_dir = Path(os.environ.get("SM_OUTPUT_DIR", Path(args.output_data_dir).parent))
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "failure").write_text(f"ClientError: {exc}")
        print(f"training input error: {exc}", file=sys.stderr)
        return 1

    preprocessing, model = scorecard.fit(
        development, l2=args.l2, max_iter=args.max_iter, prebins=args.prebins,
        min_bin_share=args.min_bin_share, min_special_share=args.min_special_share, special_z=args.special_z)
    scale = scorecard.scaling(args.pdo, args.target_score, args.target_odds)
    val_log_odds = scorecard.attribute_log_odds(model, scorecard.attribute_codes(validation, preprocessing))
    dev_log_odds = scorecard.attribute_log_odds(model, scorecard.attribute_codes(development, preprocessing))
    val_auc = scorecard.roc_auc(y_val, val_log_odds)
    val_scores = scorecard.scores_from_log_odds(val_log_odds, scale)
    metrics = {
        "validation_auc": val_auc,
        "validation_gini": 2 * val_auc - 1,
        "development_auc": scorecard.roc_auc(y_dev, dev_log_odds),
        "development_rows": int(len(development)),
        "validation_rows": int(len(validation)),
        "decline_rate": float(np.mean(np.concatenate([y_dev, y_val]))),
        "characteristics": len(preprocessing["characteristics"]),
        "attributes": len(preprocessing["feature_names"]),
        "validation_score_distribution": scorecard.score_distribution(val_scores),
    }
    scorecard.save_bundle(Path(args.model_dir), model, preprocessing, scale, metrics)
    output_dir = Path(args.output_data_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "evaluation.json").write_text(json.dumps(metrics, indent=2))
    print(f"metric validation:auc={metrics['validation_auc']:.6f}")
    print(f"metric validation:gini={metrics['validation_gini']:.6f}")
    print(f"metric train:auc={metrics['development_auc']:.6f}")
    print(f"points per attribute: {Path(args.model_dir) / scorecard.POINTS_MARKDOWN_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
