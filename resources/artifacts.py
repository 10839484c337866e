"""Object storage for models, datasets and reports (`ARTIFACTS_URI`): a local folder or S3.

Keys are '/'-separated paths relative to the store's root (`credit/models/<version>/manifest.json`).
Writes are atomic enough for readers that poll: locally a file is written beside its target and renamed
over it; on S3 every object is one PUT, which S3 makes visible all at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_aws.s3 import S3Resource

from resources.artifact_keys import (  # noqa: F401  (re-exported: the platform's callers import them from here)
    ArtifactNotFoundError,
    clean_key,
    join_key,
    parse_artifacts_uri,
    read_artifact,
)


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    size: int
    last_modified: datetime


class ArtifactStore(dg.ConfigurableResource, ABC):
    """Bytes, JSON and Parquet objects under one root, listed by prefix."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """The full URI of `key` (`file:///...` or `s3://bucket/...`)."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> str:
        """Store `data` at `key` atomically; returns the URI.

        `durable=False` skips the per-object flush to stable storage for bulk writes that end with one
        `sync()` before their commit marker (a manifest) is written.
        """

    def sync(self) -> None:
        """Make every write so far durable (a no-op where each write already is)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content; `ArtifactNotFoundError` naming the URI when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[ArtifactInfo]:
        """Objects whose key starts with `prefix` (a folder prefix should end in '/'), sorted by key."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> int:
        """Delete the given keys (missing ones are ignored); returns how many were given."""

    @abstractmethod
    def upload_file(self, key: str, path: Path) -> str: ...

    @abstractmethod
    def move(self, source: str, target: str) -> str:
        """Move the object at `source` to `target` (replacing it) without passing its bytes through this
        process where the store allows; returns a digest of its content: SHA-256 on a local store, the ETag
        on S3 (the same bytes give the same digest within one store)."""

    @abstractmethod
    def download_file(self, key: str, path: Path) -> Path: ...

    def key_from_uri(self, uri: str) -> str:
        """The key of a URI inside this store; ValueError when the URI is elsewhere."""
        root = self.uri("").rstrip("/") + "/"
        if not uri.startswith(root):
            raise ValueError(f"{uri} is outside the artifact store {root}")
        return clean_key(uri[len(root):])

    # --- conveniences built on the primitives -------------------------------------------------------

    def write_text(self, key: str, text: str) -> str:
        return self.write_bytes(key, text.encode("utf-8"))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_json(self, key: str, payload: Any) -> str:
        return self.write_bytes(key, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_json(self, key: str) -> Any:
        raw = self.read_bytes(key)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.uri(key)} is not valid JSON (line {exc.lineno}: {exc.msg})") from None

    def write_parquet(self, key: str, frame: pd.DataFrame | pa.Table, metadata: dict[str, str] | None = None) -> str:
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        if metadata:
            merged = dict(table.schema.metadata or {})
            merged.update({k.encode(): v.encode() for k, v in metadata.items()})
            table = table.replace_schema_metadata(merged)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return self.write_bytes(key, sink.getvalue())

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pd.DataFrame:
        return self.read_parquet_table(key, columns=columns).to_pandas()

    def read_parquet_table(self, key: str, columns: list[str] | None = None) -> pa.Table:
        raw = self.read_bytes(key)
        try:
            return pq.read_table(io.BytesIO(raw), columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{self.uri(key)} is not a readable Parquet file: {exc}") from None

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        self.delete(keys)
        return len(keys)

    def upload_dir(self, directory: Path, prefix: str) -> list[str]:
        """Upload every file under `directory` to `prefix/<relative path>`; returns the keys."""
        keys = []
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                key = join_key(prefix, path.relative_to(directory).as_posix())
                self.upload_file(key, path)
                keys.append(key)
        return keys

    def download_prefix(self, prefix: str, directory: Path) -> list[Path]:
        """Download every object under `prefix` into `directory`, keeping relative paths."""
        prefix = prefix.rstrip("/") + "/"
        paths = []
        for info in self.list(prefix):
            target = Path(directory) / info.key[len(prefix):]
            paths.append(self.download_file(info.key, target))
        return paths


class LocalArtifactStore(ArtifactStore):
    """A folder on this machine (the default: `DATA_DIR/artifacts`)."""

    root: str

    def _path(self, key: str) -> Path:
        return Path(self.root) / clean_key(key)

    def uri(self, key: str = "") -> str:
        base = Path(self.root).resolve().as_uri()
        return f"{base}/{clean_key(key)}" if key else base

    def local_path(self, key: str) -> Path:
        """Where `key` lives on disk (local store only)."""
        return self._path(key)

    def _replace(self, key: str, fill) -> str:
        """Write through `fill(temporary path)` beside the target, then rename over it (atomic on POSIX)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            fill(temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        return self.uri(key)

    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> str:
        def fill(path: Path) -> None:
            with open(path, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())

        return self._replace(key, fill)

    def sync(self) -> None:
        os.sync()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ArtifactNotFoundError(f"no artifact at {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ArtifactInfo]:
        root = Path(self.root)
        if not root.exists():
            return []
        # Walk only the folder the prefix names, then filter by the full prefix string.
        folder = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not folder.is_dir():
            return []
        found = []
        for dirpath, _dirnames, filenames in os.walk(folder):
            for name in filenames:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # an in-flight atomic write
                path = Path(dirpath) / name
                key = path.relative_to(root).as_posix()
                if key.startswith(prefix):
                    try:
                        stat = path.stat()
                    except FileNotFoundError:  # removed since the folder was read (another process's delete)
                        continue
                    found.append(
                        ArtifactInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc))
                    )
        return sorted(found, key=lambda info: info.key)

    def delete(self, keys: Iterable[str]) -> int:
        count = 0
        for key in keys:
            self._path(key).unlink(missing_ok=True)
            count += 1
        return count

    def upload_file(self, key: str, path: Path) -> str:
        return self._replace(key, lambda temporary: shutil.copyfile(path, temporary))

    def move(self, source: str, target: str) -> str:
        origin, destination = self._path(source), self._path(target)
        if not origin.is_file():
            raise ArtifactNotFoundError(f"no artifact at {self.uri(source)}")
        digest = hashlib.sha256()
        with open(origin, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(origin, destination)  # same file system: a rename
        return digest.hexdigest()

    def download_file(self, key: str, path: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise ArtifactNotFoundError(f"no artifact at {self.uri(key)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        return path


class S3ArtifactStore(ArtifactStore):
    """`s3://bucket/prefix` through dagster-aws's `S3Resource` (`AWS_ENDPOINT_URL` for S3-compatible servers)."""

    bucket: str
    prefix: str = ""
    s3: S3Resource
    _s3_client: Any = PrivateAttr(default=None)
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _key(self, key: str) -> str:
        return join_key(self.prefix, clean_key(key)) if self.prefix else clean_key(key)

    def _client(self):
        """One boto3 client per store (thread-safe; building one takes a fifth of a second, which a
        hundred-file listing or move would otherwise pay per file)."""
        with self._client_lock:
            if self._s3_client is None:
                self._s3_client = self.s3.get_client()
            return self._s3_client

    def uri(self, key: str = "") -> str:
        base = f"s3://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")
        return f"{base}/{clean_key(key)}" if key else base

    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> str:
        self._client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)  # durable once acknowledged
        return self.uri(key)

    def read_bytes(self, key: str) -> bytes:
        return read_artifact(self.uri(), key, client=self._client())

    def exists(self, key: str) -> bool:
        client = self._client()
        try:
            client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def iter_objects(self, prefix: str = "") -> Iterator[dict]:
        """Raw S3 object summaries under `prefix` (keys relative to the store's prefix), listed with
        dagster-aws's `get_objects` (every page, no key-order or timestamp cursor)."""
        from dagster_aws.s3.sensor import get_objects

        root = self.prefix.strip("/")
        full_prefix = f"{root}/{prefix}" if root else prefix
        strip = len(root) + 1 if root else 0
        for obj in get_objects(self.bucket, prefix=full_prefix, client=self._client()):
            yield {**obj, "Key": obj["Key"][strip:]}

    def list(self, prefix: str = "") -> list[ArtifactInfo]:
        found = [ArtifactInfo(obj["Key"], int(obj["Size"]), obj["LastModified"]) for obj in self.iter_objects(prefix)]
        return sorted(found, key=lambda info: info.key)

    def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        client = self._client()
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            response = client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(f"could not delete {len(errors)} object(s) from s3://{self.bucket}, e.g. "
                              f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip())
        return len(keys)

    def upload_file(self, key: str, path: Path) -> str:
        self._client().upload_file(str(path), self.bucket, self._key(key))
        return self.uri(key)

    def move(self, source: str, target: str) -> str:
        client = self._client()
        try:
            # a server-side copy (objects up to 5 GB: one customer's ratings file), then the source removed
            copied = client.copy_object(Bucket=self.bucket, Key=self._key(target),
                                        CopySource={"Bucket": self.bucket, "Key": self._key(source)})
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise ArtifactNotFoundError(f"no artifact at {self.uri(source)}") from None
            raise
        client.delete_object(Bucket=self.bucket, Key=self._key(source))
        return copied["CopyObjectResult"]["ETag"].strip('"')

    def download_file(self, key: str, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        client = self._client()
        try:
            client.download_file(self.bucket, self._key(key), str(path))
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise ArtifactNotFoundError(f"no artifact at {self.uri(key)}") from None
            raise
        return path


def schema_metadata(schema: pa.Schema) -> dict[str, str]:
    """The key/value metadata written with `write_parquet` (pandas' own entry left out)."""
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items() if not k.startswith(b"pandas")}


def scratch_dir(prefix: str) -> Path:
    """A private temporary folder (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=f"mldp-{prefix}-"))
