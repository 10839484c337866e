"""The two-tower model's user tower in numpy alone: the exported weights file and its forward pass.

Where torch cannot go (the Firehose transformation Lambda, whose package must stay under Lambda's 250 MB),
customers are embedded from `model/user_tower.json`, which training writes next to the torch weights:
plain JSON (no pickle), the two linear layers of the tower with their float32 values, the id vectors of the
customers the model was trained on (keyed by customer number), and what the forward pass does:

    p = relu(x @ W0.T + b0) @ W1.T + b1  (+ the customer's id vector for a customer of the training data)
    embedding = [1, p, 0] / |[1, p, 0]|

(format 2; format 1, written by earlier model versions, is `relu(x @ W0.T + b0) @ W1.T + b1` normalised,
without ids). `NumpyUserTower` gives the same embeddings as `two_tower.UserTower` (tested to float32
rounding), and its features are built from the same JSON scaler by the same rules: one-hot city and country
(an unseen value encodes as zeros), the credit limit standardised (missing -> the training mean). A customer
number the model never saw embeds from the features alone.

Imports only the standard library and numpy: it is part of the model's source folder (`two_tower.py`
imports it to write the export) and of the Lambda package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

USER_TOWER_FILE = "model/user_tower.json"
USER_SCALER_FILE = "scalers/user_features.json"
EXPORT_FORMAT = 2
EXPORT_FORMATS = (1, 2)  # what this module reads: 1 from model versions published before the id vectors
SCALER_FORMAT = 1
# torch's F.normalize: x / max(||x||, eps)
NORMALIZE_EPS = 1e-12
# the largest export or scaler file read: a tower over ~300,000 one-hot values; a bigger file is refused
# before it is parsed (parsing takes about six times the file's size in memory)
MAX_FILE_BYTES = 64 * 1024 * 1024


class TowerExportError(ValueError):
    """The exported tower or its scaler cannot be used; the message names the file and what is wrong."""


def export_user_tower(layers: Sequence[tuple[np.ndarray, np.ndarray]], *, dim: int, hidden: int,
                      customer_ids: Sequence[int] = (), customer_vectors: np.ndarray | None = None,
                      legacy: bool = False) -> dict[str, Any]:
    """The JSON document of `model/user_tower.json` from the tower's (weight, bias) pairs, in torch's
    `nn.Linear` layout (weight: out x in), and the known customers' id vectors (one row per id, in the
    order of `customer_ids`). Values are written as the float32 numbers they are. `legacy`: format 1."""
    document = {
        "format": 1 if legacy else EXPORT_FORMAT,
        "model": "two-tower user tower",
        "forward": ("x -> relu(x @ W0.T + b0) @ W1.T + b1 -> l2 normalise" if legacy else
                    "x -> relu(x @ W0.T + b0) @ W1.T + b1 (+ the known customer's vector) = p -> [1, p, 0] "
                    "-> l2 normalise"),
        "dim": dim,
        "hidden": hidden,
        "layers": [{"weight": np.asarray(weight, dtype=np.float32).tolist(),
                    "bias": np.asarray(bias, dtype=np.float32).tolist()} for weight, bias in layers],
    }
    if not legacy:
        vectors = np.zeros((0, dim - 2), np.float32) if customer_vectors is None else customer_vectors
        document["known_customers"] = {"ids": [int(i) for i in customer_ids],
                                       "vectors": np.asarray(vectors, dtype=np.float32).tolist()}
    return document


def customer_key(value) -> int | None:
    """A customer number as the id tables know it: a whole number (an integral float too, as pandas holds
    them next to missing values); anything else (missing, text, booleans) is no known customer."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their length (torch's F.normalize: x / max(||x||, eps)), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(NORMALIZE_EPS))
    return (vectors / norms).astype(np.float32)


