"""Training data for the credit scorecard: the real bank case-study file, or the synthetic stand-in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from credit_assets import population
from credit_assets.model_code import scorecard

TRAINING_COLUMNS = scorecard.FEATURES + [scorecard.LABEL, scorecard.SPLIT]


class TrainingDataError(ValueError):
    """The training file is unusable; the message names the file, column and line."""


def read_bank_applications(path: Path) -> pd.DataFrame:
    """The columns the model uses from `BankCaseStudyData.csv`, validated."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TrainingDataError(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in TRAINING_COLUMNS if c not in header]
    if missing:
        raise TrainingDataError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = pd.read_csv(
        path,
        usecols=TRAINING_COLUMNS,
        dtype={c: "string" for c in scorecard.CATEGORICAL_FEATURES + [scorecard.LABEL, scorecard.SPLIT]},
        keep_default_na=False,
        na_values={c: [""] for c in TRAINING_COLUMNS},
    )
    for name in scorecard.NUMERIC_FEATURES:
        converted = pd.to_numeric(frame[name], errors="coerce")
        bad = converted.isna() & frame[name].notna()
        if bad.any():
            line = int(bad.idxmax()) + 2  # header is line 1
            raise TrainingDataError(f"{path}, line {line}: column {name} is not numeric ({frame[name][bad.idxmax()]!r})")
        frame[name] = converted
    labels = frame[scorecard.LABEL]
    bad_label = ~labels.isin(["Accept", scorecard.POSITIVE_LABEL])
    if bad_label.any():
        line = int(bad_label.idxmax()) + 2
        raise TrainingDataError(
            f"{path}, line {line}: {scorecard.LABEL} must be Accept or Decline, not {labels[bad_label.idxmax()]!r}"
        )
    return frame[TRAINING_COLUMNS]


def training_frame(real_path: Path | None) -> tuple[pd.DataFrame, str]:
    """(frame, source description): the real file when given, else generated applications."""
    if real_path is not None:
        return read_bank_applications(real_path), str(real_path)
    return population.training_applications()[TRAINING_COLUMNS], "generated (synthetic bank population)"
