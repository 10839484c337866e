"""Versioned model artifacts in the artifact store: `<prefix>/<version>/...` completed by `manifest.json`.

A version is published file by file and its manifest is written last, listing every file with its size
and SHA-256; a version without a manifest is incomplete and invisible to readers. Loading verifies each
file against the manifest, so a truncated or swapped file fails with an error naming it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resources.artifact_keys import ArtifactNotFoundError, join_key

if TYPE_CHECKING:  # the stores are Dagster resources; this module stays light for the Lambda and the API
    from resources.artifacts import ArtifactInfo, ArtifactStore

MANIFEST = "manifest.json"


class ModelArtifactError(RuntimeError):
    """A model version is missing, incomplete or corrupt; the message names the version and file."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version(run_id: str, now: datetime | None = None) -> str:
    """Sortable, unique version names: UTC time plus the first 8 characters of the Dagster run id."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{run_id[:8]}"


def publish_version(
    store: ArtifactStore,
    prefix: str,
    version: str,
    files: Mapping[str, bytes | Path],
    manifest: Mapping[str, Any],
) -> dict[str, Any]:
    """Upload `files` (name -> content or local path) under `prefix/version/`, then the manifest."""
    entries = {}
    for name, content in files.items():
        data = Path(content).read_bytes() if isinstance(content, Path) else content
        store.write_bytes(join_key(prefix, version, name), data)
        entries[name] = {"sha256": sha256_hex(data), "bytes": len(data)}
    document = {
        **manifest,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "files": entries,
    }
    store.write_json(join_key(prefix, version, MANIFEST), document)
    return document


def version_files(store: ArtifactStore, prefix: str) -> dict[str, dict[str, ArtifactInfo]]:
    """Every version folder under `prefix` with its files ({version: {relative path: info}}), from one listing:
    what each reader of versions decides completeness from."""
    root = prefix.rstrip("/") + "/"
    found: dict[str, dict[str, ArtifactInfo]] = {}
    for info in store.list(root):
        version, _, relative = info.key[len(root):].partition("/")
        if relative:
            found.setdefault(version, {})[relative] = info
    return found


def list_versions(store: ArtifactStore, prefix: str) -> list[str]:
    """Complete versions (those with a manifest), oldest first."""
    return sorted(version for version, files in version_files(store, prefix).items() if MANIFEST in files)


def read_manifest(store: ArtifactStore, prefix: str, version: str | None = None) -> dict[str, Any]:
    """The manifest of `version`, or of the newest complete version when None."""
    if version is None:
        versions = list_versions(store, prefix)
        if not versions:
            raise ModelArtifactError(f"no model version has been published under {store.uri(prefix)} yet")
        version = versions[-1]
    key = join_key(prefix, version, MANIFEST)
    try:
        raw = store.read_bytes(key)
    except ArtifactNotFoundError:
        raise ModelArtifactError(f"model version {version} is missing or incomplete: no {store.uri(key)}") from None
    return parse_manifest(raw, store.uri(key), version)


def parse_manifest(raw: bytes, uri: str, version: str, error: type[Exception] = ModelArtifactError, *,
                   plain_list: bool = False) -> dict[str, Any]:
    """A version's manifest from its bytes (`uri` names it in errors): a JSON object whose `files` maps each
    file to its SHA-256 and size, as `publish_version` writes it; `plain_list`: the recommender lab's plain
    list of names (no digests) is accepted too, for the versions published by hand under `ml-artifacts/`."""
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"model version {version}: {uri} is not valid JSON ({exc})") from None
    listings = (dict, list) if plain_list else (dict,)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), listings):
        raise error(f"{uri} is not a model manifest (no 'files' {'listing' if plain_list else 'with their digests'})")
    manifest.setdefault("version", version)
    return manifest


def listed_files(manifest: Mapping[str, Any]) -> dict[str, dict]:
    """The manifest's files as {relative path: {sha256?, bytes?}} (the lab's plain list is accepted too)."""
    files = manifest.get("files")
    if isinstance(files, list):
        return {str(name): {} for name in files}
    if isinstance(files, dict):
        return {str(name): (entry if isinstance(entry, dict) else {}) for name, entry in files.items()}
    return {}


def checked(manifest: Mapping[str, Any], name: str, data: bytes, uri: str, *,
            error: type[Exception] = ModelArtifactError, what: str = "model artifact") -> bytes:
    """`data`, read from `uri`, if it is the file `name` its manifest lists with this SHA-256; `error` otherwise.
    (The recommender lab's plain-list manifests record no digests: their files are checked for being listed.)"""
    version = manifest["version"]
    entry = listed_files(manifest).get(name)
    if entry is None:
        raise error(f"version {version} does not list {name} in its manifest")
    expected = entry.get("sha256")
    if expected and sha256_hex(data) != expected:
        raise error(
            f"{what} {uri} is corrupt: its content does not match the SHA-256 in the manifest "
            f"({len(data)} bytes with {sha256_hex(data)[:12]}..., the manifest records {entry.get('bytes')} bytes "
            f"with {expected[:12]}...)"
        )
    return data


def read_verified(store: ArtifactStore, prefix: str, manifest: Mapping[str, Any], name: str, *,
                  error: type[Exception] = ModelArtifactError, what: str = "model artifact") -> bytes:
    """A file of a version (`manifest["version"]`), checked against the SHA-256 its manifest records; `error`
    (naming the file's URI) when it is not listed, missing or corrupt. Every versioned artifact is read so."""
    version = manifest["version"]
    key = join_key(prefix, version, name)
    if name not in listed_files(manifest):
        raise error(f"version {version} does not list {name} in its manifest")
    try:
        data = store.read_bytes(key)
    except ArtifactNotFoundError:
        raise error(f"{what} {store.uri(key)} is missing (listed in the manifest of version {version})") from None
    return checked(manifest, name, data, store.uri(key), error=error, what=what)


def verified_reader(read: Callable[[str], bytes], version: str, where: str, *,
                    error: type[Exception] = ModelArtifactError,
                    what: str = "model artifact") -> Callable[[str], bytes]:
    """`read(name)` (the bytes of `<where>/<name>`, `ArtifactNotFoundError` when absent) for the readers that
    hold no store (the Lambda, the recommendations API): the version's manifest is read first; of a manifest
    with digests (the platform's), a file it does not list counts as absent (`ArtifactNotFoundError`) and
    every file is checked against its SHA-256 (`error` when corrupt). The recommender lab's plain list of names
    records no digests: its version's files are read as they are. A version without a manifest is
    incomplete: `error`."""
    try:
        manifest = parse_manifest(read(MANIFEST), f"{where}/{MANIFEST}", version, error, plain_list=True)
    except ArtifactNotFoundError:
        raise error(f"model version {version} is missing or incomplete: no {where}/{MANIFEST}") from None
    if isinstance(manifest["files"], list):  # nothing to check a file against: the lab's form, published by hand
        return read

    def read_checked(name: str) -> bytes:
        if name not in listed_files(manifest):
            raise ArtifactNotFoundError(f"{where}/{name} is not listed in the manifest of version {version}")
        return checked(manifest, name, read(name), f"{where}/{name}", error=error, what=what)

    return read_checked
