"""The credit-limit-increase rule of the reference batch-scoring workflow, vectorised.

New score >= 650: APPROVED, limit increased by 50% when the current limit is under 5,000, else by 25%,
new limit = min(int(limit * (1 + pct)), 20,000), reason "Score N >= 650, increase by P%".
Otherwise: DECLINED, limit unchanged, reason "Score N < 650, no increase". Thresholds are parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd

APPROVED = "APPROVED"
DECLINED = "DECLINED"


ENV_PREFIX = "POLICY_"  # the SageMaker processing step reads the thresholds as POLICY_<FIELD> variables


@dataclass(frozen=True)
class LimitPolicy:
    """The rule's thresholds, with the reference's defaults. Written once here: the run config of
    `limit_decisions` (`LimitPolicyConfig`) and the SageMaker processing step's environment follow these fields."""

    approve_min_score: int = field(default=650, metadata={"description": "a new score at or above it is APPROVED"})
    low_limit_threshold: int = field(default=5_000, metadata={
        "description": "a current limit under it gets low_limit_increase_pct, others high_limit_increase_pct"})
    low_limit_increase_pct: int = field(default=50, metadata={"description": "increase (%) of a limit under the threshold"})
    high_limit_increase_pct: int = field(default=25, metadata={"description": "increase (%) of a limit at or over it"})
    max_limit: int = field(default=20_000, metadata={"description": "no new limit goes above it"})

    def __post_init__(self) -> None:
        if self.low_limit_increase_pct < 0 or self.high_limit_increase_pct < 0:
            raise ValueError("limit increase percentages must not be negative")
        if self.max_limit <= 0:
            raise ValueError("max_limit must be positive")

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def to_env(self) -> dict[str, str]:
        """The thresholds as the processing step's environment variables (`POLICY_APPROVE_MIN_SCORE`, ...)."""
        return {f"{ENV_PREFIX}{name.upper()}": str(value) for name, value in self.as_dict().items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LimitPolicy:
        """The policy `to_env` described; a threshold not set keeps its default."""
        values = {}
        for spec in fields(cls):
            name = f"{ENV_PREFIX}{spec.name.upper()}"
            try:
                values[spec.name] = int(environ.get(name, spec.default))
            except ValueError:
                raise ValueError(f"{name} must be a whole number, not {environ[name]!r}") from None
        return cls(**values)


def decide_limits(scores: pd.DataFrame, policy: LimitPolicy = LimitPolicy()) -> pd.DataFrame:
    """One decision per row of `scores` (columns customer_id, new_score, current_limit, ...).

    Returns the input columns plus decision, increase_pct, new_limit and reason.
    """
    score = scores["new_score"].to_numpy(dtype="int64")
    limit = scores["current_limit"].to_numpy(dtype="int64")
    approved = score >= policy.approve_min_score
    pct = np.where(limit < policy.low_limit_threshold, policy.low_limit_increase_pct, policy.high_limit_increase_pct)
    # int() truncates toward zero, as the reference does; integer arithmetic avoids float rounding at the edges
    increased = np.minimum((limit * (100 + pct)) // 100, policy.max_limit)
    out = scores.copy()
    out["decision"] = np.where(approved, APPROVED, DECLINED)
    out["increase_pct"] = np.where(approved, pct, 0).astype("int64")
    out["new_limit"] = np.where(approved, increased, limit).astype("int64")
    score_text = pd.Series(score, index=scores.index).astype(str)
    pct_text = pd.Series(pct, index=scores.index).astype(str)
    out["reason"] = np.where(
        approved,
        "Score " + score_text + f" >= {policy.approve_min_score}, increase by " + pct_text + "%",
        "Score " + score_text + f" < {policy.approve_min_score}, no increase",
    )
    return out


def policy_violations(decisions: pd.DataFrame, policy: LimitPolicy) -> pd.DataFrame:
    """Rows that break the policy, each with what is wrong; checked from first principles, row by row logic.

    Used by the asset check on `limit_decisions`; deliberately independent of `decide_limits`.
    """
    problems: list[tuple[int, str]] = []
    for row in decisions.itertuples(index=False):
        score, limit, new_limit = int(row.new_score), int(row.current_limit), int(row.new_limit)
        if score >= policy.approve_min_score:
            pct = policy.low_limit_increase_pct if limit < policy.low_limit_threshold else policy.high_limit_increase_pct
            expected = min(int(limit * (1 + pct / 100)), policy.max_limit)
            reason = f"Score {score} >= {policy.approve_min_score}, increase by {pct}%"
            if row.decision != APPROVED:
                problems.append((row.customer_id, f"score {score} should be APPROVED, is {row.decision}"))
            elif new_limit != expected:
                problems.append((row.customer_id, f"new limit {new_limit} should be {expected} ({pct}% of {limit}, cap {policy.max_limit})"))
            elif new_limit > policy.max_limit:
                problems.append((row.customer_id, f"new limit {new_limit} is above the cap {policy.max_limit}"))
            elif row.reason != reason:
                problems.append((row.customer_id, f"reason {row.reason!r} should be {reason!r}"))
        else:
            reason = f"Score {score} < {policy.approve_min_score}, no increase"
            if row.decision != DECLINED:
                problems.append((row.customer_id, f"score {score} should be DECLINED, is {row.decision}"))
            elif new_limit != limit:
                problems.append((row.customer_id, f"declined but limit changed from {limit} to {new_limit}"))
            elif row.reason != reason:
                problems.append((row.customer_id, f"reason {row.reason!r} should be {reason!r}"))
    return pd.DataFrame(problems, columns=["customer_id", "problem"])
