"""Drift: how far what a model sees now has moved from what it was trained on.

The population stability index (PSI) compares two distributions of one variable over the same bins:
``PSI = sum((current - reference) * ln(current / reference))`` over the bins' shares. Below 0.1 the
populations are alike; 0.1 to 0.25 is a shift worth a look; above 0.25 the model is scoring a population it
was not trained on (the usual reading in credit scoring, and the defaults of `DRIFT_PSI_WARN` and
`DRIFT_PSI_ERROR`).

A *profile* is the reference side: for a numeric variable the bin edges (deciles of the reference) and each
bin's share, plus the share of missing values; for a categorical one each category's share (a category the
reference never saw counts as one more bin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

BINS = 10
# The checks that monitor drift: a failure is a finding to look at, not a broken batch (nothing blocks on them)
MONITORING_CHECKS = frozenset({"score_drift", "approval_rate_drift", "recommendations_drift"})
FLOOR = 1e-4  # a bin empty on one side counts as this share, so the index stays finite
MISSING = "__missing__"
OTHER = "__other__"  # categories the reference never saw


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c) / total if total else 0.0 for c in counts]


def numeric_profile(values: pd.Series, bins: int = BINS) -> dict:
    """Decile edges of the present values and the shares of each bin and of missing values."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    present = numbers[np.isfinite(numbers)]
    edges = sorted(set(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]).tolist())) if len(present) else []
    counts = np.bincount(np.searchsorted(edges, present.to_numpy(), side="right"), minlength=len(edges) + 1)
    return {"kind": "numeric", "edges": edges, "shares": _shares(np.append(counts, len(numbers) - len(present)))}


def categorical_profile(values: pd.Series) -> dict:
    labels = values.astype("string").fillna(MISSING)
    shares = labels.value_counts(normalize=True)
    return {"kind": "categorical", "shares": {str(k): float(v) for k, v in shares.items()}}


def profile(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> dict:
    return {"rows": int(len(frame)),
            "variables": {**{c: numeric_profile(frame[c]) for c in numeric},
                          **{c: categorical_profile(frame[c]) for c in categorical}}}


def _psi(reference: Sequence[float], current: Sequence[float]) -> float:
    total = 0.0
    for r, c in zip(reference, current):
        r, c = max(r, FLOOR), max(c, FLOOR)
        total += (c - r) * math.log(c / r)
    return float(total)


def psi(variable: Mapping, values: pd.Series) -> float:
    """The PSI of `values` against one variable of a profile."""
    if variable["kind"] == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        present = numbers[np.isfinite(numbers)]
        edges = variable["edges"]
        counts = np.bincount(np.searchsorted(edges, present.to_numpy(), side="right"), minlength=len(edges) + 1)
        current = _shares(np.append(counts, len(numbers) - len(present)))
        return _psi(variable["shares"], current)
    labels = values.astype("string").fillna(MISSING)
    reference = dict(variable["shares"])
    labels = labels.where(labels.isin(list(reference)), OTHER)
    current = labels.value_counts(normalize=True).to_dict()
    keys = sorted(set(reference) | set(current))
    return _psi([reference.get(k, 0.0) for k in keys], [float(current.get(k, 0.0)) for k in keys])


@dataclass(frozen=True)
class Thresholds:
    """When a drift number warns and when it is an error; `higher_is_worse` False for coverage."""

    warn: float
    error: float
    higher_is_worse: bool = True

    def level(self, value: float) -> str | None:
        """None (fine), "WARN" or "ERROR"."""
        worse = (lambda a, b: a >= b) if self.higher_is_worse else (lambda a, b: a <= b)
        if worse(value, self.error):
            return "ERROR"
        if worse(value, self.warn):
            return "WARN"
        return None


def worst(levels: Sequence[str | None]) -> str | None:
    return "ERROR" if "ERROR" in levels else "WARN" if "WARN" in levels else None
