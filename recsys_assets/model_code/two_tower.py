"""Two-tower recommender with biases: a user tower and an item tower, each from features plus, for the
customers and products seen in training, a learned id part.

    predicted rating = b_u + b_i + p_u . q_i

- `p_u` (the user factors, `dim - 2` numbers) = an MLP of the user features (city and country one-hot,
  values unseen in training encode as zeros; credit limit standardised) + the customer's id vector when the
  customer was in the training data. `b_u` = a linear function of the same features + the customer's id
  bias. A customer the model never saw (a new customer from the stream) gets the feature parts alone.
- `q_i`, `b_i`: the same for products (product line and scale one-hot; stock, buy price and MSRP
  standardised).
- Every part is L2-penalised (ridge, in units of ratings). The biases' penalties come from the training
  ratings by empirical Bayes (`bias_penalties`: each id and categorical feature a random effect, its
  variance estimated by EM): an effect the ratings do not support is switched off. The factors (id vectors
  and MLP weights) get a strength chosen on an inner split of the training ratings among `factor_l2`
  candidates (by RMSE). When the ratings hold no user-item interaction that generalises, the chosen
  penalty shrinks the factors towards zero and the model ranks by the item biases; when they do (the demo
  data), it keeps them.

Published vectors (32-d, unit length), so that cosine search in pgvector ranks exactly as the model does:

    user = normalise([1, p_u, 0])        item = [b_i, q_i, sqrt(M^2 - b_i^2 - |q_i|^2)] / M

with `M` the largest `|[b_i, q_i]|` over the published items. Then `cos(user, item) = (b_i + p_u . q_i) /
(M |[1, p_u]|)`: for one customer a positive multiple of the predicted rating minus the customer's bias,
so the nearest items by cosine are the customer's best predicted items (`b_u` does not change a customer's
ranking and is not published).

This folder is the SageMaker script-mode source directory of the model (numpy, pandas, torch only); the
Dagster side and the stream enrichment import it as `recsys_assets.model_code.two_tower`. Scalers and the
configuration are JSON, weights a state_dict loaded with `weights_only=True`.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

if __package__:  # imported as recsys_assets.model_code.two_tower
    from . import numpy_tower
    from .training_defaults import TRAINING_DEFAULTS, factor_l2_candidates
else:  # the training job's and the serving container's code folder
    import numpy_tower
    from training_defaults import TRAINING_DEFAULTS, factor_l2_candidates

USER_CATEGORICAL = ["city", "country"]
USER_NUMERIC = ["creditlimit"]
ITEM_CATEGORICAL = ["productline", "productscale"]
ITEM_NUMERIC = ["quantityinstock", "buyprice", "msrp"]
USER_ID = "customernumber"
ITEM_ID = "productcode"
RATING = "productrating"
SCALER_FORMAT = 1
MODEL_FORMAT = 2  # model_config.json of the biased two-tower (earlier versions have no "format")

MODEL_FILE = "model/best_model.pth"
CONFIG_FILE = "model/model_config.json"
USER_SCALER_FILE = numpy_tower.USER_SCALER_FILE
ITEM_SCALER_FILE = "scalers/item_features.json"
USER_TOWER_FILE = numpy_tower.USER_TOWER_FILE  # the user tower for numpy (the Firehose Lambda), JSON
ITEM_EMBEDDINGS_FILE = "embeddings/item_embeddings.csv"
USER_EMBEDDINGS_FILE = "embeddings/user_embeddings.csv"
METRICS_FILE = "metrics.json"
# what the serving container imports from code/ inside model.tar.gz (and pip-installs, requirements.txt)
SERVING_CODE = ("inference.py", "two_tower.py", "numpy_tower.py", "training_defaults.py", "requirements.txt")


# --- feature scaling (JSON, never pickle) -----------------------------------------------------------------


def fit_scaler(frame: pd.DataFrame, categorical: list[str], numeric: list[str]) -> dict[str, Any]:
    scaler: dict[str, Any] = {"format": SCALER_FORMAT, "categorical": {}, "numeric": {}}
    for name in categorical:
        scaler["categorical"][name] = sorted(frame[name].dropna().astype(str).unique().tolist())
    for name in numeric:
        values = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        mean = float(values.mean()) if values.notna().any() else 0.0
        std = float(values.std(ddof=0)) if values.notna().sum() > 1 else 1.0
        scaler["numeric"][name] = {"mean": mean, "std": std or 1.0}
    scaler["width"] = sum(len(v) for v in scaler["categorical"].values()) + len(numeric)
    return scaler


def transform(frame: pd.DataFrame, scaler: dict[str, Any]) -> np.ndarray:
    """Feature matrix: one-hot blocks (unknown values -> zeros), then standardised numerics (missing -> mean)."""
    blocks = []
    for name, vocabulary in scaler["categorical"].items():
        codes = pd.Index(vocabulary).get_indexer(frame[name].astype("string").fillna("").to_numpy())
        block = np.zeros((len(frame), len(vocabulary)), dtype=np.float32)
        rows = np.flatnonzero(codes >= 0)
        block[rows, codes[rows]] = 1.0
        blocks.append(block)
    for name, spec in scaler["numeric"].items():
        values = pd.to_numeric(frame[name], errors="coerce").astype("float64").fillna(spec["mean"]).to_numpy()
        blocks.append(((values - spec["mean"]) / spec["std"]).astype(np.float32)[:, None])
    return np.hstack(blocks) if blocks else np.zeros((len(frame), 0), dtype=np.float32)


def id_positions(values, vocabulary: list) -> np.ndarray:
    """Each value's row in the id tables (`vocabulary` order), -1 where it has none (a new customer or product).
    Customer numbers are matched as whole numbers (`numpy_tower.customer_key`), product codes as text."""
    if vocabulary and isinstance(vocabulary[0], str):
        index = {value: position for position, value in enumerate(vocabulary)}
        return np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in values], dtype=np.int64)
    index = {int(value): position for position, value in enumerate(vocabulary)}
    return np.array([index.get(numpy_tower.customer_key(v), -1) for v in values], dtype=np.int64)


# --- the model ------------------------------------------------------------------------------------------


class SideTower(nn.Module):
    """One side (users or items): features and, when known, an id -> (factors, bias)."""

    def __init__(self, width: int, n_ids: int, factors: int, hidden: int, intercept: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, factors, bias=False))
        self.feature_bias = nn.Linear(width, 1, bias=intercept)
        self.id_factors = nn.Parameter(torch.randn(n_ids, factors) * 0.01)
        self.id_bias = nn.Parameter(torch.zeros(n_ids))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        known = ids >= 0
        safe = torch.where(known, ids, torch.zeros_like(ids))
        factors, bias = self.net(x), self.feature_bias(x)[:, 0]
        if len(self.id_bias):
            factors = factors + self.id_factors[safe] * known[:, None]
            bias = bias + self.id_bias[safe] * known
        return factors, bias


class TwoTower(nn.Module):
    """rating = b_u + b_i + p_u . q_i; the published vectors are `user_vectors` and `item_vectors`."""

    def __init__(self, user_width: int, item_width: int, n_users: int, n_items: int, dim: int = 32,
                 hidden: int = 64) -> None:
        super().__init__()
        if dim < 3:
            raise ValueError(f"the embedding dimension must be at least 3 (bias, factors, padding), not {dim}")
        self.user_tower = SideTower(user_width, n_users, dim - 2, hidden, intercept=True)
        self.item_tower = SideTower(item_width, n_items, dim - 2, hidden, intercept=False)

    def forward(self, user_x, user_ids, item_x, item_ids) -> torch.Tensor:
        p, b_u = self.user_tower(user_x, user_ids)
        q, b_i = self.item_tower(item_x, item_ids)
        return b_u + b_i + (p * q).sum(-1)


def user_vectors(factors: np.ndarray) -> np.ndarray:
    """Unit vectors `[1, p, 0] / |[1, p]|` from user factors (as `numpy_tower` computes them)."""
    factors = np.asarray(factors, dtype=np.float32)
    ones, zeros = np.ones((len(factors), 1), np.float32), np.zeros((len(factors), 1), np.float32)
    return numpy_tower.l2_normalise(np.hstack([ones, factors, zeros]))


def item_vector_norm(factors: np.ndarray, biases: np.ndarray) -> float:
    """`M`: the largest `|[b_i, q_i]|` of the items (1 when all are zero)."""
    lengths = np.sqrt(np.asarray(biases, np.float64) ** 2 + (np.asarray(factors, np.float64) ** 2).sum(1))
    norm = float(lengths.max()) if len(lengths) else 0.0
    return norm if norm > 0 else 1.0


def item_vectors(factors: np.ndarray, biases: np.ndarray, norm: float) -> np.ndarray:
    """Unit vectors `[b_i, q_i, sqrt(M^2 - b_i^2 - |q_i|^2)] / M`."""
    factors, biases = np.asarray(factors, np.float64), np.asarray(biases, np.float64)
    padding = np.sqrt(np.maximum(norm**2 - biases**2 - (factors**2).sum(1), 0.0))
    return (np.hstack([biases[:, None], factors, padding[:, None]]) / norm).astype(np.float32)


# --- training -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameters:
    """The model's hyperparameters (defaults: `training_defaults`, written there once)."""

    dim: int = TRAINING_DEFAULTS["embedding_dim"]
    hidden: int = TRAINING_DEFAULTS["hidden"]
    epochs: int = TRAINING_DEFAULTS["epochs"]
    lr: float = TRAINING_DEFAULTS["lr"]
    factor_l2: tuple[float, ...] = factor_l2_candidates(TRAINING_DEFAULTS["factor_l2"])
    inner_fraction: float = TRAINING_DEFAULTS["inner_fraction"]


