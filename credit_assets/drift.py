"""Drift of the credit scorecard's inputs and outputs: each scoring batch against the model's training data.

The reference is the model version's own training data (the content-addressed file its manifest names,
checked against its fingerprint), scored by the version itself, with the batch's selection applied as far
as the training data allows: a batch holds customers whose current score is at least `min_current_score`,
so the reference holds the applications the model scores at least that high. Without that, selecting on a
score that follows the application score would show drift by construction.

- `score_drift` (a check of `credit_scores`): the PSI of each feature and of the score, batch against
  reference;
- `approval_rate_drift` (a check of `limit_decisions`): the batch's approval rate against the share of the
  reference's Validation rows scoring at the policy's approval score or above.

Both are computed by their asset, so the numbers are also the asset's materialisation metadata, which the
UI plots over the batches; the check results carry the verdict (WARN or ERROR severity) and the alert.

What the numbers mean and what to do when they fire: the README, "Drift monitoring".
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from credit_assets.model_code import scorecard
from resources import drift
from resources.artifacts import ArtifactNotFoundError, ArtifactStore, join_key
from resources.metadata import tidy, tidy_number
from resources.model_versions import ModelArtifactError, read_manifest, read_verified, sha256_hex
from resources.settings import PlatformSettings

SCORE = "score"
BUNDLE = (scorecard.MODEL_FILE, scorecard.PREPROCESSING_FILE, scorecard.SCORECARD_FILE)


@dataclass(frozen=True)
class Reference:
    """The training applications the batch is compared with: their features and scores, and which rows are
    the Validation split."""

    features: pd.DataFrame
    scores: np.ndarray
    validation: np.ndarray  # bool per row
    source: str

    @property
    def rows(self) -> int:
        return len(self.scores)


def reference(artifacts: ArtifactStore, model_prefix: str, version: str, min_score: int) -> Reference:
    """The training applications of model `version` that it scores at `min_score` or above."""
    manifest = read_manifest(artifacts, model_prefix, version)
    data = manifest.get("training_data") or {}
    if not data.get("uri") or not data.get("fingerprint"):
        raise ModelArtifactError(f"model version {version}'s manifest does not name its training data")
    key = join_key(artifacts.key_from_uri(data["uri"]), "applications.csv")
    payload = artifacts.read_bytes(key)
    if sha256_hex(payload) != data["fingerprint"]:
        raise ModelArtifactError(f"{artifacts.uri(key)} is not the data model version {version} was trained on (its "
                                 "SHA-256 differs from the manifest's fingerprint)")
    frame = pd.read_csv(io.BytesIO(payload), low_memory=False)
    with tempfile.TemporaryDirectory() as folder:
        for name in BUNDLE:
            (Path(folder) / name).write_bytes(read_verified(artifacts, model_prefix, manifest, name))
        _probability, scores = scorecard.ScorecardBundle(Path(folder)).score(frame)
    seed = int((manifest.get("hyperparameters") or {}).get("seed", 7))
    _development, validation = scorecard.split_frame(frame, seed)
    selected = scores >= min_score
    return Reference(
        features=scorecard.feature_frame(frame[selected]),
        scores=scores[selected],
        validation=frame.index[selected].isin(validation.index),
        source=f"{artifacts.uri(key)}, the {int(selected.sum()):,} of {len(frame):,} applications scored {min_score} "
               "or above",
    )


def feature_psi(ref: Reference, eligible: pd.DataFrame, scores: pd.Series) -> dict[str, float]:
    """PSI of each feature of the scored customers (customers-table columns) and of their new scores."""
    profile = drift.profile(ref.features.assign(**{SCORE: ref.scores}), [*scorecard.NUMERIC_FEATURES, SCORE],
                            scorecard.CATEGORICAL_FEATURES)
    renamed = eligible.rename(columns={scorecard.column_for(f): f for f in scorecard.FEATURES})
    features = scorecard.feature_frame(renamed)
    values = {name: drift.psi(profile["variables"][name], features[name]) for name in scorecard.FEATURES}
    values[SCORE] = drift.psi(profile["variables"][SCORE], scores)
    return values


def selection(meta_filter: str | None, default: int = 600) -> int:
    """The batch's `min_current_score`, from the filter its eligible_customers step recorded."""
    try:
        return int(json.loads(meta_filter or "{}").get("min_current_score", default))
    except (ValueError, TypeError, AttributeError):
        return default


def _verdict(check: str, level: str | None, description: str, metadata: dict) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.ERROR if level == "ERROR" else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(check_name=check, passed=level is None, severity=severity, description=description,
                               metadata=tidy(metadata))


