"""The credit scorecard model: feature preprocessing, a torch logistic regression, score scaling, metrics.

This folder is the SageMaker script-mode source directory of the credit model (`train.py` and
`inference.py` import this module as a sibling), so it depends only on numpy, pandas and torch, which the
SageMaker PyTorch containers provide. The Dagster side imports it as `credit_assets.model_code.scorecard`.

Scorecard scaling follows the reference batch-scoring workflow: `factor = PDO / ln 2`,
`offset = target_score - factor * ln(target_odds)`, `score = offset - factor * log_odds` where
`log_odds` is the model's log-odds of Decline (PDO 20, score 600 at good:bad odds of 30).

Preprocessing is plain JSON (never pickle): per numeric feature the clipping bounds, median, mean and
standard deviation fitted on the Development split; per categorical feature its vocabulary.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
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
PREPROCESSING_FORMAT = 1

DEFAULT_PDO = 20.0
DEFAULT_TARGET_SCORE = 600.0
DEFAULT_TARGET_ODDS = 30.0


def column_for(feature: str) -> str:
    """The customers-table column that holds a model feature (snake case of the data set's name)."""
    return feature.lower()


# --- preprocessing ---------------------------------------------------------------------------------------


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


def fit_preprocessing(frame: pd.DataFrame) -> dict[str, Any]:
    """Learn clipping, imputation, standardisation and vocabularies from a training frame."""
    numeric = {}
    for name in NUMERIC_FEATURES:
        values = _numeric(frame[name])
        valid = values.dropna()
        if valid.empty:
            raise ValueError(f"training data has no valid (non-negative) values in column {name!r}")
        lower, upper = float(valid.quantile(0.01)), float(valid.quantile(0.99))
        clipped = valid.clip(lower, upper)
        std = float(clipped.std(ddof=0)) or 1.0
        numeric[name] = {
            "lower": lower,
            "upper": upper,
            "median": float(clipped.median()),
            "mean": float(clipped.mean()),
            "std": std,
        }
    categorical = {}
    for name in CATEGORICAL_FEATURES:
        vocabulary = sorted(set(_categorical(frame[name]).unique()) | {MISSING})
        categorical[name] = vocabulary
    feature_names = (
        NUMERIC_FEATURES
        + [f"{name}__missing" for name in NUMERIC_FEATURES]
        + [f"{name}={value}" for name in CATEGORICAL_FEATURES for value in categorical[name]]
    )
    return {
        "format": PREPROCESSING_FORMAT,
        "numeric": numeric,
        "categorical": categorical,
        "feature_names": feature_names,
    }


def validate_preprocessing(preprocessing: dict[str, Any], source: str = "preprocessing.json") -> None:
    """Fail clearly on a preprocessing document this code cannot use."""
    if preprocessing.get("format") != PREPROCESSING_FORMAT:
        raise ValueError(f"{source}: unsupported preprocessing format {preprocessing.get('format')!r}")
    for section, names in (("numeric", NUMERIC_FEATURES), ("categorical", CATEGORICAL_FEATURES)):
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


def transform(frame: pd.DataFrame, preprocessing: dict[str, Any]) -> np.ndarray:
    """The model's input matrix (float32). Unknown category values encode as all-zero one-hots."""
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


class LogisticScorecard(nn.Module):
    """Logistic regression: one linear layer whose output is the log-odds of Decline."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


def train_logistic(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, max_iter: int = 200, seed: int = 7
) -> LogisticScorecard:
    """Full-batch L-BFGS on the mean log-loss plus an L2 penalty on the weights."""
    torch.manual_seed(seed)
    model = LogisticScorecard(x.shape[1])
    features = torch.from_numpy(x)
    labels = torch.from_numpy(y.astype("float32"))
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = nn.BCEWithLogitsLoss()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model(features), labels) + l2 * model.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def log_odds(model: LogisticScorecard, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).double().numpy()


# --- scorecard scaling and metrics -----------------------------------------------------------------------


def scaling(pdo: float = DEFAULT_PDO, target_score: float = DEFAULT_TARGET_SCORE,
            target_odds: float = DEFAULT_TARGET_ODDS) -> dict[str, float]:
    factor = pdo / math.log(2)
    offset = target_score - factor * math.log(target_odds)
    return {"pdo": pdo, "target_score": target_score, "target_odds": target_odds, "factor": factor, "offset": offset}


def scores_from_log_odds(values: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    """Integer scorecard points: `round(offset - factor * log_odds)`."""
    return np.rint(scale["offset"] - scale["factor"] * values).astype("int64")


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
# what the serving container imports from code/ inside model.tar.gz (and pip-installs, requirements.txt)
SERVING_CODE = ("inference.py", "scorecard.py", "requirements.txt")


def save_bundle(directory: Path, model: LogisticScorecard, preprocessing: dict, scale: dict, metrics: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / MODEL_FILE)
    (directory / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2))
    (directory / SCORECARD_FILE).write_text(
        json.dumps({"n_features": len(preprocessing["feature_names"]), "scaling": scale}, indent=2)
    )
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
        self.model = LogisticScorecard(int(config["n_features"]))
        try:
            state = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise ValueError(f"model weights {directory / MODEL_FILE} cannot be loaded: {exc}") from None
        self.model.eval()

    def score(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(probability of Decline, integer score) for each row of `frame` (feature columns by data-set name)."""
        odds = log_odds(self.model, transform(frame, self.preprocessing))
        probability = 1.0 / (1.0 + np.exp(-odds))
        return probability, scores_from_log_odds(odds, self.scale)
