"""Content-based two-tower recommender: a user tower and an item tower that map features to unit-length
embeddings whose cosine similarity, scaled and shifted, predicts the rating.

User tower: city and country one-hot (values unseen in training encode as all zeros, so new customers from
a stream still get an embedding), credit limit standardised. Item tower: product line and scale one-hot;
quantity in stock, buy price and MSRP standardised. Because the rating is a monotone function of the
cosine similarity, nearest neighbours by cosine distance in pgvector are the best-rated items.

This folder is the SageMaker script-mode source directory of the model (numpy, pandas, torch only); the
Dagster side and the stream enrichment import it as `recsys_assets.model_code.two_tower`. Feature scalers
are JSON, weights a state_dict loaded with `weights_only=True`.
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

if __package__:  # imported as recsys_assets.model_code.two_tower
    from . import numpy_tower
else:  # the training job's and the serving container's code folder
    import numpy_tower

USER_CATEGORICAL = ["city", "country"]
USER_NUMERIC = ["creditlimit"]
ITEM_CATEGORICAL = ["productline", "productscale"]
ITEM_NUMERIC = ["quantityinstock", "buyprice", "msrp"]
USER_ID = "customernumber"
ITEM_ID = "productcode"
RATING = "productrating"
SCALER_FORMAT = 1

MODEL_FILE = "model/best_model.pth"
CONFIG_FILE = "model/model_config.json"
USER_SCALER_FILE = numpy_tower.USER_SCALER_FILE
ITEM_SCALER_FILE = "scalers/item_features.json"
USER_TOWER_FILE = numpy_tower.USER_TOWER_FILE  # the user tower for numpy (the Firehose Lambda), JSON
ITEM_EMBEDDINGS_FILE = "embeddings/item_embeddings.csv"
USER_EMBEDDINGS_FILE = "embeddings/user_embeddings.csv"
# what the serving container imports from code/ inside model.tar.gz (and pip-installs, requirements.txt)
SERVING_CODE = ("inference.py", "two_tower.py", "numpy_tower.py", "requirements.txt")


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


# --- the model ------------------------------------------------------------------------------------------


class Tower(nn.Module):
    def __init__(self, n_in: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=-1)


class TwoTower(nn.Module):
    """rating ~ scale * cos(user, item) + bias."""

    def __init__(self, user_width: int, item_width: int, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.user_tower = Tower(user_width, dim, hidden)
        self.item_tower = Tower(item_width, dim, hidden)
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.bias = nn.Parameter(torch.tensor(3.0))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.user_tower(users) * self.item_tower(items)).sum(-1) + self.bias


def config_for(user_scaler: dict, item_scaler: dict, dim: int, hidden: int) -> dict[str, int]:
    return {"user_width": user_scaler["width"], "item_width": item_scaler["width"], "dim": dim, "hidden": hidden}


def train(user_x: np.ndarray, item_x: np.ndarray, ratings: np.ndarray, val: np.ndarray, *, dim: int = 32,
          hidden: int = 64, epochs: int = 300, lr: float = 0.01, weight_decay: float = 1e-4,
          seed: int = 7) -> tuple[TwoTower, dict[str, float]]:
    """Full-batch Adam on the mean squared error; returns the state with the best validation RMSE."""
    torch.manual_seed(seed)
    model = TwoTower(user_x.shape[1], item_x.shape[1], dim, hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    u, i, r = (torch.from_numpy(a) for a in (user_x, item_x, ratings.astype(np.float32)))
    train_rows, val_rows = torch.from_numpy(~val), torch.from_numpy(val)
    best = {"rmse": math.inf, "epoch": -1}
    best_state = None
    for epoch in range(epochs):
        model.train()
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(u[train_rows], i[train_rows]), r[train_rows])
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            rmse = float(torch.sqrt(nn.functional.mse_loss(model(u[val_rows], i[val_rows]), r[val_rows])))
        if rmse < best["rmse"]:
            best = {"rmse": rmse, "epoch": epoch, "train_mse": float(loss.detach())}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model, best


def export_user_tower(model: TwoTower) -> dict[str, Any]:
    """`model/user_tower.json`: the user tower's weights for `numpy_tower.NumpyUserTower`."""
    net = model.user_tower.net
    layers = [(net[i].weight.detach().numpy(), net[i].bias.detach().numpy()) for i in (0, 2)]
    return numpy_tower.export_user_tower(layers, dim=net[2].out_features, hidden=net[0].out_features)


def embed(tower: Tower, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tower(torch.from_numpy(x)).numpy().astype(np.float32)


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


# --- the published bundle -------------------------------------------------------------------------------


def format_vector(vector: np.ndarray) -> str:
    """pgvector's text form: `[x1,x2,...]`."""
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


def embeddings_csv(ids: list, vectors: np.ndarray) -> str:
    lines = ["id,embedding"]
    lines += [f'{identifier},"{format_vector(vector)}"' for identifier, vector in zip(ids, vectors)]
    return "\n".join(lines) + "\n"


def pack_serving_code(model_dir: Path) -> None:
    """`code/` next to the weights, laid out as the SageMaker SDK's repack lays it out: the PyTorch serving
    container imports the handlers only from there (each model's code folder is self-contained)."""
    source, target = Path(__file__).resolve().parent, Path(model_dir) / "code"
    target.mkdir(parents=True, exist_ok=True)
    for name in SERVING_CODE:
        shutil.copyfile(source / name, target / name)


class UserTower:
    """The published user tower, for embedding customers from their features (new ones included)."""

    def __init__(self, config: dict, state: dict, scaler: dict) -> None:
        if scaler.get("format") != SCALER_FORMAT:
            raise ValueError(f"unsupported user scaler format {scaler.get('format')!r}")
        model = TwoTower(config["user_width"], config["item_width"], config["dim"], config["hidden"])
        model.load_state_dict(state)
        model.eval()
        self.model = model
        self.tower = model.user_tower
        self.scaler = scaler
        self.dim = config["dim"]

    def to_numpy(self) -> numpy_tower.NumpyUserTower:
        """The same tower for numpy (for model versions published without `model/user_tower.json`)."""
        return numpy_tower.NumpyUserTower(export_user_tower(self.model), self.scaler)

    @classmethod
    def load(cls, directory: Path) -> UserTower:
        directory = Path(directory)
        return cls.from_bytes({name: (directory / name).read_bytes()
                               for name in (CONFIG_FILE, USER_SCALER_FILE, MODEL_FILE)})

    @classmethod
    def from_bytes(cls, files: dict[str, bytes]) -> UserTower:
        """From the published files' contents (`model/model_config.json`, `scalers/user_features.json`,
        `model/best_model.pth`); the weights are read with `weights_only=True`."""
        import io

        config = json.loads(files[CONFIG_FILE])
        scaler = json.loads(files[USER_SCALER_FILE])
        state = torch.load(io.BytesIO(files[MODEL_FILE]), map_location="cpu", weights_only=True)
        return cls(config, state, scaler)

    def embed(self, frame: pd.DataFrame) -> np.ndarray:
        """Unit-length embeddings for rows with city, country and creditlimit."""
        return embed(self.tower, transform(frame, self.scaler))
