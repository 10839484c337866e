"""Artifact keys and URIs, and reading one artifact, without Dagster, pandas or pyarrow (the Firehose Lambda
reads its model files through this module; `resources.artifacts` builds the stores on the same rules)."""

from __future__ import annotations

from pathlib import Path


class ArtifactNotFoundError(FileNotFoundError):
    """No object at that key; the message carries the full URI."""


def clean_key(key: str) -> str:
    """Validate a store key: relative, '/'-separated, no '..' or empty parts."""
    if not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid artifact key {key!r}: keys are relative '/'-separated paths")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid artifact key {key!r}: empty, '.' and '..' parts are not allowed")
    return key


def join_key(*parts: str) -> str:
    return clean_key("/".join(p.strip("/") for p in parts if p and p.strip("/")))


# The recommender lab's layout: each model version's files under ml-artifacts/<version>/
MODEL_VERSIONS_PREFIX = "ml-artifacts"


def version_prefix(version: str) -> str:
    return join_key(MODEL_VERSIONS_PREFIX, version)


def parse_artifacts_uri(uri: str) -> tuple[str, str, str]:
    """('file', path, '') or ('s3', bucket, prefix) for an `ARTIFACTS_URI` value."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"ARTIFACTS_URI {uri!r} names no bucket")
        return "s3", bucket, prefix.strip("/")
    if uri.startswith("file://"):
        return "file", uri[len("file://"):], ""
    if "://" in uri:
        raise ValueError(f"ARTIFACTS_URI {uri!r}: only s3:// URIs and local paths are supported")
    return "file", uri, ""


class ArtifactTooLarge(ValueError):
    """An artifact over the size its reader accepts; the message names its URI and size."""


def read_artifact(artifacts_uri: str, key: str, *, region_name: str | None = None, endpoint_url: str | None = None,
                  client=None, max_bytes: int | None = None) -> bytes:
    """The bytes at `key` under `ARTIFACTS_URI` (a local folder or `s3://bucket/prefix`), as
    `ArtifactStore.read_bytes` reads them; `ArtifactNotFoundError` names the full URI. `client`: an S3 client
    to reuse between reads (without one, a client for `region_name` and `endpoint_url` is made). `max_bytes`: a larger object is refused (`ArtifactTooLarge`) before it is read."""
    kind, location, prefix = parse_artifacts_uri(artifacts_uri)
    key = clean_key(key)

    def refuse_over_limit(size: int, where: str) -> None:
        if max_bytes is not None and size > max_bytes:
            raise ArtifactTooLarge(f"{where} holds {size:,} bytes, over the {max_bytes:,} its reader accepts")

    if kind == "file":
        path = Path(location).expanduser() / key
        try:
            refuse_over_limit(path.stat().st_size, str(path))
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"no artifact at {path}") from None
    if client is None:
        from resources.aws_clients import aws_client

        client = aws_client("s3", region_name=region_name, endpoint_url=endpoint_url)
    full_key = join_key(prefix, key) if prefix else key
    try:
        response = client.get_object(Bucket=location, Key=full_key)
    except client.exceptions.NoSuchKey:
        raise ArtifactNotFoundError(f"no artifact at s3://{location}/{full_key}") from None
    try:
        refuse_over_limit(int(response.get("ContentLength") or 0), f"s3://{location}/{full_key}")
        return response["Body"].read()
    finally:
        response["Body"].close()
