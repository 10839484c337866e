"""The credit scorecard model: binned characteristics, a torch logistic regression on them, points per attribute.

This folder is the SageMaker script-mode source directory of the credit model (`train.py` and
`inference.py` import this module as a sibling), so it depends only on numpy, pandas and torch, which the
SageMaker PyTorch containers provide. The Dagster side imports it as `credit_assets.model_code.scorecard`;
torch is imported on first use of the model, so the features and their binning stay light to import.

The model is a points scorecard, fitted on the Development split only:

- **Binning.** Each feature is a *characteristic* whose values fall into *attributes*. A numeric feature is
  cut at quantiles (`prebins`), and adjacent bins are merged until the decline rate is monotone in the
  value (the direction with the higher information value) and every bin holds at least `min_bin_share` of
  the applications. A single value that is frequent (`min_special_share`) and whose decline rate differs
  clearly from the rest of its bin (a two-proportion z of `special_z` or more; e.g. Time_with_Bank = 0,
  Loan_Amount = 0) becomes an attribute of its own, and missing values (empty, or the data set's negative
  codes such as Loan_to_income = -9999997) have their own attribute. A categorical feature has an attribute
  per category holding at least `min_bin_share` of the applications and one "(other)" attribute for the
  rest. Each attribute's Development counts, decline rate and weight of evidence
  (WoE = ln(share of Accepts / share of Declines)) are kept in `preprocessing.json`.
- **Model.** A logistic regression for the log-odds of Decline with one weight per attribute (the
  dummy-variable form of a scorecard: each attribute's weight is fitted jointly with the others, which
  is what lets correlated characteristics such as Application_Score and Bureau_Score share their
  evidence), an L2 penalty, and each characteristic's weights constrained to follow its `risk_order`: a
  numeric characteristic's value bins in their monotone direction, a categorical one's categories in the
  order of their decline rates. So the points never zig-zag along a value and never reverse the order of
  the categories' decline rates (special values, "missing" and "(other)" are free). Fitted by projected
  Newton in numpy; the weights are the linear layer of a torch module, saved as its state_dict.
- **Points.** `factor = PDO / ln 2`, `offset = target_score - factor * ln(target_odds)` (PDO 20, score 600
  at good:bad odds of 30); with n characteristics, the points of attribute a are
  `-(weight_a + intercept / n) * factor + offset / n`, so an application's score is the sum of its
  attributes' points, `offset - factor * log_odds`, rounded. The points table is in `scorecard.json` and,
  for people, in `points.csv` and `points.md` next to `metrics.json`.

Values the Development data never showed are scored explicitly, never as NaN: a number beyond the
training range falls into the first or last value bin (bins are open-ended); a missing number, a category
too rare for an attribute of its own, or one never seen, falls into the characteristic's "missing" or
"(other)" attribute; and an attribute no Development application fell into carries the characteristic's
lowest points (conservative: no evidence earns no credit). The Dagster pipeline still skips, and counts,
customers with a category value never seen in training (`unknown_categories`).

Everything is JSON or a state_dict (never pickle). Bundles of the previous format (1: standardised numbers
and one-hot categories) still load and score as they did.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from torch import nn

NUMERIC_FEATURES = [
    "Application_Score",
    "Bureau_Score",
    "Loan_Amount",
    "Time_with_Bank",
    "Time_in_Employment",
    "Loan_to_income",
    "Gross_Annual_Income",
]
CATEGORICAL_FEATURES = [
    "Loan_Payment_Frequency",
    "Residential_Status",
    "Cheque_Card_Flag",
    "Existing_Customer_Flag",
    "Home_Telephone_Number",
]
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
LABEL = "Final_Decision"
POSITIVE_LABEL = "Decline"
SPLIT = "split"
MISSING = "__MISSING__"
PREPROCESSING_FORMAT = 2
LEGACY_FORMAT = 1

DEFAULT_PDO = 20.0
DEFAULT_TARGET_SCORE = 600.0
DEFAULT_TARGET_ODDS = 30.0

# binning and fitting defaults (train.py's hyperparameters)
DEFAULT_PREBINS = 50
DEFAULT_MIN_BIN_SHARE = 0.02
DEFAULT_MIN_SPECIAL_SHARE = 0.005
DEFAULT_SPECIAL_Z = 3.0
DEFAULT_L2 = 3e-5
DEFAULT_SEED = 7  # of the Development/Validation split
DEFAULT_MAX_ITER = 100  # Newton iterations (it converges in about 10)

INCREASING, DECREASING, FLAT = "increasing", "decreasing", "none"
RANGE, SPECIAL, MISSING_ATTRIBUTE, CATEGORY, OTHER = "range", "special", "missing", "category", "other"
WOE_SMOOTHING = 0.5  # added to both counts of an attribute, so an attribute without Declines has a finite WoE


def column_for(feature: str) -> str:
    """The customers-table column that holds a model feature (snake case of the data set's name)."""
    return feature.lower()


# --- reading features ------------------------------------------------------------------------------------


def _numeric(values: pd.Series) -> pd.Series:
    # Negative values are the data set's "missing" sentinels (-9999997/-9999998); none of these features
    # is negative by nature.
    series = pd.to_numeric(values, errors="coerce").astype("float64")
    return series.where(series >= 0)


def _categorical(values: pd.Series) -> pd.Series:
    series = values.astype("string").str.strip().fillna("")
    return series.mask(series == "", MISSING)


def feature_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The features as the model reads them (columns by data-set name): numbers, with the data set's negative
    "missing" codes as missing, and category labels, with an empty value as `MISSING`."""
    return pd.DataFrame({**{name: _numeric(frame[name]) for name in NUMERIC_FEATURES},
                         **{name: _categorical(frame[name]) for name in CATEGORICAL_FEATURES}}, index=frame.index)


def split_frame(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(development, validation): the data set's own split when it has one, else a seeded 80/20 split."""
    if SPLIT in frame.columns and frame[SPLIT].isin(["Development", "Validation"]).any():
        return frame[frame[SPLIT] == "Development"], frame[frame[SPLIT] == "Validation"]
    rng = np.random.default_rng(seed)
    validation = rng.random(len(frame)) < 0.2
    return frame[~validation], frame[validation]


def labels(frame: pd.DataFrame) -> np.ndarray:
    """True where the application was declined."""
    return (frame[LABEL] == POSITIVE_LABEL).to_numpy()


# --- binning (fitted on the Development split) -----------------------------------------------------------


def _merge(bins: list[list[float]], k: int) -> None:
    """Merge bin k with bin k+1 (each bin: [declines, applications, upper edge])."""
    bins[k] = [bins[k][0] + bins[k + 1][0], bins[k][1] + bins[k + 1][1], bins[k + 1][2]]
    del bins[k + 1]


def _rate(b: list[float]) -> float:
    return b[0] / b[1]


def _information_value(bins: list[list[float]], total_bad: float, total_good: float) -> float:
    bad = np.array([b[0] for b in bins]) + WOE_SMOOTHING
    good = np.array([b[1] - b[0] for b in bins]) + WOE_SMOOTHING
    bad_share, good_share = bad / bad.sum(), good / good.sum()
    return float(((good_share - bad_share) * np.log(good_share / bad_share)).sum())


def _monotone_bins(values: np.ndarray, bad: np.ndarray, prebins: int, min_count: float,
                   direction: str) -> list[list[float]]:
    """Quantile pre-bins of `values`, merged until the decline rate rises (or falls) with the value and each
    bin holds `min_count` applications. Returns [declines, applications, upper edge] per bin."""
    cuts = np.unique(np.quantile(values, np.arange(1, prebins) / prebins, method="lower"))
    cuts = cuts[cuts < values.max()]
    position = np.searchsorted(cuts, values, side="left")
    declines = np.bincount(position, weights=bad, minlength=len(cuts) + 1)
    counts = np.bincount(position, minlength=len(cuts) + 1).astype(float)
    uppers = [*cuts.tolist(), math.inf]
    bins = [[declines[i], counts[i], uppers[i]] for i in range(len(uppers)) if counts[i] > 0]
    rising = direction == INCREASING
    k = 0
    while k < len(bins) - 1:  # pool adjacent violators: the result does not depend on the order of merges
        if (_rate(bins[k]) >= _rate(bins[k + 1])) if rising else (_rate(bins[k]) <= _rate(bins[k + 1])):
            _merge(bins, k)
            k = max(k - 1, 0)
        else:
            k += 1
    while len(bins) > 1:  # the smallest bin joins the neighbour closest in decline rate (stays monotone)
        k = int(np.argmin([b[1] for b in bins]))
        if bins[k][1] >= min_count:
            break
        if k == 0 or (k < len(bins) - 1 and
                      abs(_rate(bins[k + 1]) - _rate(bins[k])) < abs(_rate(bins[k - 1]) - _rate(bins[k]))):
            _merge(bins, k)
        else:
            _merge(bins, k - 1)
    return bins


def _best_monotone_bins(values, bad, prebins, min_count, total_bad, total_good) -> tuple[list[list[float]], str]:
    candidates = [(_monotone_bins(values, bad, prebins, min_count, d), d) for d in (INCREASING, DECREASING)]
    bins, direction = max(candidates, key=lambda c: _information_value(c[0], total_bad, total_good))
    return bins, (direction if len(bins) > 1 else FLAT)


def _special_values(x: np.ndarray, bad: np.ndarray, edges: np.ndarray, min_count: float, z_min: float) -> list[float]:
    """Frequent single values whose decline rate differs from the rest of their bin by `z_min` standard errors."""
    present = ~np.isnan(x)
    values, counts = np.unique(x[present], return_counts=True)
    position = np.searchsorted(edges, x, side="left")
    special = []
    for value in values[counts >= min_count]:
        own = x == value
        rest = (position == position[own][0]) & ~own & present
        if rest.sum() < min_count:
            continue
        p_own, p_rest, p_all = bad[own].mean(), bad[rest].mean(), bad[own | rest].mean()
        se = math.sqrt(p_all * (1 - p_all) * (1 / own.sum() + 1 / rest.sum()))
        if se > 0 and abs(p_own - p_rest) / se >= z_min:
            special.append(float(value))
    return special


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _attribute_stats(codes: np.ndarray, bad: np.ndarray, n_attributes: int) -> list[dict[str, float]]:
    declines = np.bincount(codes, weights=bad, minlength=n_attributes)
    counts = np.bincount(codes, minlength=n_attributes)
    total_bad, total_good = bad.sum(), len(bad) - bad.sum()
    woe = np.log(((counts - declines + WOE_SMOOTHING) / (total_good + WOE_SMOOTHING))
                 / ((declines + WOE_SMOOTHING) / (total_bad + WOE_SMOOTHING)))
    return [{"applications": int(counts[i]), "declines": int(declines[i]),
             "decline_rate": float(declines[i] / counts[i]) if counts[i] else None, "woe": float(woe[i])}
            for i in range(n_attributes)]


def _fit_numeric(name: str, x: np.ndarray, bad: np.ndarray, prebins: int, min_bin_share: float,
                 min_special_share: float, special_z: float) -> dict[str, Any]:
    n = len(x)
    present = ~np.isnan(x)
    total_bad, total_good = bad.sum(), n - bad.sum()
    special: list[float] = []
    if present.any():
        bins, _direction = _best_monotone_bins(x[present], bad[present], prebins, min_bin_share * n, total_bad,
                                               total_good)
        edges = np.array([b[2] for b in bins[:-1]])
        special = _special_values(x, bad, edges, min_special_share * n, special_z)
    regular = present & ~np.isin(x, special)
    if regular.any():  # the value bins again, without the special values
        bins, direction = _best_monotone_bins(x[regular], bad[regular], prebins, min_bin_share * n, total_bad,
                                              total_good)
        edges = [b[2] for b in bins[:-1]]
    else:
        edges, direction = [], FLAT
    names = ([f"<= {_number(edges[0])}"] + [f"({_number(a)}, {_number(b)}]" for a, b in zip(edges, edges[1:])]
             + [f"> {_number(edges[-1])}"]) if edges else ["any value"]
    attributes = [{"label": label, "kind": RANGE} for label in names]
    attributes += [{"label": f"= {_number(value)}", "kind": SPECIAL, "value": value} for value in special]
    attributes.append({"label": "missing (empty or a negative code)", "kind": MISSING_ATTRIBUTE})
    ranges = list(range(len(names))) if direction != FLAT else []
    spec = {"name": name, "type": "numeric", "edges": [float(e) for e in edges], "special_values": special,
            "direction": direction, "attributes": attributes,
            "risk_order": ranges if direction == INCREASING else ranges[::-1],
            "training_range": [float(np.nanmin(x)), float(np.nanmax(x))] if present.any() else None}
    for attribute, stats in zip(attributes, _attribute_stats(_numeric_codes(x, spec), bad, len(attributes))):
        attribute.update(stats)
    return spec


def _fit_categorical(name: str, values: pd.Series, bad: np.ndarray, min_bin_share: float) -> dict[str, Any]:
    counts = values.value_counts()
    own = sorted(str(v) for v, c in counts.items() if c >= min_bin_share * len(values))
    rare = sorted(str(v) for v, c in counts.items() if c < min_bin_share * len(values))

    def shown(value: str) -> str:
        return "(missing)" if value == MISSING else value

    attributes = [{"label": shown(value), "kind": CATEGORY, "value": value} for value in own]
    other = "(other" + (": " + ", ".join(shown(v) for v in rare) if rare else "") + ")"
    attributes.append({"label": other, "kind": OTHER, "values": rare})
    spec = {"name": name, "type": "categorical", "categories": {value: i for i, value in enumerate(own)},
            "attributes": attributes}
    for attribute, stats in zip(attributes, _attribute_stats(_categorical_codes(values, spec), bad, len(attributes))):
        attribute.update(stats)
    spec["risk_order"] = sorted(range(len(own)), key=lambda i: attributes[i]["decline_rate"])
    return spec


def fit_preprocessing(frame: pd.DataFrame, *, prebins: int = DEFAULT_PREBINS,
                      min_bin_share: float = DEFAULT_MIN_BIN_SHARE,
                      min_special_share: float = DEFAULT_MIN_SPECIAL_SHARE,
                      special_z: float = DEFAULT_SPECIAL_Z) -> dict[str, Any]:
    """Bin every characteristic on a training frame (features and `Final_Decision`): see the module's doc."""
    bad = labels(frame).astype("float64")
    if len(frame) == 0 or bad.all() or not bad.any():
        raise ValueError("the binning needs training rows with both Accept and Decline")
    features = feature_frame(frame)
    characteristics = []
    for name in NUMERIC_FEATURES:
        if features[name].isna().all():
            raise ValueError(f"training data has no valid (non-negative) values in column {name!r}")
        characteristics.append(_fit_numeric(name, features[name].to_numpy(), bad, prebins, min_bin_share,
                                            min_special_share, special_z))
    for name in CATEGORICAL_FEATURES:
        characteristics.append(_fit_categorical(name, features[name], bad, min_bin_share))
    feature_names = [f"{c['name']} {a['label']}" if c["type"] == "numeric" else f"{c['name']}={a['label']}"
                     for c in characteristics for a in c["attributes"]]
    return {
        "format": PREPROCESSING_FORMAT,
        "binning": {"prebins": prebins, "min_bin_share": min_bin_share, "min_special_share": min_special_share,
                    "special_z": special_z, "fitted_on": {"applications": len(frame), "declines": int(bad.sum())}},
        "characteristics": characteristics,
        # the categories seen in training (and "missing"): customers with another value are skipped by the pipeline
        "categorical": {name: sorted(set(features[name].unique()) | {MISSING}) for name in CATEGORICAL_FEATURES},
        "feature_names": feature_names,
    }


def validate_preprocessing(preprocessing: dict[str, Any], source: str = "preprocessing.json") -> None:
    """Fail clearly on a preprocessing document this code cannot use."""
    version = preprocessing.get("format")
    if version == LEGACY_FORMAT:
        sections = (("numeric", NUMERIC_FEATURES), ("categorical", CATEGORICAL_FEATURES))
    elif version == PREPROCESSING_FORMAT:
        sections = (("categorical", CATEGORICAL_FEATURES),)
        names = [c.get("name") for c in preprocessing.get("characteristics", [])]
        if names != FEATURES:
            raise ValueError(f"{source}: characteristics {names} are not the model's features {FEATURES}")
    else:
        raise ValueError(f"{source}: unsupported preprocessing format {version!r}")
    for section, names in sections:
        missing = [n for n in names if n not in preprocessing.get(section, {})]
        if missing:
            raise ValueError(f"{source}: {section} section lacks feature(s) {', '.join(missing)}")


def unknown_categories(frame: pd.DataFrame, preprocessing: dict[str, Any]) -> dict[str, pd.Series]:
    """Per categorical feature, a boolean mask of rows whose value the model never saw in training."""
    masks = {}
    for name in CATEGORICAL_FEATURES:
        known = set(preprocessing["categorical"][name])
        masks[name] = ~_categorical(frame[name]).isin(known)
    return masks


# --- attributes: which bin each value falls into ---------------------------------------------------------


def _numeric_codes(x: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The attribute of each value: a value bin (open-ended at both ends), a special value, or missing."""
    edges, special = np.asarray(spec["edges"], dtype="float64"), spec["special_values"]
    codes = np.searchsorted(edges, x, side="left")  # +inf -> the last bin
    for i, value in enumerate(special):
        codes[x == value] = len(edges) + 1 + i
    codes[np.isnan(x)] = len(edges) + 1 + len(special)
    return codes


def _categorical_codes(values: pd.Series, spec: dict[str, Any]) -> np.ndarray:
    """The attribute of each category; rare and never-seen categories are "(other)" (the last attribute)."""
    other = len(spec["attributes"]) - 1
    return values.map(spec["categories"]).fillna(other).to_numpy(dtype="int64")


def offsets(preprocessing: dict[str, Any]) -> np.ndarray:
    """The model-input index of each characteristic's first attribute."""
    sizes = [len(c["attributes"]) for c in preprocessing["characteristics"]]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype("int64")


def attribute_codes(frame: pd.DataFrame, preprocessing: dict[str, Any]) -> np.ndarray:
    """(rows x characteristics) int64: the model-input index of each row's attribute in each characteristic."""
    features = feature_frame(frame)
    columns = []
    for spec, start in zip(preprocessing["characteristics"], offsets(preprocessing)):
        if spec["type"] == "numeric":
            codes = _numeric_codes(features[spec["name"]].to_numpy(), spec)
        else:
            codes = _categorical_codes(features[spec["name"]], spec)
        columns.append(codes + start)
    return np.column_stack(columns).astype("int64") if len(frame) else np.zeros((0, len(columns)), dtype="int64")


def _legacy_matrix(frame: pd.DataFrame, preprocessing: dict[str, Any]) -> np.ndarray:
    """Format 1's input matrix: clipped, standardised numbers, missing indicators and one-hot categories."""
    n = len(frame)
    columns: list[np.ndarray] = []
    indicators: list[np.ndarray] = []
    for name in NUMERIC_FEATURES:
        spec = preprocessing["numeric"][name]
        values = _numeric(frame[name]).to_numpy()
        missing = np.isnan(values)
        filled = np.where(missing, spec["median"], np.clip(values, spec["lower"], spec["upper"]))
        columns.append((filled - spec["mean"]) / spec["std"])
        indicators.append(missing.astype("float64"))
    one_hots: list[np.ndarray] = []
    for name in CATEGORICAL_FEATURES:
        vocabulary = preprocessing["categorical"][name]
        codes = pd.Index(vocabulary).get_indexer(_categorical(frame[name]))  # -1 for unseen values
        block = np.zeros((n, len(vocabulary)), dtype="float64")
        rows = np.nonzero(codes >= 0)[0]
        block[rows, codes[rows]] = 1.0
        one_hots.append(block)
    matrix = np.column_stack(columns + indicators + one_hots) if n else np.zeros((0, len(preprocessing["feature_names"])))
    return matrix.astype("float32")


# --- model -----------------------------------------------------------------------------------------------


@functools.cache
def _model_class() -> type:
    """`LogisticScorecard`, built on first use: torch is imported by what trains, saves or loads a model, not by
    what only needs the features and their binning (the credit assets' definitions, the customer store)."""
    from torch import nn

    class LogisticScorecard(nn.Module):
        """Logistic regression: one linear layer whose output is the log-odds of Decline. In format 2 its
        inputs are the attributes' indicators (one weight per attribute)."""

        def __init__(self, n_features: int) -> None:
            super().__init__()
            self.linear = nn.Linear(n_features, 1)

        def forward(self, x):
            return self.linear(x).squeeze(-1)

    LogisticScorecard.__module__, LogisticScorecard.__qualname__ = __name__, "LogisticScorecard"  # picklable
    return LogisticScorecard


def __getattr__(name: str):
    if name == "LogisticScorecard":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def log_odds(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Log-odds of Decline for a dense input matrix (format 1)."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).double().numpy()


def attribute_log_odds(model: nn.Module, codes: np.ndarray) -> np.ndarray:
    """Log-odds of Decline from attribute codes: the intercept plus each row's attributes' weights (the
    linear layer on the attributes' indicators, without building them)."""
    weights = model.linear.weight.detach().double().numpy()[0]
    return float(model.linear.bias.detach().double()) + weights[codes].sum(axis=1)


def _parametrisation(preprocessing: dict[str, Any], monotone: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(free, steps): attribute weights = free @ p + steps @ s with s >= 0. The attributes of a characteristic's
    `risk_order` share a first weight plus non-negative steps, so their weights never decrease along it
    (all weights free without `monotone`)."""
    n = sum(len(c["attributes"]) for c in preprocessing["characteristics"])
    free_columns, step_columns = [], []
    for spec, start in zip(preprocessing["characteristics"], offsets(preprocessing)):
        order = spec["risk_order"] if monotone else []
        chain = [start + i for i in order]
        for k, attribute in enumerate(chain):
            column = np.zeros(n)
            column[chain[k:]] = 1.0
            (step_columns if k else free_columns).append(column)
        for i in sorted(set(range(len(spec["attributes"]))) - set(order)):
            column = np.zeros(n)
            column[start + i] = 1.0
            free_columns.append(column)
    free = np.column_stack(free_columns)
    steps = np.column_stack(step_columns) if step_columns else np.zeros((n, 0))
    return free, steps


def _objective(theta: np.ndarray, design: np.ndarray, y: np.ndarray, penalty: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean log-loss plus penalty, log-odds) for parameters `theta` = (intercept, p, steps)."""
    eta = design @ theta
    loss = float(np.mean(np.logaddexp(0.0, eta) - y * eta)) + float(theta @ penalty @ theta)
    return loss, eta


def _projected_newton(design: np.ndarray, y: np.ndarray, penalty: np.ndarray, bounded: np.ndarray,
                      max_iter: int, tolerance: float = 1e-8) -> np.ndarray:
    """Minimise the penalised mean log-loss of a logistic model with log-odds `design @ theta`, the `bounded`
    parameters >= 0: Newton steps on the parameters not held at their bound, projected back onto it, with an
    Armijo line search (Bertsekas' projected Newton method; the problem is convex and small)."""
    n, size = design.shape
    theta = np.zeros(size)
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta[0] = math.log(rate / (1 - rate))
    loss, eta = _objective(theta, design, y, penalty)
    for _ in range(max_iter):
        prob = 1.0 / (1.0 + np.exp(-eta))
        gradient = design.T @ (prob - y) / n + 2 * penalty @ theta
        held = bounded & (theta <= 1e-9) & (gradient > 0)
        if np.abs(np.where(held, 0.0, gradient)).max() < tolerance:
            break
        free = ~held
        hessian = (design[:, free].T * (prob * (1 - prob))) @ design[:, free] / n + 2 * penalty[np.ix_(free, free)]
        direction = np.zeros(size)
        direction[free] = -np.linalg.solve(hessian + 1e-12 * np.eye(free.sum()), gradient[free])
        step = 1.0
        while step > 1e-10:
            candidate = theta + step * direction
            candidate[bounded] = np.maximum(candidate[bounded], 0.0)
            new_loss, new_eta = _objective(candidate, design, y, penalty)
            if new_loss <= loss + 1e-4 * gradient @ (candidate - theta):
                break
            step /= 2
        else:
            break
        improvement = loss - new_loss
        theta, loss, eta = candidate, new_loss, new_eta
        if improvement < tolerance * 1e-2:
            break
    return theta


def train_scorecard(codes: np.ndarray, y: np.ndarray, preprocessing: dict[str, Any], *, l2: float = DEFAULT_L2,
                    max_iter: int = DEFAULT_MAX_ITER, monotone: bool = True) -> nn.Module:
    """Minimise the mean log-loss plus `l2` times the sum of squared attribute weights, the weights
    non-decreasing along each characteristic's `risk_order` (projected Newton in numpy: deterministic, a few
    seconds at most on the bank's data; `monotone=False` drops that constraint, for comparison). Then each characteristic's weights are centred on its training mean (the intercept takes
    the difference: same log-odds), and an attribute no training row fell into gets its characteristic's
    highest weight (lowest points)."""
    free, steps = _parametrisation(preprocessing, monotone)
    mapping = np.hstack([free, steps])  # attribute weights = mapping @ (p, steps)
    n_attributes = mapping.shape[0]
    rows = np.repeat(np.arange(len(codes)), codes.shape[1])
    indicators = np.zeros((len(codes), n_attributes))
    np.add.at(indicators, (rows, codes.ravel()), 1.0)
    design = np.hstack([np.ones((len(codes), 1)), indicators @ mapping])
    penalty = np.zeros((design.shape[1], design.shape[1]))
    penalty[1:, 1:] = l2 * mapping.T @ mapping
    bounded = np.zeros(design.shape[1], dtype=bool)
    bounded[1 + free.shape[1]:] = True
    theta = _projected_newton(design, np.asarray(y, dtype="float64"), penalty, bounded, max_iter)
    w, intercept = mapping @ theta[1:], float(theta[0])
    counts = np.bincount(codes.ravel(), minlength=n_attributes)
    for spec, start in zip(preprocessing["characteristics"], offsets(preprocessing)):
        block = slice(start, start + len(spec["attributes"]))
        centre = float((w[block] * counts[block]).sum() / counts[block].sum())
        w[block] -= centre
        intercept += centre
        seen = counts[block] > 0
        w[block][~seen] = w[block][seen].max()
    import torch

    model = _model_class()(n_attributes)
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(w).float().unsqueeze(0))
        model.linear.bias.fill_(intercept)
    return model


def fit(development: pd.DataFrame, *, l2: float = DEFAULT_L2, max_iter: int = DEFAULT_MAX_ITER, monotone: bool = True,
        **binning: Any) -> tuple[dict[str, Any], nn.Module]:
    """(preprocessing, model) fitted on a Development frame (features and `Final_Decision`)."""
    preprocessing = fit_preprocessing(development, **binning)
    model = train_scorecard(attribute_codes(development, preprocessing), labels(development), preprocessing,
                            l2=l2, max_iter=max_iter, monotone=monotone)
    return preprocessing, model


# --- scorecard scaling, points and metrics ---------------------------------------------------------------


def scaling(pdo: float = DEFAULT_PDO, target_score: float = DEFAULT_TARGET_SCORE,
            target_odds: float = DEFAULT_TARGET_ODDS) -> dict[str, float]:
    factor = pdo / math.log(2)
    offset = target_score - factor * math.log(target_odds)
    return {"pdo": pdo, "target_score": target_score, "target_odds": target_odds, "factor": factor, "offset": offset}


def scores_from_log_odds(values: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    """Integer scorecard points: `round(offset - factor * log_odds)`."""
    return np.rint(scale["offset"] - scale["factor"] * values).astype("int64")


def points_table(model: nn.Module, preprocessing: dict[str, Any], scale: dict[str, float]) -> list[dict]:
    """One row per attribute: its characteristic, label, Development counts, decline rate, WoE, weight and
    points, `-(weight + intercept / n) * factor + offset / n` (n characteristics): the points of an
    application's attributes add up to its score."""
    weights = model.linear.weight.detach().double().numpy()[0]
    intercept = float(model.linear.bias.detach().double())
    n = len(preprocessing["characteristics"])
    rows = []
    for spec, start in zip(preprocessing["characteristics"], offsets(preprocessing)):
        total = sum(a["applications"] for a in spec["attributes"])
        for i, attribute in enumerate(spec["attributes"]):
            weight = float(weights[start + i])
            rows.append({
                "characteristic": spec["name"], "attribute": attribute["label"],
                "applications": attribute["applications"], "share": attribute["applications"] / total,
                "decline_rate": attribute["decline_rate"], "woe": attribute["woe"], "weight": weight,
                "points": -(weight + intercept / n) * scale["factor"] + scale["offset"] / n,
            })
    return rows


def points_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["characteristic", "attribute", "applications", "share", "decline_rate", "woe", "points"])
    for row in rows:
        rate = "" if row["decline_rate"] is None else f"{row['decline_rate']:.4f}"
        writer.writerow([row["characteristic"], row["attribute"], row["applications"], f"{row['share']:.4f}", rate,
                         f"{row['woe']:.4f}", f"{row['points']:.2f}"])
    return out.getvalue()


def points_markdown(rows: list[dict], scale: dict[str, float], metrics: dict | None = None) -> str:
    """The points table for people: a section per characteristic, its attributes' points (one decimal)."""
    lines = [
        "# Credit scorecard: points per attribute",
        "",
        f"Score = the sum of the points of the applicant's attribute in each characteristic, rounded "
        f"(PDO {_number(scale['pdo'])}, {_number(scale['target_score'])} points at good:bad odds of "
        f"{_number(scale['target_odds'])}; more points, less risk). Counts, decline rates and WoE "
        f"(ln of the share of Accepts over the share of Declines) are the Development split's.",
    ]
    if metrics and metrics.get("validation_gini") is not None:
        lines.append("")
        lines.append(f"Validation Gini {metrics['validation_gini']:.4f} (AUC {metrics['validation_auc']:.4f}).")
    lines += ["", "A value outside the training range scores in the first or last bin; a missing number (empty, or "
                  "one of the data set's negative codes such as -9999997) in \"missing\"; a category too rare for "
                  "an attribute of its own, or never seen, in \"(other)\"; an attribute without training "
                  "applications carries its characteristic's lowest points."]
    for name in dict.fromkeys(row["characteristic"] for row in rows):
        lines += ["", f"## {name}", "", "| attribute | applications | share | decline rate | WoE | points |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in (r for r in rows if r["characteristic"] == name):
            rate = "–" if row["decline_rate"] is None else f"{row['decline_rate']:.1%}"
            label = row["attribute"].replace("|", "\\|")
            lines.append(f"| {label} | {row['applications']:,} | {row['share']:.1%} | {rate} | {row['woe']:+.3f} "
                         f"| {row['points']:.1f} |")
    return "\n".join(lines) + "\n"


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def score_distribution(scores: np.ndarray) -> dict[str, float]:
    if len(scores) == 0:
        return {}
    quantiles = np.quantile(scores, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    names = ["p01", "p05", "p25", "p50", "p75", "p95", "p99"]
    out = {name: float(value) for name, value in zip(names, quantiles)}
    out.update({"min": float(np.min(scores)), "max": float(np.max(scores)), "mean": float(np.mean(scores))})
    return out


# --- the model bundle as stored in SM_MODEL_DIR / model.tar.gz -------------------------------------------

MODEL_FILE = "model.pt"
PREPROCESSING_FILE = "preprocessing.json"
SCORECARD_FILE = "scorecard.json"
METRICS_FILE = "metrics.json"
POINTS_CSV_FILE = "points.csv"
POINTS_MARKDOWN_FILE = "points.md"
# what the serving container imports from code/ inside model.tar.gz (and pip-installs, requirements.txt)
SERVING_CODE = ("inference.py", "scorecard.py", "requirements.txt")


def save_bundle(directory: Path, model: nn.Module, preprocessing: dict, scale: dict, metrics: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    import torch

    torch.save(model.state_dict(), directory / MODEL_FILE)
    (directory / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2))
    rows = points_table(model, preprocessing, scale)
    (directory / SCORECARD_FILE).write_text(json.dumps({
        "n_features": len(preprocessing["feature_names"]), "scaling": scale,
        "points": [{k: row[k] for k in ("characteristic", "attribute", "points")} for row in rows],
    }, indent=2))
    (directory / POINTS_CSV_FILE).write_text(points_csv(rows))
    (directory / POINTS_MARKDOWN_FILE).write_text(points_markdown(rows, scale, metrics))
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    pack_serving_code(directory)


def pack_serving_code(model_dir: Path) -> None:
    """`code/` next to the weights, laid out as the SageMaker SDK's repack lays it out: the PyTorch serving
    container imports the handlers only from there."""
    source, target = Path(__file__).resolve().parent, Path(model_dir) / "code"
    target.mkdir(parents=True, exist_ok=True)
    for name in SERVING_CODE:
        shutil.copyfile(source / name, target / name)


class ScorecardBundle:
    """A loaded model: preprocessing, weights (`weights_only=True`) and scaling."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        for name in (MODEL_FILE, PREPROCESSING_FILE, SCORECARD_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"model bundle {directory} lacks {name}")
        try:
            self.preprocessing = json.loads((directory / PREPROCESSING_FILE).read_text())
            config = json.loads((directory / SCORECARD_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"model bundle {directory}: corrupt JSON ({exc.msg})") from None
        validate_preprocessing(self.preprocessing, str(directory / PREPROCESSING_FILE))
        self.scale = config["scaling"]
        import torch

        self.model = _model_class()(int(config["n_features"]))
        try:
            state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise ValueError(f"model weights {directory / MODEL_FILE} cannot be loaded: {exc}") from None
        self.model.eval()

    def log_odds(self, frame: pd.DataFrame) -> np.ndarray:
        """Log-odds of Decline for each row of `frame` (feature columns by data-set name)."""
        if self.preprocessing["format"] == LEGACY_FORMAT:
            return log_odds(self.model, _legacy_matrix(frame, self.preprocessing))
        return attribute_log_odds(self.model, attribute_codes(frame, self.preprocessing))

    def score(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(probability of Decline, integer score) for each row of `frame` (feature columns by data-set name)."""
        odds = self.log_odds(frame)
        probability = 1.0 / (1.0 + np.exp(-odds))
        return probability, scores_from_log_odds(odds, self.scale)
