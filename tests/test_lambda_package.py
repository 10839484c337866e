"""The Firehose transformation Lambda as it is deployed: its package built by `deploy/lambda/build.py` from
the pinned requirements, under Lambda's 250 MB, and its handler run from that folder alone in a fresh
interpreter (no site-packages, no project on the path), on the lab's real stream record, with the model
files on moto's S3 and the read-only database user's credentials in moto's Secrets Manager.

Also: the numpy user tower gives the torch tower's embeddings, and a model version without the numpy export
is refused by the Lambda with a message naming the file.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from psycopg.conninfo import conninfo_to_dict

from benchmarks.harness import publish_and_load, training_frame
from recsys_assets import stream_archive
from recsys_assets.enrichment import UserTowerUnavailable, enrich_batch
from recsys_assets.model_code import numpy_tower
from recsys_assets.model_code import two_tower as tt
from resources.pgvector import PgVectorStore
from resources.readonly import provision_readonly_role
from resources.settings import PROJECT_ROOT
from resources.vector_queries import ReadOnlyNearestItems
from tests.recsys_support import GOOD

BUILD = PROJECT_ROOT / "deploy" / "lambda" / "build.py"
RUNNING_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
FORBIDDEN = ("dagster", "pandas", "torch", "pyarrow", "pydantic", "sqlalchemy", "sagemaker", "credit_assets",
             "mlops_assets", "platform_cli")


def build(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILD), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> dict:
    """The deployment package, built for this interpreter's Python so the test can run it (the template's
    runtime is python3.12: tests/test_deploy.py builds that one through `mldp deploy up` and checks it)."""
    result = build(tmp_path_factory.mktemp("lambda"), "--python-version", RUNNING_PYTHON)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_package_is_under_the_limit_and_its_zip_holds_the_folder(package):
    folder, archive = Path(package["folder"]), Path(package["package"])
    assert package["unzipped_bytes"] < package["limit_unzipped_bytes"] == 250 * 1024 * 1024
    assert package["unzipped_bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    with zipfile.ZipFile(archive) as bundle:
        names = set(bundle.namelist())
        assert sum(info.file_size for info in bundle.infolist()) == package["unzipped_bytes"]
    assert names == {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "recsys_assets/lambda_handler.py" in names and "resources/vector_queries.py" in names
    top = {name.split("/")[0] for name in names}
    assert not top & set(FORBIDDEN), top & set(FORBIDDEN)  # nothing of Dagster, pandas or torch is shipped


def test_a_package_over_the_limit_fails_loudly_and_leaves_no_zip(tmp_path):
    result = build(tmp_path, "--python-version", RUNNING_PYTHON, "--limit-bytes", str(20 * 1024 * 1024))
    assert result.returncode != 0
    assert "over Lambda's limit of 21.0 MB" in result.stderr and "numpy" in result.stderr, result.stderr
    assert not (tmp_path / "enrichment-lambda.zip").exists()
    assert not list(tmp_path.glob("*.zip*"))


# --- the numpy tower ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(datasets_dir):
    frame = training_frame(datasets_dir)
    # a small factor penalty, so that the customers' id vectors are far from zero
    fitted = tt.fit(frame, tt.Hyperparameters(epochs=15, factor_l2=(3.0,)), seed=3)
    return {"frame": frame, "fitted": fitted, "user_scaler": fitted.user_scaler, "item_scaler": fitted.item_scaler}


def numpy_rows(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict("records")]


def test_the_numpy_tower_gives_the_torch_towers_embeddings(trained, tmp_path):
    fitted, scaler, frame = trained["fitted"], trained["user_scaler"], trained["frame"]
    export = json.loads(json.dumps(tt.export_user_tower(fitted)))  # through its JSON file form
    tower = numpy_tower.NumpyUserTower(export, scaler)
    customers = frame.drop_duplicates(tt.USER_ID)[[tt.USER_ID, *tt.USER_CATEGORICAL, *tt.USER_NUMERIC]]
    moved = customers.head(3).assign(city="Atlantis", creditlimit=1.0)  # known customers with new features
    odd = pd.DataFrame({tt.USER_ID: [None, 999_999, None],  # new customers: no number, a number never seen
                        "city": ["Atlantis", customers["city"].iloc[0], None], "country": ["Nowhere", None, "USA"],
                        "creditlimit": [0.0, float("nan"), 1e9]})  # unseen values, missing values, extremes
    rows = pd.concat([customers, moved, odd], ignore_index=True)
    rows[tt.USER_ID] = rows[tt.USER_ID].astype(object)
    expected = fitted.user_vectors(rows)
    got = tower.embed(numpy_rows(rows))
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(rows), 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the published torch tower (what the serving container loads) gives them too
    files = tt.bundle_files(fitted, frame.drop_duplicates(tt.ITEM_ID), customers)
    for name in (tt.MODEL_FILE, tt.CONFIG_FILE, tt.USER_SCALER_FILE):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(files[name])
    published = tt.UserTower.load(tmp_path)
    np.testing.assert_allclose(published.embed(rows), expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(published.to_numpy().embed(numpy_rows(rows)), expected, rtol=0, atol=2e-6)
    # known customers get their learned vectors: the same features without the number embed otherwise
    anonymous = tower.embed(numpy_rows(customers.assign(**{tt.USER_ID: None})))
    assert np.abs(anonymous - got[:len(customers)]).max(axis=1).min() > 1e-3
    # ... and the embeddings file holds exactly what the towers give for the catalogue's customers
    lines = files[tt.USER_EMBEDDINGS_FILE].decode().splitlines()[1:]
    published_vectors = np.array([json.loads(line.split(",", 1)[1].strip('"')) for line in lines])
    in_order = customers.sort_values(tt.USER_ID)
    np.testing.assert_allclose(published_vectors, tower.embed(numpy_rows(in_order)), atol=1e-6)


def test_cosine_ranks_items_as_the_model_predicts(trained):
    """What pgvector does online (nearest items by cosine) orders each customer's items as the model's
    predicted ratings do, for known and new customers alike."""
    fitted, frame = trained["fitted"], trained["frame"]
    products = frame.drop_duplicates(tt.ITEM_ID).sort_values(tt.ITEM_ID)
    item_vectors, _norm = fitted.item_vectors(products)
    np.testing.assert_allclose(np.linalg.norm(item_vectors, axis=1), 1.0, atol=1e-5)
    customers = frame.drop_duplicates(tt.USER_ID).head(5)[[tt.USER_ID, *tt.USER_CATEGORICAL, *tt.USER_NUMERIC]]
    newcomer = customers.head(1).assign(**{tt.USER_ID: 999_999, "city": "Atlantis"})
    for _, customer in pd.concat([customers, newcomer]).iterrows():
        pairs = products.assign(**{name: customer[name] for name in customer.index})
        predicted = fitted.predict(pairs)
        cosine = item_vectors.astype(np.float64) @ fitted.user_vectors(pairs.head(1))[0]
        by_cosine = np.argsort(-cosine, kind="stable")
        assert np.all(np.diff(predicted[by_cosine]) <= 1e-5)  # nearest first = best predicted first (float32)
        assert np.ptp(predicted) > 0.1  # and there is an order to agree on


def test_a_legacy_export_is_still_read(trained):
    """Model versions published before the id vectors wrote format 1 (features -> MLP -> unit vector)."""
    rng = np.random.default_rng(0)
    width = trained["user_scaler"]["width"]
    layers = [(rng.normal(size=(64, width)), rng.normal(size=64)), (rng.normal(size=(32, 64)), rng.normal(size=32))]
    export = json.loads(json.dumps(numpy_tower.export_user_tower(layers, dim=32, hidden=64, legacy=True)))
    tower = numpy_tower.NumpyUserTower(export, trained["user_scaler"])
    rows = numpy_rows(trained["frame"].drop_duplicates(tt.USER_ID).head(4))
    x = numpy_tower.user_features(rows, trained["user_scaler"]).astype(np.float64)
    out = np.maximum(x @ layers[0][0].T + layers[0][1], 0) @ layers[1][0].T + layers[1][1]
    np.testing.assert_allclose(tower.embed(rows), out / np.linalg.norm(out, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.update(format=9), "unsupported export format 9"),
    (lambda e: e["layers"].pop(), "expected 2 layers, found 1"),
    (lambda e: e["layers"][0]["weight"][0].pop(), "layer 0 needs numeric 'weight' and 'bias' arrays"),
    (lambda e: e["layers"][1]["bias"].append(0.5), r"layer 1 has weight \(30, 64\) and bias \(31,\)"),
    (lambda e: e["layers"][1]["weight"][0].__setitem__(0, float("inf")), "layer 1 holds values that are not finite"),
    (lambda e: e.update(dim=16), "the tower gives 32 dimensions, its 'dim' says 16"),
    (lambda e: e.pop("known_customers"), "'known_customers' must be an object with 'ids' and 'vectors'"),
    (lambda e: e["known_customers"]["ids"].__setitem__(1, e["known_customers"]["ids"][0]), "repeat a customer number"),
    (lambda e: e["known_customers"]["ids"].__setitem__(0, "103"), "'ids' must be a list of whole numbers"),
    (lambda e: e["known_customers"]["vectors"][0].pop(), "need one vector of 30 numbers per id"),
    (lambda e: e["known_customers"]["vectors"][0].__setitem__(0, float("nan")), "vectors hold values that are not finite"),
])
def test_a_broken_export_is_refused_naming_the_file(trained, mutate, message):
    export = json.loads(json.dumps(tt.export_user_tower(trained["fitted"])))
    mutate(export)
    with pytest.raises(numpy_tower.TowerExportError, match=message) as raised:
        numpy_tower.NumpyUserTower(export, trained["user_scaler"], "s3://b/ml-artifacts/v1/model/user_tower.json")
    assert str(raised.value).startswith("s3://b/ml-artifacts/v1/model/user_tower.json: ")


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update(width=s["width"] + 1), "the scaler says width .* but its features make"),
    (lambda s: s["numeric"]["creditlimit"].update(std=0), "'creditlimit' has a standard deviation of 0"),
    (lambda s: s["numeric"]["creditlimit"].update(mean=float("nan")), "needs a finite numeric 'mean' and 'std'"),
    (lambda s: s["numeric"]["creditlimit"].update(std="2"), "needs a finite numeric 'mean' and 'std'"),
    (lambda s: s.pop("categorical"), "needs 'categorical' and 'numeric' objects"),
    (lambda s: s["categorical"].update(city="Paris"), "vocabulary of 'city' must be a list of strings"),
    (lambda s: s["categorical"]["city"].append(s["categorical"]["city"][0]), "vocabulary of 'city' repeats a value"),
])
def test_a_broken_scaler_is_refused_naming_the_file(trained, mutate, message):
    scaler = json.loads(json.dumps(trained["user_scaler"]))
    mutate(scaler)
    files = {numpy_tower.USER_TOWER_FILE: json.dumps(tt.export_user_tower(trained["fitted"])).encode(),
             numpy_tower.USER_SCALER_FILE: json.dumps(scaler).encode()}
    with pytest.raises(numpy_tower.TowerExportError, match=message) as raised:
        numpy_tower.NumpyUserTower.from_files(files, "s3://b/ml-artifacts/v1/model/user_tower.json")
    assert str(raised.value).startswith("s3://b/ml-artifacts/v1/scalers/user_features.json: ")


def test_hostile_export_files_are_refused_before_they_cost_memory(trained, monkeypatch):
    scaler = json.dumps(trained["user_scaler"]).encode()
    nested = b"[" * 100_000 + b"]" * 100_000
    for data, message in ((nested, "nested too deeply"), (b"{not json", "not JSON")):
        with pytest.raises(numpy_tower.TowerExportError, match=message):
            numpy_tower.NumpyUserTower.from_files({numpy_tower.USER_TOWER_FILE: data,
                                                   numpy_tower.USER_SCALER_FILE: scaler})
    monkeypatch.setattr(numpy_tower, "MAX_FILE_BYTES", 1000)
    with pytest.raises(numpy_tower.TowerExportError, match="over the 1,000 an export may have"):
        numpy_tower.NumpyUserTower.from_files({numpy_tower.USER_TOWER_FILE: b" " * 1001,
                                               numpy_tower.USER_SCALER_FILE: scaler})


def test_an_oversized_model_file_is_not_read(local_artifacts, s3_artifacts):
    from resources.artifact_keys import ArtifactTooLarge, read_artifact

    for store in (local_artifacts, s3_artifacts):
        store.write_bytes("ml-artifacts/v1/model/user_tower.json", b"x" * 5000)
        with pytest.raises(ArtifactTooLarge, match="holds 5,000 bytes, over the 4,096 its reader accepts"):
            read_artifact(store.uri(), "ml-artifacts/v1/model/user_tower.json", region_name="us-east-1",
                          endpoint_url=None if store is local_artifacts else s3_artifacts.s3.endpoint_url,
                          max_bytes=4096)
        assert read_artifact(store.uri(), "ml-artifacts/v1/model/user_tower.json", region_name="us-east-1",
                             endpoint_url=None if store is local_artifacts else s3_artifacts.s3.endpoint_url,
                             max_bytes=5000) == b"x" * 5000


def test_a_database_that_never_answers_fails_the_invocation_within_the_connect_timeout(monkeypatch, tmp_path):
    import socket
    import threading

    from recsys_assets import lambda_handler, live_model
    from resources.credentials import DatabaseUnavailableError

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections and never says a word
    for name in ("READONLY_DATABASE_URL", "READONLY_DATABASE_SECRET_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:pw@127.0.0.1:{silent.getsockname()[1]}/db")
    monkeypatch.setenv("ARTIFACTS_URI", str(tmp_path))
    monkeypatch.setattr(live_model, "CONNECT_TIMEOUT_SECONDS", 1)
    lambda_handler.reset()
    outcome = {}

    def invoke():
        try:
            lambda_handler.lambda_handler(firehose(json.dumps(GOOD).encode()))
        except Exception as exc:  # noqa: BLE001 - the test looks at what it was
            outcome["error"] = exc

    worker = threading.Thread(target=invoke, daemon=True)
    worker.start()
    worker.join(60)  # libpq's own default would wait 130 s or more
    try:
        assert not worker.is_alive(), "the invocation still waits for a database that never answers"
        assert isinstance(outcome.get("error"), DatabaseUnavailableError), outcome
        assert "pw" not in str(outcome["error"]) and "timeout" in str(outcome["error"]).lower()
    finally:
        silent.close()
        lambda_handler.reset()


# --- the handler from its package -----------------------------------------------------------------------

RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from recsys_assets.lambda_handler import lambda_handler
event = json.load(sys.stdin)
first = lambda_handler(event)
second = lambda_handler(event)  # a warm container
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"first": first, "second": second, "modules": loaded}))
"""