# the random effects of the biases: each id and each feature, of users and of items
BIAS_CATEGORICAL = (USER_ID, *USER_CATEGORICAL, ITEM_ID, *ITEM_CATEGORICAL)
BIAS_NUMERIC = (*USER_NUMERIC, *ITEM_NUMERIC)
MIN_PENALTY, MAX_PENALTY = 1e-2, 1e6


def bias_penalties(frame: pd.DataFrame, iterations: int = 100) -> dict[str, float]:
    """The L2 penalty of each bias effect by empirical Bayes. The ratings as `mu + effects + noise`: one
    effect per value of each id and categorical feature, one slope per standardised numeric feature, each
    group of effects normal with its own variance, fitted by approximate EM (backfitting the effects'
    posterior means, each group's posterior variance taken apart from the others'). The penalty of a group
    is noise variance / its variance, the ridge whose solution is the effects' posterior mean: a group the
    ratings do not support (variance ~0) is switched off, the others shrunk by the evidence each value has."""
    ratings = frame[RATING].to_numpy(dtype=np.float64)
    # per group: (the row's design value, the row's level); categorical: 1 and the value's code
    groups = [(np.ones(len(frame)), pd.factorize(frame[name].astype(str))[0]) for name in BIAS_CATEGORICAL]
    for name in BIAS_NUMERIC:
        values = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        values = values.fillna(values.mean() if values.notna().any() else 0.0).to_numpy()
        spread = values.std() or 1.0
        groups.append(((values - values.mean()) / spread, np.zeros(len(frame), dtype=np.int64)))
    names = [*BIAS_CATEGORICAL, *BIAS_NUMERIC]
    levels = [int(level.max()) + 1 for _x, level in groups]
    precision = [np.bincount(level, x * x, n) for (x, level), n in zip(groups, levels)]  # per level: sum of x^2
    effects = [np.zeros(n) for n in levels]
    noise = float(ratings.var()) or 1.0
    variances = [noise / len(groups)] * len(groups)
    mu = float(ratings.mean())

    def contribution(k: int) -> np.ndarray:
        x, level = groups[k]
        return x * effects[k][level]

    for _ in range(iterations):
        for k, (x, level) in enumerate(groups):
            rest = ratings - mu - sum(contribution(j) for j in range(len(groups)) if j != k)
            effects[k] = np.bincount(level, x * rest, levels[k]) / (precision[k] + noise / max(variances[k], 1e-12))
        fitted = sum(contribution(k) for k in range(len(groups)))
        mu = float((ratings - fitted).mean())
        residual = ratings - mu - fitted
        posterior = [noise / (p + noise / max(v, 1e-12)) for p, v in zip(precision, variances)]
        variances = [float(np.mean(e**2 + post)) for e, post in zip(effects, posterior)]
        noise = float((residual @ residual + sum((p * post).sum() for p, post in zip(precision, posterior)))
                      / len(ratings)) or 1e-12
    return {name: float(np.clip(noise / max(v, 1e-12), MIN_PENALTY, MAX_PENALTY)) for name, v in zip(names, variances)}


