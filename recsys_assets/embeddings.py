"""Embeddings files in the lab's layout and their validation.

A model version lives under `ml-artifacts/<version>/`::

    embeddings/item_embeddings.csv   id,embedding   (embedding as pgvector text "[x1,...,x32]")
    embeddings/user_embeddings.csv
    model/best_model.pth             state_dict, loaded with weights_only=True
    model/model_config.json
    scalers/*.json                   feature scaling as JSON (no pickle)
    manifest.json                    written last: version, dimension, row counts, metrics, files

A version a data scientist publishes by hand in this layout loads as well: its manifest needs `files`
(a list of paths or a mapping to `{"sha256", "bytes"}`); `dimension` and `rows` are checked when
given. Every problem in a CSV is reported with the file and line.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from resources.artifact_keys import MODEL_VERSIONS_PREFIX as ARTIFACTS_PREFIX
from resources.artifact_keys import version_prefix  # noqa: F401  (re-exported)
from resources.artifact_keys import ArtifactNotFoundError, join_key
from resources.model_versions import MANIFEST, listed_files, read_verified, sha256_hex, version_files

if TYPE_CHECKING:  # a Dagster resource: reading versions imports without Dagster
    from resources.artifacts import ArtifactStore

ITEM_FILE = "embeddings/item_embeddings.csv"
USER_FILE = "embeddings/user_embeddings.csv"
ROW_KEYS = {ITEM_FILE: "item_embeddings", USER_FILE: "user_embeddings"}
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class EmbeddingsFileError(ValueError):
    """An embeddings file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class EmbeddingRows:
    """Parsed embeddings: ids (str or int64) and an (n, dim) float32 matrix, with where they came from."""

    ids: np.ndarray
    vectors: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0


def parse_embeddings_csv(data: bytes, source: str, *, dimension: int | None = None,
                         integer_ids: bool = False) -> EmbeddingRows:
    """Parse `id,embedding` lines; the embedding may be quoted or not (`1,"[0.1,...]"` or `1,[0.1,...]`).

    Fails on the first problem, naming the file and line: a bad header, a missing or duplicate id, an
    unparsable or non-finite number, a vector of the wrong dimension.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EmbeddingsFileError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    if not lines or lines[0].strip().replace('"', "").replace(" ", "").lower() != "id,embedding":
        raise EmbeddingsFileError(f"{source}, line 1: expected the header 'id,embedding'")
    ids: list = []
    inner: list[str] = []
    line_of: dict = {}
    width = dimension
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        identifier, sep, vector = line.partition(",")
        identifier = identifier.strip().strip('"')
        vector = vector.strip().strip('"').strip()
        if not sep or not identifier:
            raise EmbeddingsFileError(f"{source}, line {number}: expected 'id,embedding'")
        if integer_ids:
            try:
                identifier = int(identifier)
            except ValueError:
                raise EmbeddingsFileError(f"{source}, line {number}: id {identifier!r} is not an integer") from None
        if identifier in line_of:
            raise EmbeddingsFileError(
                f"{source}, line {number}: duplicate id {identifier!r} (first on line {line_of[identifier]})")
        line_of[identifier] = number
        if not (vector.startswith("[") and vector.endswith("]")):
            raise EmbeddingsFileError(f"{source}, line {number}: embedding is not a vector like [x1,...,xn]")
        values = vector.count(",") + 1
        if width is None:
            width = values
        if values != width:
            raise EmbeddingsFileError(
                f"{source}, line {number}: embedding has {values} values, expected dimension {width}")
        ids.append(identifier)
        inner.append(vector[1:-1])
    matrix = _parse_matrix(inner, width or 0, source, [line_of[i] for i in ids])
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise EmbeddingsFileError(f"{source}, line {line_of[ids[row]]}: embedding contains NaN or infinity")
    if np.abs(matrix).max(initial=0) > np.finfo(np.float32).max:
        row = int(np.argmax(np.abs(matrix).max(axis=1)))
        raise EmbeddingsFileError(f"{source}, line {line_of[ids[row]]}: value out of float32 range")
    id_array = np.array(ids, dtype=np.int64 if integer_ids else object)
    return EmbeddingRows(ids=id_array, vectors=matrix.astype(np.float32), source=source)


def _parse_matrix(rows: list[str], width: int, source: str, lines: list[int]) -> np.ndarray:
    """The comma-separated rows as an (n, width) float64 matrix, parsed by pandas' C reader."""
    if not rows:
        return np.zeros((0, width))
    try:
        frame = pd.read_csv(io.StringIO("\n".join(rows)), header=None, dtype=np.float64, engine="c",
                            na_filter=False, skipinitialspace=True)
        matrix = frame.to_numpy()
    except ValueError:
        matrix = None
    if matrix is not None and matrix.shape == (len(rows), width):
        return matrix
    # slow path: Python's float() (which also reads nan/inf, checked by the caller) to find the bad value
    parsed = np.empty((len(rows), width))
    for row, text in enumerate(rows):
        for column, value in enumerate(text.split(",")):
            try:
                parsed[row, column] = float(value)
            except ValueError:
                raise EmbeddingsFileError(f"{source}, line {lines[row]}: unparsable value {value.strip()!r}") from None
    return parsed