def real_event(datasets_dir) -> dict:
    path = datasets_dir / "classicmodels" / "delivery-stream-one-record.json"
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"the lab's enriched stream record is missing at {path}")
        pytest.skip(f"the lab's enriched stream record is not present at {path}")
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("recommended_items", "similar_items")}


def firehose(*payloads: bytes) -> dict:
    return {"invocationId": "inv", "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/s",
            "region": "us-east-1", "records": [{"recordId": f"r{i}", "approximateArrivalTimestamp": 1_700_000_000_000,
                                                "data": base64.b64encode(p).decode()} for i, p in enumerate(payloads)]}


def test_the_handler_runs_from_its_package_alone_on_the_real_record(package, app_db, s3_artifacts, boto_client,
                                                                     moto, datasets_dir, tmp_path):
    event = real_event(datasets_dir)
    store = PgVectorStore(db=app_db)
    try:
        publish_and_load(training_frame(datasets_dir), s3_artifacts, store, "pkg-v1", epochs=10)
        expected = enrich_batch([("r0", json.dumps(event).encode())],
                                stream_archive.embedder_for(s3_artifacts, "pkg-v1"), store)
    finally:
        store.close()
    provision_readonly_role(app_db, "lambda_reader")
    params = conninfo_to_dict(app_db.conninfo())  # the embedded server listens on a socket folder
    secret = {"host": params["host"], "port": int(params.get("port") or 5432), "username": "lambda_reader",
              "password": "unused-with-local-trust", "dbname": params["dbname"], "engine": "postgres"}
    boto_client("secretsmanager").create_secret(Name="mldp/test/readonly", SecretString=json.dumps(secret))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto,
           "ARTIFACTS_URI": s3_artifacts.uri(), "READONLY_DATABASE_SECRET_ID": "mldp/test/readonly",
           "MAX_EVENT_BYTES": "65536", "MLDP_ENV": "test"}
    invocation = firehose(json.dumps(event).encode(), b"{not json", json.dumps({**event, "credit_limit": -5}).encode())
    result = subprocess.run([sys.executable, "-I", "-S", "-c", RUNNER, package["folder"]], input=json.dumps(invocation),
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert not set(answer["modules"]) & set(FORBIDDEN), set(answer["modules"]) & set(FORBIDDEN)
    for response in (answer["first"], answer["second"]):
        assert [r["result"] for r in response["records"]] == ["Ok", "ProcessingFailed", "ProcessingFailed"]
        assert base64.b64decode(response["records"][1]["data"]) == b"{not json"
    enriched = json.loads(base64.b64decode(answer["first"]["records"][0]["data"]))
    want = expected.records[0][1]
    assert enriched["enrichment"]["model_version"] == "pkg-v1"
    assert [i["id"] for i in enriched["recommended_items"]] == [i["id"] for i in want["recommended_items"]]
    assert [i["score"] for i in enriched["recommended_items"]] == pytest.approx(
        [i["score"] for i in want["recommended_items"]], abs=1e-5)
    # ranked in memory by the Lambda, in pgvector for `want`: the same items, distances equal to float32 precision
    assert enriched["similar_items"]["product_code"] == want["similar_items"]["product_code"]
    assert [i["id"] for i in enriched["similar_items"]["similar_items"]] == \
        [i["id"] for i in want["similar_items"]["similar_items"]]
    assert [i["distance"] for i in enriched["similar_items"]["similar_items"]] == pytest.approx(
        [i["distance"] for i in want["similar_items"]["similar_items"]], abs=1e-5)
    assert {k: enriched[k] for k in event} == event  # the event goes out as it came in, plus the enrichment


def test_a_version_without_the_numpy_export_is_refused_naming_the_file(app_db, local_artifacts, datasets_dir,
                                                                      monkeypatch):
    from recsys_assets import lambda_handler

    store = PgVectorStore(db=app_db, item_table="old_items", user_table="old_users")
    try:
        publish_and_load(training_frame(datasets_dir), local_artifacts, store, "old-v1", epochs=5, numpy_export=False)
        # the Dagster side converts the torch weights of such a version ...
        outcome = enrich_batch([("e", json.dumps(GOOD).encode())],
                               stream_archive.embedder_for(local_artifacts, "old-v1"), store)
        assert len(outcome.records) == 1
    finally:
        store.close()
    for name in ("READONLY_DATABASE_URL", "READONLY_DATABASE_SECRET_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", app_db.conninfo())
    monkeypatch.setenv("ARTIFACTS_URI", local_artifacts.root)
    lambda_handler.reset()
    monkeypatch.setattr(lambda_handler, "ReadOnlyNearestItems",
                        lambda connect: ReadOnlyNearestItems(connect, item_table="old_items"))
    try:  # ... the Lambda, which has no torch, refuses it and says what to do
        with pytest.raises(UserTowerUnavailable, match=r"model version old-v1 has no model/user_tower\.json \(.*old-v1\)"
                                                       r": .*materialize recsys_model again"):
            lambda_handler.lambda_handler(firehose(json.dumps(GOOD).encode()))
    finally:
        lambda_handler.reset()


def test_the_lambdas_sessions_cannot_write(app_db):
    from resources.credentials import connect_or_explain

    reader = ReadOnlyNearestItems(lambda: connect_or_explain(app_db.conninfo(), describe="test", autocommit=True))
    try:
        PgVectorStore(db=app_db).active_version("item_emb")  # the registry exists
        with pytest.raises(Exception, match="read-only transaction"):
            reader.connection().execute("CREATE TABLE lambda_wrote (x int)")
    finally:
        reader.close()


def test_the_user_tower_is_read_only_as_the_manifest_records_it(app_db, local_artifacts, datasets_dir, tmp_path):
    """Every reader of the user tower (the hourly step, the Lambda, the API) checks its files against the version's
    manifest: a swapped or truncated file, or a version whose manifest is gone, is refused naming the file."""
    from recsys_assets.live_model import ArtifactTowers
    from resources.artifact_keys import join_key, version_prefix
    from resources.model_versions import ModelArtifactError, parse_manifest
    from resources.settings import PlatformSettings

    store = PgVectorStore(db=app_db, item_table="checked_items", user_table="checked_users")
    try:
        publish_and_load(training_frame(datasets_dir), local_artifacts, store, "checked-v1", epochs=5)
    finally:
        store.close()
    settings = PlatformSettings.from_env({"ARTIFACTS_URI": local_artifacts.root, "DATA_DIR": str(tmp_path)})
    readers = {"the hourly step": lambda: stream_archive.embedder_for(local_artifacts, "checked-v1"),
               "the Lambda and the API": lambda: ArtifactTowers(settings).embedder("checked-v1")}
    tower_key = join_key(version_prefix("checked-v1"), numpy_tower.USER_TOWER_FILE)
    manifest_key = join_key(version_prefix("checked-v1"), "manifest.json")
    original, manifest = local_artifacts.read_bytes(tower_key), local_artifacts.read_bytes(manifest_key)

    local_artifacts.write_bytes(tower_key, original + b" ")  # still valid JSON, not the published file
    for who, read in readers.items():
        with pytest.raises(UserTowerUnavailable, match=r"user tower file .*checked-v1/model/user_tower\.json is corrupt: "
                                                       r"its content does not match the SHA-256 in the manifest"):
            read()
    local_artifacts.write_bytes(tower_key, original)
    local_artifacts.delete([manifest_key])
    for who, read in readers.items():
        with pytest.raises(UserTowerUnavailable, match=r"model version checked-v1 is missing or incomplete: "
                                                       r"no .*checked-v1/manifest\.json"):
            read()
    # the recommender lab's own form, published by hand: a plain list of names, no digests to check against
    lab_manifest = {"dimension": 32, "files": ["embeddings/item_embeddings.csv", "embeddings/user_embeddings.csv"]}
    local_artifacts.write_json(manifest_key, lab_manifest)
    for who, read in readers.items():
        assert read().version == "checked-v1", who
    local_artifacts.write_bytes(manifest_key, manifest)
    assert readers["the Lambda and the API"]().version == "checked-v1"
    # the platform's own versions (the credit model's) must carry their digests
    with pytest.raises(ModelArtifactError, match=r"u is not a model manifest \(no 'files' with their digests\)"):
        parse_manifest(json.dumps(lab_manifest).encode(), "u", "v1")