def feature_penalties(scaler: dict, penalties: dict[str, float]) -> torch.Tensor:
    """The penalty of each feature weight of a bias: its categorical block's or its numeric feature's."""
    values = [penalties[name] for name, vocabulary in scaler["categorical"].items() for _ in vocabulary]
    values += [penalties[name] for name in scaler["numeric"]]
    return torch.tensor(values, dtype=torch.float32)


@dataclass
class Fitted:
    """A trained model with what it needs to embed: its scalers and the ids of its id tables."""

    model: TwoTower
    user_scaler: dict
    item_scaler: dict
    user_ids: list[int]
    item_ids: list[str]
    hyperparameters: Hyperparameters
    factor_l2: float  # the chosen strength
    penalties: dict[str, float]  # of the bias effects (`bias_penalties`)
    selection: dict[str, float] = field(default_factory=dict)  # inner-split RMSE per candidate

    def user_side(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        ids = frame[USER_ID] if USER_ID in frame else [None] * len(frame)
        return (torch.from_numpy(transform(frame, self.user_scaler)),
                torch.from_numpy(id_positions(list(ids), self.user_ids)))

    def item_side(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(transform(frame, self.item_scaler)),
                torch.from_numpy(id_positions(frame[ITEM_ID].tolist(), self.item_ids)))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted ratings of the (customer, product) rows of `frame`."""
        with torch.no_grad():
            return self.model(*self.user_side(frame), *self.item_side(frame)).numpy().astype(np.float64)

    def user_vectors(self, customers: pd.DataFrame) -> np.ndarray:
        with torch.no_grad():
            factors, _bias = self.model.user_tower(*self.user_side(customers))
        return user_vectors(factors.numpy())

    def item_parts(self, products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            factors, bias = self.model.item_tower(*self.item_side(products))
        return factors.numpy(), bias.numpy()

    def item_vectors(self, products: pd.DataFrame, norm: float | None = None) -> tuple[np.ndarray, float]:
        """The products' published vectors and `M` (computed over `products` unless given)."""
        factors, bias = self.item_parts(products)
        norm = item_vector_norm(factors, bias) if norm is None else norm
        return item_vectors(factors, bias, norm), norm

    def config(self, item_norm: float) -> dict[str, Any]:
        hp = self.hyperparameters
        return {"format": MODEL_FORMAT, "model": "two-tower with biases", "dim": hp.dim, "hidden": hp.hidden,
                "user_width": self.user_scaler["width"], "item_width": self.item_scaler["width"],
                "user_ids": [int(u) for u in self.user_ids], "item_ids": list(self.item_ids),
                "item_vector_norm": item_norm, "factor_l2": self.factor_l2, "bias_penalties": self.penalties,
                "hyperparameters": {**asdict(hp), "factor_l2": list(hp.factor_l2)}}


def _side_table(frame: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """One row per id (the first row's features), ids sorted."""
    return frame.drop_duplicates(key)[[key, *columns]].sort_values(key).reset_index(drop=True)


def _fit_fixed(frame: pd.DataFrame, user_scaler: dict, item_scaler: dict, hp: Hyperparameters, factor_l2: float,
               seed: int, penalties: dict[str, float] | None = None) -> Fitted:
    """Full-batch Adam on the penalised squared error, `hp.epochs` steps (the penalties, not early stopping,
    keep it from overfitting: the result does not depend on a validation set)."""
    users = _side_table(frame, USER_ID, [*USER_CATEGORICAL, *USER_NUMERIC])
    items = _side_table(frame, ITEM_ID, [*ITEM_CATEGORICAL, *ITEM_NUMERIC])
    user_ids = [int(u) for u in users[USER_ID]]
    item_ids = [str(i) for i in items[ITEM_ID]]
    torch.manual_seed(seed)
    model = TwoTower(user_scaler["width"], item_scaler["width"], len(users), len(items), hp.dim, hp.hidden)
    ratings = torch.from_numpy(frame[RATING].to_numpy(dtype=np.float32))
    with torch.no_grad():
        model.user_tower.feature_bias.bias.fill_(float(ratings.mean()))
    xu, xi = torch.from_numpy(transform(users, user_scaler)), torch.from_numpy(transform(items, item_scaler))
    all_users, all_items = torch.arange(len(users)), torch.arange(len(items))
    row_user = torch.from_numpy(id_positions(frame[USER_ID].tolist(), user_ids))
    row_item = torch.from_numpy(id_positions(frame[ITEM_ID].tolist(), item_ids))
    towers = (model.user_tower, model.item_tower)
    penalties = bias_penalties(frame) if penalties is None else penalties
    user_feature_l2 = feature_penalties(user_scaler, penalties)
    item_feature_l2 = feature_penalties(item_scaler, penalties)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr, foreach=True)
    for epoch in range(hp.epochs):
        for group in optimizer.param_groups:  # decaying linearly to 0: the last steps settle, stiff penalties too
            group["lr"] = hp.lr * (1 - epoch / hp.epochs)
        optimizer.zero_grad()
        p, b_u = model.user_tower(xu, all_users)
        q, b_i = model.item_tower(xi, all_items)
        predicted = b_u[row_user] + b_i[row_item] + (p[row_user] * q[row_item]).sum(-1)
        penalty = (penalties[USER_ID] * model.user_tower.id_bias.pow(2).sum()
                   + penalties[ITEM_ID] * model.item_tower.id_bias.pow(2).sum()
                   + (user_feature_l2 * model.user_tower.feature_bias.weight[0].pow(2)).sum()
                   + (item_feature_l2 * model.item_tower.feature_bias.weight[0].pow(2)).sum()
                   + factor_l2 * sum(t.id_factors.pow(2).sum() + t.net[0].weight.pow(2).sum()
                                     + t.net[2].weight.pow(2).sum() for t in towers))
        loss = ((predicted - ratings) ** 2).sum() + penalty
        (loss / len(frame)).backward()
        optimizer.step()
    model.eval()
    return Fitted(model, user_scaler, item_scaler, user_ids, item_ids, hp, factor_l2, penalties)


def rmse(predicted, actual) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The ratings sorted by customer and product, so that seeded splits do not depend on the files' order."""
    return frame.sort_values([USER_ID, ITEM_ID], kind="stable").reset_index(drop=True)


def fit(frame: pd.DataFrame, hp: Hyperparameters = Hyperparameters(), seed: int = 7) -> Fitted:
    """Scalers from `frame`, the factor penalty chosen among `hp.factor_l2` by RMSE on an inner split of
    `frame` (`hp.inner_fraction`, seeded), then the model trained on all of `frame` with it."""
    frame = in_order(frame)
    user_scaler = fit_scaler(frame, USER_CATEGORICAL, USER_NUMERIC)
    item_scaler = fit_scaler(frame, ITEM_CATEGORICAL, ITEM_NUMERIC)
    candidates = list(hp.factor_l2)
    if not candidates:
        raise ValueError("factor_l2 needs at least one candidate")
    selection: dict[str, float] = {}
    inner = np.random.default_rng([seed, 1]).random(len(frame)) < hp.inner_fraction
    if len(candidates) > 1 and inner.any() and not inner.all():
        fit_part, check_part = frame[~inner], frame[inner]
        trial_penalties = bias_penalties(fit_part)
        for candidate in candidates:
            trial = _fit_fixed(fit_part, user_scaler, item_scaler, hp, candidate, seed, trial_penalties)
            selection[f"{candidate:g}"] = rmse(clip_rating(trial.predict(check_part), fit_part), check_part[RATING])
        chosen = candidates[int(np.argmin(list(selection.values())))]
    else:
        chosen = candidates[0]
    fitted = _fit_fixed(frame, user_scaler, item_scaler, hp, chosen, seed)
    fitted.selection = selection
    return fitted


def clip_rating(predicted: np.ndarray, train_part: pd.DataFrame) -> np.ndarray:
    """Predictions within the range of the training ratings."""
    return np.clip(predicted, train_part[RATING].min(), train_part[RATING].max())


# --- evaluation -----------------------------------------------------------------------------------------


def ndcg_at_k(true_ratings: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """NDCG@k of ranking one user's held-out items by `scores`, graded by their true ratings."""
    order = np.argsort(-scores, kind="stable")[:k]
    gains = 2.0 ** true_ratings - 1
    discounts = 1 / np.log2(np.arange(2, k + 2))
    dcg = float((gains[order] * discounts[: len(order)]).sum())
    ideal = float((np.sort(gains)[::-1][:k] * discounts[: min(k, len(gains))]).sum())
    return dcg / ideal if ideal > 0 else 0.0


def mean_ndcg(frame: pd.DataFrame, score_column: str, k: int = 5) -> float:
    """Mean NDCG@k over users with at least two held-out ratings."""
    values = [
        ndcg_at_k(group[RATING].to_numpy(dtype=float), group[score_column].to_numpy(dtype=float), k)
        for _user, group in frame.groupby(USER_ID) if len(group) >= 2
    ]
    return float(np.mean(values)) if values else float("nan")


# the figures of one held-out split: the model's and each baseline's where the metric makes sense
SPLIT_METRICS = ("model_rmse", "model_ndcg_at_5", "popularity_ndcg_at_5", "item_mean_ndcg_at_5",
                 "item_mean_rmse", "global_mean_rmse", "user_mean_rmse")


def score_split(fitted: Fitted, train_part: pd.DataFrame, held_out: pd.DataFrame) -> dict[str, float]:
    """The model and the baselines on one held-out split. The model ranks each user's held-out items by the
    cosine of the published vectors (what pgvector does online; `M` over all products of the data)."""
    held = held_out.copy()
    held["model_rating"] = clip_rating(fitted.predict(held), train_part)
    products = pd.concat([train_part, held_out]).drop_duplicates(ITEM_ID)
    _vectors, norm = fitted.item_vectors(products)
    user_unit = fitted.user_vectors(held)
    item_unit, _ = fitted.item_vectors(held, norm)
    held["model_cosine"] = (user_unit.astype(np.float64) * item_unit).sum(1)
    stats = train_part.groupby(ITEM_ID)[RATING].agg(["count", "mean"])
    global_mean = float(train_part[RATING].mean())
    item_mean = held[ITEM_ID].map(stats["mean"]).fillna(global_mean).astype(float)
    held["popularity"] = held[ITEM_ID].map(stats["count"]).fillna(0) + 1e-3 * item_mean  # most rated, then best
    held["item_mean"] = item_mean
    user_mean = held[USER_ID].map(train_part.groupby(USER_ID)[RATING].mean()).fillna(global_mean)
    actual = held[RATING]
    return {
        "model_rmse": rmse(held["model_rating"], actual),
        "model_ndcg_at_5": mean_ndcg(held, "model_cosine"),
        "popularity_ndcg_at_5": mean_ndcg(held, "popularity"),
        "item_mean_ndcg_at_5": mean_ndcg(held, "item_mean"),
        "item_mean_rmse": rmse(item_mean, actual),
        "global_mean_rmse": rmse(np.full(len(held), global_mean), actual),
        "user_mean_rmse": rmse(user_mean, actual),
    }


def evaluate(frame: pd.DataFrame, hp: Hyperparameters, seeds: list[int], fraction: float = 0.2) -> dict[str, Any]:
    """For each seed: hold out `fraction` of the ratings at random, fit (`fit`, its choices made inside the
    training part) and score the model and the baselines on the held-out ratings. Returns the per-seed
    figures and, per figure, the mean and the sample standard deviation over the seeds."""
    frame = in_order(frame)
    per_seed = []
    for seed in seeds:
        held = np.random.default_rng(seed).random(len(frame)) < fraction
        if held.all() or not held.any():
            raise ValueError(f"{len(frame)} ratings are too few for a held-out split of {fraction:g}")
        train_part, held_out = frame[~held], frame[held]
        fitted = fit(train_part, hp, seed)
        per_seed.append({"seed": int(seed), **score_split(fitted, train_part, held_out),
                         "factor_l2": fitted.factor_l2, "held_out_ratings": int(held.sum())})
    summary: dict[str, Any] = {}
    for name in SPLIT_METRICS:
        values = np.array([row[name] for row in per_seed], dtype=float)
        summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    model, baselines = {k: summary[f"model_{k}"]["mean"] for k in ("rmse", "ndcg_at_5")}, summary
    beats = {
        "ndcg_at_5>popularity": model["ndcg_at_5"] > baselines["popularity_ndcg_at_5"]["mean"],
        "ndcg_at_5>item_mean": model["ndcg_at_5"] > baselines["item_mean_ndcg_at_5"]["mean"],
        "rmse<item_mean": model["rmse"] < baselines["item_mean_rmse"]["mean"],
    }
    context = {  # cheap baselines reported next to the targets
        "rmse<global_mean": model["rmse"] < baselines["global_mean_rmse"]["mean"],
        "rmse<user_mean": model["rmse"] < baselines["user_mean_rmse"]["mean"],
    }
    return {"seeds": [int(s) for s in seeds], "held_out_fraction": fraction, "summary": summary,
            "targets_met": beats, "also_beats": context, "per_seed": per_seed}


def flat_metrics(evaluation: dict[str, Any]) -> dict[str, Any]:
    """`metrics.json`'s top-level figures: the means (names as earlier versions had them) and their `_std`."""
    names = {"model_rmse": "validation_rmse", "model_ndcg_at_5": "validation_ndcg_at_5",
             "popularity_ndcg_at_5": "popularity_ndcg_at_5", "item_mean_ndcg_at_5": "item_mean_ndcg_at_5",
             "item_mean_rmse": "item_mean_baseline_rmse", "global_mean_rmse": "global_mean_baseline_rmse",
             "user_mean_rmse": "user_mean_baseline_rmse"}
    flat: dict[str, Any] = {}
    for source, name in names.items():
        flat[name] = evaluation["summary"][source]["mean"]
        flat[f"{name}_std"] = evaluation["summary"][source]["std"]
    flat["evaluation_seeds"] = len(evaluation["seeds"])
    return flat


# --- the published bundle -------------------------------------------------------------------------------


def format_vector(vector: np.ndarray) -> str:
    """pgvector's text form: `[x1,x2,...]`."""
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


def embeddings_csv(ids: list, vectors: np.ndarray) -> str:
    lines = ["id,embedding"]
    lines += [f'{identifier},"{format_vector(vector)}"' for identifier, vector in zip(ids, vectors)]
    return "\n".join(lines) + "\n"


def export_user_tower(fitted: Fitted) -> dict[str, Any]:
    """`model/user_tower.json`: the user tower's weights and the known customers' id vectors, for
    `numpy_tower.NumpyUserTower`."""
    tower = fitted.model.user_tower
    layers = [(tower.net[0].weight.detach().numpy(), tower.net[0].bias.detach().numpy()),
              (tower.net[2].weight.detach().numpy(), np.zeros(tower.net[2].out_features, np.float32))]
    return numpy_tower.export_user_tower(layers, dim=fitted.hyperparameters.dim, hidden=fitted.hyperparameters.hidden,
                                         customer_ids=fitted.user_ids, customer_vectors=tower.id_factors.detach().numpy())


def bundle_files(fitted: Fitted, products: pd.DataFrame, customers: pd.DataFrame, metrics: dict | None = None,
                 numpy_export: bool = True) -> dict[str, bytes]:
    """The lab's layout: weights, configuration, scalers, the numpy user tower and both embeddings files
    (`products` and `customers` sorted by id), and `metrics.json` when given."""
    products = products.sort_values(ITEM_ID)
    customers = customers.sort_values(USER_ID)
    item_unit, norm = fitted.item_vectors(products)
    user_unit = fitted.user_vectors(customers)
    state = io.BytesIO()
    torch.save(fitted.model.state_dict(), state)
    files = {
        MODEL_FILE: state.getvalue(),
        CONFIG_FILE: json.dumps(fitted.config(norm), indent=2).encode(),
        USER_SCALER_FILE: json.dumps(fitted.user_scaler, indent=2).encode(),
        ITEM_SCALER_FILE: json.dumps(fitted.item_scaler, indent=2).encode(),
        ITEM_EMBEDDINGS_FILE: embeddings_csv(products[ITEM_ID].tolist(), item_unit).encode(),
        USER_EMBEDDINGS_FILE: embeddings_csv(customers[USER_ID].astype(int).tolist(), user_unit).encode(),
    }
    if numpy_export:
        files[USER_TOWER_FILE] = json.dumps(export_user_tower(fitted)).encode()
    if metrics is not None:
        files[METRICS_FILE] = json.dumps(metrics, indent=2).encode()
    return files


def pack_serving_code(model_dir: Path) -> None:
    """`code/` next to the weights, laid out as the SageMaker SDK's repack lays it out: the PyTorch serving
    container imports the handlers only from there (each model's code folder is self-contained)."""
    source, target = Path(__file__).resolve().parent, Path(model_dir) / "code"
    target.mkdir(parents=True, exist_ok=True)
    for name in SERVING_CODE:
        shutil.copyfile(source / name, target / name)


class _LegacyTower(nn.Module):
    """The user tower of model versions published before the biased model (no `format` in their config):
    features -> MLP -> unit vector, no ids."""

    def __init__(self, width: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class UserTower:
    """The published user tower, for embedding customers from their features (new ones included) and, for
    customers of the training data, their id vectors."""

    def __init__(self, config: dict, state: dict, scaler: dict) -> None:
        if scaler.get("format") != SCALER_FORMAT:
            raise ValueError(f"unsupported user scaler format {scaler.get('format')!r}")
        self.scaler = scaler
        self.dim = config["dim"]
        self.format = config.get("format", 1)
        if self.format == 1:
            tower = _LegacyTower(config["user_width"], config["dim"], config["hidden"])
            tower.load_state_dict({k.removeprefix("user_tower."): v for k, v in state.items()
                                   if k.startswith("user_tower.net.")})
            self.tower, self.user_ids = tower.eval(), []
        elif self.format == MODEL_FORMAT:
            model = TwoTower(config["user_width"], config["item_width"], len(config["user_ids"]),
                             len(config["item_ids"]), config["dim"], config["hidden"])
            model.load_state_dict(state)
            self.tower, self.user_ids = model.user_tower.eval(), [int(u) for u in config["user_ids"]]
        else:
            raise ValueError(f"unsupported model format {self.format!r}")

    def to_numpy(self) -> numpy_tower.NumpyUserTower:
        """The same tower for numpy (for model versions published without `model/user_tower.json`)."""
        net = self.tower.net
        layers = [(net[i].weight.detach().numpy(),
                   net[i].bias.detach().numpy() if net[i].bias is not None else np.zeros(net[i].out_features, np.float32))
                  for i in (0, 2)]
        if self.format == 1:
            export = numpy_tower.export_user_tower(layers, dim=self.dim, hidden=net[0].out_features, legacy=True)
        else:
            export = numpy_tower.export_user_tower(layers, dim=self.dim, hidden=net[0].out_features,
                                                   customer_ids=self.user_ids,
                                                   customer_vectors=self.tower.id_factors.detach().numpy())
        return numpy_tower.NumpyUserTower(export, self.scaler)

    @classmethod
    def load(cls, directory: Path) -> UserTower:
        directory = Path(directory)
        return cls.from_bytes({name: (directory / name).read_bytes()
                               for name in (CONFIG_FILE, USER_SCALER_FILE, MODEL_FILE)})

    @classmethod
    def from_bytes(cls, files: dict[str, bytes]) -> UserTower:
        """From the published files' contents (`model/model_config.json`, `scalers/user_features.json`,
        `model/best_model.pth`); the weights are read with `weights_only=True`."""
        config = json.loads(files[CONFIG_FILE])
        scaler = json.loads(files[USER_SCALER_FILE])
        state = torch.load(io.BytesIO(files[MODEL_FILE]), map_location="cpu", weights_only=True)
        return cls(config, state, scaler)

    def embed(self, frame: pd.DataFrame) -> np.ndarray:
        """Unit-length embeddings for rows with city, country and creditlimit, and optionally customernumber
        (a customer of the training data gets its id vector added)."""
        x = torch.from_numpy(transform(frame, self.scaler))
        with torch.no_grad():
            if self.format == 1:
                return nn.functional.normalize(self.tower.net(x), dim=-1).numpy().astype(np.float32)
            ids = frame[USER_ID].tolist() if USER_ID in frame else [None] * len(frame)
            factors, _bias = self.tower(x, torch.from_numpy(id_positions(ids, self.user_ids)))
        return user_vectors(factors.numpy())
