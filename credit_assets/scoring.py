"""Batch scoring around the SageMaker Batch Transform contract: what is sent, what comes back, and the
check that every customer sent got exactly one score back."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pandas as pd

from credit_assets.model_code import scorecard

OUTPUT_COLUMNS = ["customer_id", "probability", "new_score"]


class ScoringOutputError(RuntimeError):
    """The transform's output does not match its input."""


def scorable_customers(eligible: pd.DataFrame, preprocessing: dict) -> tuple[pd.DataFrame, dict[str, int]]:
    """(customers the model can score, with features under the data set's names; skip counts by reason).

    A customer with a category value the model never saw in training is skipped, not guessed at.
    """
    features = eligible.rename(columns={scorecard.column_for(f): f for f in scorecard.FEATURES})
    reasons = pd.Series(pd.NA, index=features.index, dtype="string")
    for name, mask in scorecard.unknown_categories(features, preprocessing).items():
        reasons[mask & reasons.isna()] = f"unknown {name} value"
    skipped = {str(k): int(v) for k, v in reasons.value_counts().items()}
    return features[reasons.isna()], skipped


def transform_input(scorable: pd.DataFrame, part_rows: int) -> Iterator[tuple[str, bytes]]:
    """CSV parts without header, `customer_id` then the features in model order (inference.py's input)."""
    columns = ["customer_id", *scorecard.FEATURES]
    for part, start in enumerate(range(0, len(scorable), part_rows)):
        chunk = scorable.iloc[start:start + part_rows][columns]
        yield f"part-{part:05d}.csv", chunk.to_csv(header=False, index=False).encode()


def read_transform_output(parts: list[tuple[str, bytes]]) -> pd.DataFrame:
    """inference.py's `customer_id,probability,score` lines from every (name, content) output part."""
    frames = []
    for name, data in parts:
        try:
            frames.append(pd.read_csv(io.BytesIO(data), header=None, names=OUTPUT_COLUMNS,
                                      dtype={"customer_id": "int64", "probability": "float64", "new_score": "int64"}))
        except (ValueError, pd.errors.ParserError) as exc:
            raise ScoringOutputError(f"batch transform output {name} is not customer_id,probability,score CSV: "
                                     f"{exc}") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=OUTPUT_COLUMNS)


def attach_scores(scorable: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
    """The scorable customers with their score; every customer sent must come back exactly once."""
    duplicated = int(scored["customer_id"].duplicated().sum())
    missing = set(scorable["customer_id"]) - set(scored["customer_id"])
    unexpected = set(scored["customer_id"]) - set(scorable["customer_id"])
    if duplicated or missing or unexpected:
        example = f" (e.g. customer {min(missing)} has no score)" if missing else ""
        raise ScoringOutputError(
            f"batch transform output does not match its input: {len(scorable):,} customers sent, {len(scored):,} "
            f"scores back, {duplicated} duplicated, {len(missing)} missing, {len(unexpected)} unexpected{example}"
        )
    return scorable[["customer_id", "current_score", "current_limit"]].merge(scored, on="customer_id", how="inner")
