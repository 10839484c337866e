"""Embeddings CSVs in the lab's layout: parsing, and errors that name the file and line."""

import numpy as np
import pytest

from recsys_assets.embeddings import (
    ITEM_FILE,
    USER_FILE,
    EmbeddingsFileError,
    complete_versions,
    parse_embeddings_csv,
    read_embeddings,
)
from recsys_assets.model_code.two_tower import embeddings_csv


def vectors(n, dim=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_round_trip_quoted_and_unquoted():
    data = embeddings_csv(["S10_1678", "S10_1949"], vectors(2)).encode()
    rows = parse_embeddings_csv(data, "items.csv")
    assert rows.ids.tolist() == ["S10_1678", "S10_1949"] and rows.dimension == 4
    assert np.allclose(rows.vectors, vectors(2), atol=1e-6)
    unquoted = b"id,embedding\n103,[0.5,1,2,3]\n112,[1e-3,-2,0,7]\n"
    users = parse_embeddings_csv(unquoted, "users.csv", integer_ids=True, dimension=4)
    assert users.ids.dtype == np.int64 and users.ids.tolist() == [103, 112]


@pytest.mark.parametrize(
    "body, message",
    [
        ("id,vector\n1,[1,2]\n", r"f\.csv, line 1: expected the header 'id,embedding'"),
        ("id,embedding\n1,[1,2]\n2,[1,2,3]\n", r"f\.csv, line 3: embedding has 3 values, expected dimension 2"),
        ("id,embedding\n1,[1,2]\n2,[1,nan]\n", r"f\.csv, line 3: embedding contains NaN or infinity"),
        ("id,embedding\n1,[1,2]\n2,[inf,2]\n", r"f\.csv, line 3: embedding contains NaN or infinity"),
        ("id,embedding\n1,[1,2]\n\n1,[3,4]\n", r"f\.csv, line 4: duplicate id '1' \(first on line 2\)"),
        ("id,embedding\n1,[1,2]\n2,[1,abc]\n", r"f\.csv, line 3: unparsable value 'abc'"),
        ("id,embedding\n1,1 2\n", r"f\.csv, line 2: embedding is not a vector"),
        ('id,embedding\n,"[1,2]"\n', r"f\.csv, line 2: expected 'id,embedding'"),
    ],
)
def test_bad_files_name_file_and_line(body, message):
    with pytest.raises(EmbeddingsFileError, match=message):
        parse_embeddings_csv(body.encode(), "f.csv")


def test_user_ids_must_be_integers():
    with pytest.raises(EmbeddingsFileError, match=r"u\.csv, line 2: id 'abc' is not an integer"):
        parse_embeddings_csv(b"id,embedding\nabc,[1,2]\n", "u.csv", integer_ids=True)


def publish(store, version, items=3, users=2, dim=4, manifest_files=None, rows=None, skip=()):
    files = {ITEM_FILE: embeddings_csv([f"S{i}" for i in range(items)], vectors(items, dim)),
             USER_FILE: embeddings_csv(list(range(100, 100 + users)), vectors(users, dim, 1))}
    for name, text in files.items():
        if name not in skip:
            store.write_text(f"ml-artifacts/{version}/{name}", text)
    manifest = {"version": version, "dimension": dim, "files": manifest_files or list(files)}
    if rows:
        manifest["rows"] = rows
    store.write_json(f"ml-artifacts/{version}/manifest.json", manifest)


def test_complete_versions_need_every_listed_file(local_artifacts):
    publish(local_artifacts, "b-2", skip=(USER_FILE,))      # manifest first, a file still missing
    publish(local_artifacts, "a-1")
    local_artifacts.write_text("ml-artifacts/c-3/embeddings/item_embeddings.csv", "id,embedding\n")  # no manifest
    assert set(complete_versions(local_artifacts)) == {"a-1"}
    local_artifacts.write_text(f"ml-artifacts/b-2/{USER_FILE}", embeddings_csv([1], vectors(1)))
    found = complete_versions(local_artifacts)
    assert set(found) == {"a-1", "b-2"}
    assert found["b-2"].published_at > found["a-1"].published_at  # complete when its last file arrived


def test_malformed_manifest_numbers_are_named(local_artifacts):
    publish(local_artifacts, "v2", rows={"item_embeddings": "three", "user_embeddings": 2})
    manifest = complete_versions(local_artifacts)["v2"].manifest
    with pytest.raises(EmbeddingsFileError, match=r"v2/manifest\.json: field rows\.item_embeddings must be a whole number"):
        read_embeddings(local_artifacts, "v2", manifest, ITEM_FILE)


def test_row_counts_and_checksums_are_checked(local_artifacts):
    publish(local_artifacts, "v1", rows={"item_embeddings": 5, "user_embeddings": 2})
    manifest = complete_versions(local_artifacts)["v1"].manifest
    with pytest.raises(EmbeddingsFileError, match=r"item_embeddings\.csv: 3 rows, but the manifest of version v1 says 5"):
        read_embeddings(local_artifacts, "v1", manifest, ITEM_FILE)
    assert len(read_embeddings(local_artifacts, "v1", manifest, USER_FILE)) == 2
    manifest = {**manifest, "files": {ITEM_FILE: {"sha256": "0" * 64}, USER_FILE: {}}}
    with pytest.raises(EmbeddingsFileError, match="does not match the SHA-256"):
        read_embeddings(local_artifacts, "v1", manifest, ITEM_FILE)