def user_features(rows: Sequence[Mapping[str, Any]], scaler: Mapping[str, Any]) -> np.ndarray:
    """The feature matrix of `rows` (mappings with the scaler's columns, e.g. city, country, creditlimit):
    one-hot blocks in the scaler's order (a value not in the vocabulary, or missing, is all zeros), then
    each numeric column standardised (missing or not a number -> the training mean)."""
    blocks = []
    for name, vocabulary in scaler["categorical"].items():
        index = {value: position for position, value in enumerate(vocabulary)}
        block = np.zeros((len(rows), len(vocabulary)), dtype=np.float32)
        for row_number, row in enumerate(rows):
            value = row.get(name)
            position = index.get(value if isinstance(value, str) else ("" if value is None else str(value)))
            if position is not None:
                block[row_number, position] = 1.0
        blocks.append(block)
    for name, spec in scaler["numeric"].items():
        values = np.array([_number(row.get(name), spec["mean"]) for row in rows], dtype=np.float64)
        blocks.append(((values - spec["mean"]) / spec["std"]).astype(np.float32)[:, None])
    return np.hstack(blocks) if blocks else np.zeros((len(rows), 0), dtype=np.float32)


def _number(value, default: float) -> float:
    if isinstance(value, bool) or value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if not math.isnan(number) else default