# --- versions in the artifact store ---------------------------------------------------------------------


@dataclass(frozen=True)
class CompleteVersion:
    version: str
    manifest: dict[str, Any]
    published_at: datetime  # when its last file (manifest or listed) was written: when it became complete
    signature: str  # changes whenever the manifest or a listed file is replaced


def complete_versions(store: ArtifactStore, problems: list[str] | None = None) -> dict[str, CompleteVersion]:
    """Versions under `ml-artifacts/` whose manifest is present and lists files that are all present.

    Decided from one listing of the prefix, whatever order the files were written in. Versions whose
    manifest cannot be read are left out and described in `problems`.
    """
    present = {version: {relative: (info.last_modified, info.size) for relative, info in files.items()}
               for version, files in version_files(store, ARTIFACTS_PREFIX).items()}
    found = (_complete(store, version, files, problems) for version, files in sorted(present.items()))
    return {complete.version: complete for complete in found if complete is not None}


def complete_version(store: ArtifactStore, version: str, problems: list[str] | None = None) -> CompleteVersion | None:
    """One version, if it is complete (as `complete_versions` decides, from a listing of that version only)."""
    if not _VERSION.match(version):
        return None
    prefix = version_prefix(version) + "/"
    files = {info.key[len(prefix):]: (info.last_modified, info.size) for info in store.list(prefix)}
    return _complete(store, version, files, problems)


def _complete(store: ArtifactStore, version: str, files: Mapping[str, tuple[datetime, int]],
              problems: list[str] | None) -> CompleteVersion | None:
    if MANIFEST not in files or not _VERSION.match(version):
        return None
    key = join_key(version_prefix(version), MANIFEST)
    try:
        manifest = store.read_json(key)
    except (ValueError, ArtifactNotFoundError) as exc:
        if problems is not None:
            problems.append(f"{store.uri(key)} is not readable: {exc}")
        return None
    if not isinstance(manifest, dict):
        if problems is not None:
            problems.append(f"{store.uri(key)} is not a JSON object")
        return None
    listed = listed_files(manifest)
    if not (listed and set(listed) <= set(files) and ITEM_FILE in listed and USER_FILE in listed):
        return None
    relevant = sorted({*listed, MANIFEST})
    completed_at = max(files[name][0] for name in relevant)
    signature = sha256_hex(json.dumps(
        [manifest, [(name, files[name][1], files[name][0].isoformat()) for name in relevant]],
        sort_keys=True, default=str).encode())
    return CompleteVersion(version, manifest, completed_at, signature)


def manifest_number(section: Mapping[str, Any], field: str, uri: str, prefix: str = "") -> int | None:
    """A whole number from a manifest, None when absent; a clear error naming the field when malformed."""
    value = section.get(field) if isinstance(section, Mapping) else None
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).isdigit():
        raise EmbeddingsFileError(f"{uri}: field {prefix}{field} must be a whole number, not {value!r}")
    return int(value)


def read_embeddings(store: ArtifactStore, version: str, manifest: Mapping[str, Any], relative: str) -> EmbeddingRows:
    """One embeddings file of a version, checked against its manifest (checksum, dimension, row count)."""
    uri = store.uri(join_key(version_prefix(version), relative))
    data = read_verified(store, ARTIFACTS_PREFIX, {**manifest, "version": version}, relative,
                         error=EmbeddingsFileError, what="embeddings file")
    manifest_uri = store.uri(join_key(version_prefix(version), MANIFEST))
    dimension = manifest_number(manifest, "dimension", manifest_uri)
    rows = parse_embeddings_csv(data, uri, dimension=dimension, integer_ids=relative == USER_FILE)
    counts = manifest.get("rows") or {}
    expected = manifest_number(counts, ROW_KEYS.get(relative, ""), manifest_uri, prefix="rows.")
    if expected is not None and len(rows) != expected:
        raise EmbeddingsFileError(f"{uri}: {len(rows)} rows, but the manifest of version {version} says {expected}")
    return rows