def _not_judged(check: str, reason: str, failed: bool = False) -> dg.AssetCheckResult:
    """A batch too small to judge passes, saying so; drift that could not be computed warns, saying why."""
    return dg.AssetCheckResult(check_name=check, passed=not failed, severity=dg.AssetCheckSeverity.WARN,
                               description=f"{'not evaluated' if failed else 'not judged'}: {reason}")


def score_drift(artifacts: ArtifactStore, model_prefix: str, version: str, min_score: int, scored: pd.DataFrame,
                scores: pd.Series) -> tuple[dict, dg.AssetCheckResult, dict[str, int] | None]:
    """(metadata, the `score_drift` check's result, the reference's Validation score counts) for a batch:
    `scored` the customers scored (customers-table columns), `scores` their new scores."""
    settings = PlatformSettings.from_env()
    if len(scores) < settings.drift_min_sample:
        return {}, _not_judged("score_drift", f"{len(scores)} customers scored, fewer than DRIFT_MIN_SAMPLE "
                                              f"({settings.drift_min_sample})"), None
    try:
        ref = reference(artifacts, model_prefix, version, min_score)
    except (ModelArtifactError, ArtifactNotFoundError, ValueError) as exc:
        return {}, _not_judged("score_drift", f"the model's training data cannot serve as reference: {exc}",
                               failed=True), None
    counts = {str(k): int(v) for k, v in zip(*np.unique(ref.scores[ref.validation], return_counts=True))}
    if ref.rows < settings.drift_min_sample:
        return {}, _not_judged("score_drift", f"{ref.source}: fewer than DRIFT_MIN_SAMPLE "
                                              f"({settings.drift_min_sample}) to compare with", failed=True), counts
    values = feature_psi(ref, scored, scores)
    features = {name: value for name, value in values.items() if name != SCORE}
    worst_feature = max(features, key=features.get)
    thresholds = drift.Thresholds(*settings.drift_psi)
    level = drift.worst([thresholds.level(v) for v in values.values()])
    shifted = sorted(((v, n) for n, v in values.items() if thresholds.level(v)), reverse=True)
    description = (f"score PSI {tidy_number(values[SCORE])}, most shifted feature {worst_feature} "
                   f"{tidy_number(features[worst_feature])} (warn from {thresholds.warn}, error from {thresholds.error})")
    if shifted:
        description = f"{len(shifted)} shifted: " + ", ".join(f"{n} {tidy_number(v)}" for v, n in shifted) + "; " + description
    metadata = {"psi_score": values[SCORE], "psi_max_feature": features[worst_feature],
                **{f"psi_{scorecard.column_for(name)}": value for name, value in sorted(features.items())}}
    result = _verdict("score_drift", level, description, {
        **metadata, "customers": len(scores), "most_shifted_feature": worst_feature, "reference": ref.source})
    return metadata, result, counts


def approval_rate_drift(validation_score_counts: dict[str, int] | None, decisions: pd.DataFrame,
                        approve_min_score: int, approved: pd.Series) -> tuple[dict, dg.AssetCheckResult]:
    """(metadata, the `approval_rate_drift` check's result) for a batch's decisions; `approved` flags the
    approved ones, `validation_score_counts` comes from the batch's scoring step."""
    settings = PlatformSettings.from_env()
    if len(decisions) < settings.drift_min_sample:
        return {}, _not_judged("approval_rate_drift", f"{len(decisions)} decisions, fewer than DRIFT_MIN_SAMPLE "
                                                      f"({settings.drift_min_sample})")
    if validation_score_counts is None:
        return {}, _not_judged("approval_rate_drift", "the batch's scoring step could not read the model's training "
                                                      "data (see its score_drift check)", failed=True)
    total = sum(validation_score_counts.values())
    if total < settings.drift_min_sample:
        return {}, _not_judged("approval_rate_drift", f"{total} of the model's Validation applications score at the "
                                                      f"batch's minimum current score or above, fewer than "
                                                      f"DRIFT_MIN_SAMPLE ({settings.drift_min_sample})", failed=True)
    expected = sum(c for s, c in validation_score_counts.items() if int(s) >= approve_min_score) / total
    actual = float(approved.mean())
    thresholds = drift.Thresholds(*settings.drift_approval_rate)
    metadata = {"expected_approval_rate": expected, "approval_rate_difference": actual - expected}
    return metadata, _verdict("approval_rate_drift", thresholds.level(abs(actual - expected)), (
        f"approval rate {actual:.1%} against {expected:.1%} of the model's validation at score {approve_min_score} "
        f"or above ({actual - expected:+.1%}; warn from {thresholds.warn:.0%}, error from {thresholds.error:.0%})"),
        {**metadata, "approval_rate": actual, "decisions": len(decisions), "approve_min_score": approve_min_score})