def check_scaler(scaler, source: str) -> None:
    """The user scaler as `user_features` needs it, or `TowerExportError` naming the file and the problem."""
    if not isinstance(scaler, Mapping) or scaler.get("format") != SCALER_FORMAT:
        raise TowerExportError(f"{source}: the user scaler has an unsupported format")
    categorical, numeric = scaler.get("categorical"), scaler.get("numeric")
    if not isinstance(categorical, Mapping) or not isinstance(numeric, Mapping):
        raise TowerExportError(f"{source}: the user scaler needs 'categorical' and 'numeric' objects")
    for name, vocabulary in categorical.items():
        if not isinstance(vocabulary, list) or not all(isinstance(v, str) for v in vocabulary):
            raise TowerExportError(f"{source}: the scaler's vocabulary of {name!r} must be a list of strings")
        if len(set(vocabulary)) != len(vocabulary):
            raise TowerExportError(f"{source}: the scaler's vocabulary of {name!r} repeats a value")
    for name, spec in numeric.items():
        mean, std = (spec.get(k) if isinstance(spec, Mapping) else None for k in ("mean", "std"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (mean, std)):
            raise TowerExportError(f"{source}: the scaler's {name!r} needs a finite numeric 'mean' and 'std'")
        if std <= 0:
            raise TowerExportError(f"{source}: the scaler's {name!r} has a standard deviation of {std}, not above 0")
    width = sum(len(v) for v in categorical.values()) + len(numeric)
    if scaler.get("width") != width:
        raise TowerExportError(f"{source}: the scaler says width {scaler.get('width')!r} but its features make {width}")


def parse_file(data: bytes, source: str):
    """A JSON file of the export, refused with `TowerExportError` when too large, not JSON, or nested beyond
    what the parser takes."""
    if len(data) > MAX_FILE_BYTES:
        raise TowerExportError(f"{source}: {len(data):,} bytes, over the {MAX_FILE_BYTES:,} an export may have")
    try:
        return json.loads(data)
    except RecursionError:
        raise TowerExportError(f"{source}: not JSON this platform reads (nested too deeply)") from None
    except ValueError as exc:
        raise TowerExportError(f"{source}: not JSON ({exc})") from None


class NumpyUserTower:
    """Customers' unit-length embeddings from the exported user tower and the user scaler."""

    def __init__(self, export: Mapping[str, Any], scaler: Mapping[str, Any], source: str = USER_TOWER_FILE) -> None:
        if not isinstance(export, Mapping) or export.get("format") not in EXPORT_FORMATS:
            found = export.get("format") if isinstance(export, Mapping) else type(export).__name__
            raise TowerExportError(f"{source}: unsupported export format {found!r} (expected {EXPORT_FORMAT})")
        self.format = export["format"]
        check_scaler(scaler, source.replace(USER_TOWER_FILE, USER_SCALER_FILE))
        layers = export.get("layers")
        if not isinstance(layers, list) or len(layers) != 2:
            raise TowerExportError(f"{source}: expected 2 layers, found {len(layers) if isinstance(layers, list) else 0}")
        self.layers = []
        width = scaler["width"]
        for number, layer in enumerate(layers):
            try:
                weight = np.asarray(layer["weight"], dtype=np.float32)
                bias = np.asarray(layer["bias"], dtype=np.float32)
            except (KeyError, TypeError, ValueError, RecursionError):
                raise TowerExportError(f"{source}: layer {number} needs numeric 'weight' and 'bias' arrays") from None
            if weight.ndim != 2 or bias.shape != (weight.shape[0],):
                raise TowerExportError(f"{source}: layer {number} has weight {weight.shape} and bias {bias.shape}")
            if weight.shape[1] != width:
                raise TowerExportError(f"{source}: layer {number} takes {weight.shape[1]} inputs where "
                                       f"{'the scaler gives' if number == 0 else 'the layer before gives'} {width}")
            if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
                raise TowerExportError(f"{source}: layer {number} holds values that are not finite")
            self.layers.append((weight, bias))
            width = weight.shape[0]
        extra = 0 if self.format == 1 else 2  # format 2 adds the leading 1 and the trailing 0
        if width + extra != export.get("dim"):
            raise TowerExportError(f"{source}: the tower gives {width + extra} dimensions, its 'dim' says "
                                   f"{export.get('dim')}")
        self.dim = width + extra
        self.scaler = scaler
        self.known = {name: set(values) for name, values in scaler["categorical"].items()}
        self.customer_rows: dict[int, int] = {}
        self.customer_vectors = np.zeros((0, width), np.float32)
        if self.format != 1:
            self._read_known_customers(export.get("known_customers"), width, source)

    def _read_known_customers(self, known, width: int, source: str) -> None:
        if not isinstance(known, Mapping):
            raise TowerExportError(f"{source}: 'known_customers' must be an object with 'ids' and 'vectors'")
        ids = known.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TowerExportError(f"{source}: the known customers' 'ids' must be a list of whole numbers")
        if len(set(ids)) != len(ids):
            raise TowerExportError(f"{source}: the known customers' 'ids' repeat a customer number")
        try:
            vectors = np.asarray(known.get("vectors"), dtype=np.float32).reshape(len(ids), width) if ids else \
                np.zeros((0, width), np.float32)
        except (TypeError, ValueError, RecursionError):
            raise TowerExportError(f"{source}: the known customers need one vector of {width} numbers per id") from None
        if not np.isfinite(vectors).all():
            raise TowerExportError(f"{source}: the known customers' vectors hold values that are not finite")
        self.customer_rows = {customer: row for row, customer in enumerate(ids)}
        self.customer_vectors = vectors

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], source: str = USER_TOWER_FILE) -> NumpyUserTower:
        """From the published files' contents: `model/user_tower.json` and `scalers/user_features.json`."""
        export = parse_file(files[USER_TOWER_FILE], source)
        scaler = parse_file(files[USER_SCALER_FILE], source.replace(USER_TOWER_FILE, USER_SCALER_FILE))
        return cls(export, scaler, source)

    def embed_features(self, x: np.ndarray, customers: Sequence[Any] | None = None) -> np.ndarray:
        """Unit-length embeddings of feature rows `x`; `customers`: their customer numbers (None: all new)."""
        (w0, b0), (w1, b1) = self.layers
        hidden = np.maximum(x.astype(np.float32) @ w0.T + b0, np.float32(0))
        out = hidden @ w1.T + b1
        if self.format == 1:
            return l2_normalise(out)
        for row, customer in enumerate(customers if customers is not None else ()):
            position = self.customer_rows.get(customer_key(customer))
            if position is not None:
                out[row] += self.customer_vectors[position]
        ones, zeros = np.ones((len(out), 1), np.float32), np.zeros((len(out), 1), np.float32)
        return l2_normalise(np.hstack([ones, out.astype(np.float32), zeros]))

    def embed(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Unit-length embeddings for rows with city, country and creditlimit (new customers included), and
        optionally customernumber: a customer of the training data gets its learned id vector added."""
        return self.embed_features(user_features(rows, self.scaler), [row.get("customernumber") for row in rows])
