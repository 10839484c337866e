"""The artifact store on a local folder and on S3 (moto's server): same behaviour through one interface."""

import os

import pandas as pd
import pytest

from resources.artifacts import ArtifactNotFoundError, join_key, parse_artifacts_uri, schema_metadata


@pytest.fixture(params=["local", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_artifacts")


def test_bytes_json_and_listing(store):
    assert store.write_bytes("models/v1/model.pt", b"\x00weights").endswith("models/v1/model.pt")
    store.write_json("models/v1/manifest.json", {"version": "v1", "rows": 3})
    store.write_text("models/v10/notes.txt", "ten")
    store.write_text("modelsextra.txt", "not in the folder")
    assert store.read_bytes("models/v1/model.pt") == b"\x00weights"
    assert store.read_json("models/v1/manifest.json") == {"version": "v1", "rows": 3}
    assert store.exists("models/v1/model.pt") and not store.exists("models/v2/model.pt")
    keys = [info.key for info in store.list("models/")]
    assert keys == ["models/v1/manifest.json", "models/v1/model.pt", "models/v10/notes.txt"]
    assert [info.key for info in store.list("models/v1/")] == ["models/v1/manifest.json", "models/v1/model.pt"]
    assert store.list("models/v1/")[1].size == len(b"\x00weights")


def test_overwrite_delete_and_prefix_delete(store):
    store.write_text("a/1.txt", "one")
    store.write_text("a/1.txt", "uno")
    store.write_text("a/2.txt", "two")
    store.write_text("b/3.txt", "three")
    assert store.read_text("a/1.txt") == "uno"
    assert store.delete_prefix("a/") == 2
    assert [i.key for i in store.list("")] == ["b/3.txt"]


def test_parquet_round_trip_with_metadata(store):
    frame = pd.DataFrame({"customer_id": [1, 2], "score": [640, 655], "reason": ["x", None]})
    store.write_parquet("credit/scores.parquet", frame, metadata={"batch_id": "run-1"})
    assert store.read_parquet("credit/scores.parquet").equals(frame)
    assert schema_metadata(store.read_parquet_table("credit/scores.parquet").schema) == {"batch_id": "run-1"}
    assert store.read_parquet("credit/scores.parquet", columns=["score"]).columns.tolist() == ["score"]


def test_missing_and_corrupt_objects_name_the_uri(store):
    with pytest.raises(ArtifactNotFoundError, match=r"no artifact at .*nothing/here\.json"):
        store.read_json("nothing/here.json")
    store.write_bytes("broken.json", b"{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        store.read_json("broken.json")
    store.write_bytes("broken.parquet", b"PAR1garbage")
    with pytest.raises(ValueError, match=r"broken\.parquet is not a readable Parquet file"):
        store.read_parquet("broken.parquet")


def test_directories_upload_and_download(store, tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.csv").write_text("1\n")
    (source / "sub" / "b.csv").write_text("2\n")
    assert store.upload_dir(source, "channel/train") == ["channel/train/a.csv", "channel/train/sub/b.csv"]
    target = tmp_path / "dst"
    store.download_prefix("channel/train", target)
    assert (target / "sub" / "b.csv").read_text() == "2\n"
    assert store.key_from_uri(store.uri("channel/train/a.csv")) == "channel/train/a.csv"
    with pytest.raises(ValueError, match="outside the artifact store"):
        store.key_from_uri("s3://elsewhere/x")


def test_move_replaces_the_target_removes_the_source_and_digests_the_content(store):
    store.write_bytes("stage/a.parquet", b"first")
    store.write_bytes("stage/b.parquet", b"first")
    store.write_bytes("final/x.parquet", b"older content")
    digest = store.move("stage/a.parquet", "final/x.parquet")
    assert store.read_bytes("final/x.parquet") == b"first" and not store.exists("stage/a.parquet")
    assert store.move("stage/b.parquet", "final/y.parquet") == digest  # the same bytes, the same digest
    store.write_bytes("stage/c.parquet", b"other")
    assert store.move("stage/c.parquet", "final/z.parquet") != digest
    with pytest.raises(ArtifactNotFoundError, match="stage/a.parquet"):
        store.move("stage/a.parquet", "final/w.parquet")
    assert not store.exists("final/w.parquet")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "./a", "a\\b"])
def test_unsafe_keys_are_rejected(local_artifacts, key):
    with pytest.raises(ValueError, match="invalid artifact key"):
        local_artifacts.write_bytes(key, b"x")


def test_local_writes_leave_no_temporary_files(local_artifacts):
    for i in range(5):
        local_artifacts.write_bytes("x/data.bin", bytes([i]) * 100)
    assert os.listdir(local_artifacts.local_path("x")) == ["data.bin"]


def test_s3_objects_live_under_the_prefix(s3_artifacts, boto_client):
    s3_artifacts.write_text("k/v.txt", "x")
    listed = boto_client("s3").list_objects_v2(Bucket="ml-artifacts")["Contents"]
    assert [o["Key"] for o in listed] == ["platform/k/v.txt"]
    assert s3_artifacts.uri("k/v.txt") == "s3://ml-artifacts/platform/k/v.txt"


def test_parse_artifacts_uri():
    assert parse_artifacts_uri("s3://bucket/a/b/") == ("s3", "bucket", "a/b")
    assert parse_artifacts_uri("/data/artifacts") == ("file", "/data/artifacts", "")
    assert parse_artifacts_uri("file:///data/x") == ("file", "/data/x", "")
    assert join_key("a/", "/b", "", "c") == "a/b/c"
