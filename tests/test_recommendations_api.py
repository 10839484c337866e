"""The recommendations API (`mldp serve`): a real server on a free port, against the embedded PostgreSQL and
model versions published as the training job publishes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import publish_and_load, training_frame
from recsys_assets.stream_archive import embedder_for
from resources.artifacts import LocalArtifactStore
from resources.embedded_postgres import stop_embedded_server
from resources.pgvector import PgVectorStore
from resources.postgres import EmbeddedPostgresDatabase
from tests.conftest import free_port

PASADENA = {"city": "Pasadena", "country": "USA", "creditlimit": 59811}  # the lab's real stream record's customer


def call(port: int, method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 30):
    """(status, headers, parsed JSON body) of one request, as the lab's Lambda makes it."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"accept": "application/json", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@contextmanager
def serving(env: dict, log: Path):
    """`mldp serve` on a free port; yields (port, process); stopped with Ctrl-C (SIGINT) afterwards."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([str(Path(sys.executable).with_name("mldp")), "serve", "--port", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if call(port, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"mldp serve did not answer within 90 s:\n{log.read_text()[-3000:]}")
        yield port, process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_version(port: int, version: str, timeout: float = 60) -> dict:
    """/ready once it reports `version` live (not just any ready answer)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _headers, body = call(port, "GET", "/ready")
        if status == 200 and body["model_version"] == version:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def server_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATABASE_URL", "READONLY_DATABASE_URL", "READONLY_DATABASE_SECRET_ID", "ARTIFACTS_URI", "ITEM_INDEX_MAX_ITEMS")}
    env.update({"DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_REFRESH_SECONDS": "0.2", **extra})
    return env


@pytest.fixture(scope="module")
def world(app_db, datasets_dir, tmp_path_factory):
    """Version v1 of the model published and its embeddings live."""
    artifacts = LocalArtifactStore(root=str(tmp_path_factory.mktemp("api-artifacts")))
    store = PgVectorStore(db=app_db)
    frame = training_frame(datasets_dir)
    trained = publish_and_load(frame, artifacts, store, "v1", epochs=40, seed=3)
    yield {"artifacts": artifacts, "store": store, "frame": frame, "trained": trained, "db": app_db}
    store.close()


def lab_env(world, tmp_path, **extra) -> dict:
    return server_env(tmp_path, DATABASE_URL=world["db"].conninfo(), ARTIFACTS_URI=world["artifacts"].uri(), **extra)


def live(world) -> str:
    return world["store"].active_version("item_emb")


def assert_same_ranking(answer: list[dict], reference: list[tuple[str, float]], key: str) -> None:
    """`answer` ranks as `reference` does: the same scores, and the same ids except where two scores are
    equal to float32's precision (pgvector and numpy may order such a tie either way)."""
    scores = [item[key] for item in answer]
    assert np.allclose(scores, [value for _id, value in reference], atol=1e-5), (answer, reference)
    for position, (item, (expected, value)) in enumerate(zip(answer, reference)):
        tied = [other for other, other_value in reference if abs(other_value - value) < 1e-5]
        assert item["id"] == expected or item["id"] in tied or position == len(reference) - 1, (answer, reference)


def test_the_lab_lambdas_three_calls_get_the_answers_of_the_live_version(world, tmp_path):
    with serving(lab_env(world, tmp_path), tmp_path / "serve.log") as (port, _process):
        ready = wait_for_version(port, "v1")
        assert ready["items_from"] == "memory" and ready["items_in_memory"] == len(world["trained"]["products"])
        # the lab's Lambda: user features -> embedding -> items for it; then items like one it browsed
        status, headers, embeddings = call(port, "POST", "/user_embeddings", [PASADENA])
        assert status == 200 and headers["x-model-version"] == "v1" and len(embeddings) == 1
        vector = np.asarray(embeddings[0]["embedding"])
        assert vector.shape == (32,) and abs(np.linalg.norm(vector) - 1) < 1e-5
        status, headers, items = call(port, "POST", "/items_from_user?limit=5", embeddings[0])
        assert status == 200 and headers["x-model-version"] == "v1"
        assert [set(item) for item in items] == [{"id", "score"}] * 5
        assert_same_ranking(items, world["store"].recommend_for_embedding(vector, 5), "score")
        # the customer's features instead of an embedding give the same answer
        by_features = call(port, "POST", "/items_from_user?limit=5", PASADENA)[2]
        assert_same_ranking(by_features, [(item["id"], item["score"]) for item in items], "score")
        browsed = world["trained"]["products"]["productcode"].iloc[3]
        status, headers, similar = call(port, "GET", f"/items_from_item?item_id={browsed}&limit=5")
        assert status == 200 and headers["x-model-version"] == "v1"
        assert browsed not in str(similar)
        assert_same_ranking(similar, world["store"].similar_items(browsed, 5), "distance")
        # a batch of customers, new ones too: one embedding each, in order, with notes for what was never seen
        status, _headers, many = call(port, "POST", "/user_embeddings",
                                      [PASADENA, {"city": "Atlantis", "country": "Nowhere", "creditlimit": 0}])
        assert status == 200 and len(many) == 2
        assert np.allclose(many[0]["embedding"], embeddings[0]["embedding"], atol=1e-6)
        assert any("Atlantis" in note for note in many[1]["notes"])


def test_a_new_live_version_is_followed_without_a_restart_and_versions_are_never_paired(world, tmp_path):
    """While v2 goes live, clients keep asking: every answer is exactly the one its named version gives (a
    v1 tower with v2 items would give neither), the server switches without a restart, and an embedding of
    v1 is refused once v2 is live."""
    def ask(port):
        status, headers, body = call(port, "POST", "/items_from_user?limit=5", PASADENA)
        return status, headers.get("x-model-version"), [item["id"] for item in body]

    with serving(lab_env(world, tmp_path), tmp_path / "serve.log") as (port, process):
        wait_for_version(port, "v1")
        expected = {"v1": ask(port)[2]}
        _status, _headers, (old_embedding,) = call(port, "POST", "/user_embeddings", [PASADENA])
        answers, stop = [], threading.Event()

        def keep_asking():
            while not stop.is_set():
                answers.append(ask(port))

        clients = [threading.Thread(target=keep_asking) for _ in range(3)]
        for client in clients:
            client.start()
        try:
            publish_and_load(world["frame"], world["artifacts"], world["store"], "v2", epochs=40, seed=11)
            wait_for_version(port, "v2")
            deadline = time.monotonic() + 30
            while not any(version == "v2" for _status, version, _ids in answers):  # the clients reached v2
                assert time.monotonic() < deadline, answers[-3:]
                time.sleep(0.05)
        finally:
            stop.set()
            for client in clients:
                client.join()
        expected["v2"] = ask(port)[2]
        # v2's tower and items, embedded the same way outside the server, agree with its answer
        vectors, _notes = embedder_for(world["artifacts"], "v2").embed([{**PASADENA, "credit_limit": 59811}])
        reference = world["store"].recommend_batch(vectors, 5, [()], version="v2")[0]
        assert_same_ranking([{"id": i, "score": s} for i, s in zip(expected["v2"], [v for _i, v in reference])],
                            reference, "score")
        assert expected["v1"] != expected["v2"]  # the two versions rank differently: a mix would show
        assert process.poll() is None  # no restart
        assert {version for _status, version, _ids in answers} == {"v1", "v2"}
        for status, version, ids in answers:
            assert status == 200 and ids == expected[version], (version, ids)
        status, _headers, body = call(port, "POST", "/items_from_user", old_embedding)
        assert status == 409 and "version 'v1'" in body["error"] and "v2 is live" in body["error"]
        status, headers, _body = call(port, "POST", "/items_from_user", {**old_embedding, "model_version": "v2"})
        assert status == 200 and headers["x-model-version"] == "v2"


BAD_REQUESTS = [
    # (method, path, body bytes, status, words the error must hold)
    ("POST", "/user_embeddings", b'[{"city": "Paris",', 400, "not JSON"),
    ("POST", "/user_embeddings", b"", 400, "empty"),
    ("POST", "/user_embeddings", b'{"city": NaN}', 400, "NaN is not a JSON value"),
    ("POST", "/user_embeddings", b"[]", 422, "non-empty JSON list"),
    ("POST", "/user_embeddings", b'[{"city": "Paris", "country": "France"}]', 422, "missing [0].creditlimit"),
    ("POST", "/user_embeddings", b'[{"city": 5, "country": "France", "creditlimit": 1}]', 422,
     "[0].city must be a non-empty string"),
    ("POST", "/user_embeddings", b'[{"city": "Paris", "country": "France", "creditlimit": "lots"}]', 422,
     "[0].creditlimit must be a number"),
    ("POST", "/user_embeddings", b'[{"city": "Par\\u0000is", "country": "France", "creditlimit": 1}]', 422, "NUL"),
    ("POST", "/user_embeddings", b'["Paris"]', 422, "[0] must be a JSON object"),
    ("POST", "/items_from_user", b'{"embedding": [1, 2]}', 422, "dimension 2"),
    ("POST", "/items_from_user", b'{"embedding": [0, 0, 0]}', 422, "all zeros"),
    ("POST", "/items_from_user", b'{"embedding": [1, "x"]}', 422, "embedding[1] must be a finite number"),
    ("POST", "/items_from_user", b'{"embedding": "fast"}', 422, "embedding must be a non-empty list"),
    ("POST", "/items_from_user", b'"hello"', 422, "must be a JSON object"),
    ("POST", "/items_from_user?limit=0", b'{"embedding": [1]}', 422, "limit must be a whole number from 1 to 100"),
    ("POST", "/items_from_user?limit=101", b'{"embedding": [1]}', 422, "not '101'"),
    ("GET", "/items_from_item?item_id=NOPE_1&limit=5", None, 404, "unknown item_id 'NOPE_1'"),
    ("GET", "/items_from_item?limit=5", None, 422, "missing item_id"),
    ("GET", "/items_from_item?item_id=S10_1678&limit=ten", None, 422, "limit must be a whole number"),
    ("GET", "/items_from_item?item_id=S10_1678&limit=-1", None, 422, "limit must be a whole number"),
    ("GET", "/items_from_item?item_id=S10_1678&limit=%C2%B2", None, 422, "limit must be a whole number"),  # '²'
    ("POST", "/items_from_user", b'{"embedding": [1' + b"0" * 400 + b"]}", 422,
     "embedding[0] must be a finite number within float32's range"),
    ("POST", "/items_from_user", b'{"embedding": [1e39, 1]}', 422, "within float32's range"),
    ("POST", "/items_from_user", b'{"embedding": [' + b"1e-46, " * 31 + b"1e-46]}", 422, "all zeros (in float32)"),
    ("POST", "/items_from_user", b'{"embedding": [1, 2], "model_version": "\\ud800"}', 422,
     "model_version must be the text"),
    ("POST", "/user_embeddings", b'[{"city": "Paris", "country": "France", "creditlimit": 1' + b"0" * 400 + b"}]",
     422, "[0].creditlimit must be a number from 0 to 1e+12"),
    ("GET", "/user_embeddings", None, 405, "Method Not Allowed"),
    ("GET", "/nowhere", None, 404, "Not Found"),
    ("POST", "/user_embeddings", b"[" + b'{"city": "Paris", "country": "France", "creditlimit": 1},' * 40 + b"{}]",
     413, "over the limit of 2,048 bytes"),
]


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_goes_on(world, tmp_path):
    log = tmp_path / "serve.log"
    with serving(lab_env(world, tmp_path, MAX_EVENT_BYTES="2048"), log) as (port, _process):
        wait_for_version(port, live(world))
        for method, path, raw, status, words in BAD_REQUESTS:
            got, _headers, body = call(port, method, path, raw=raw)
            assert (got, words in body.get("error", "")) == (status, True), (method, path, raw, body)
        assert call(port, "POST", "/items_from_user", PASADENA)[0] == 200  # still answering
        # a vector's direction is what counts, however large or small its numbers (within float32)
        dimension = len(call(port, "POST", "/user_embeddings", [PASADENA])[2][0]["embedding"])
        answers = [call(port, "POST", "/items_from_user", {"embedding": [value] * dimension})
                   for value in (1e20, 0.1, 1e-30)]
        assert [status for status, _h, _b in answers] == [200] * 3
        assert answers[0][2] == answers[1][2] == answers[2][2]
    assert "Traceback" not in log.read_text() and "Exception" not in log.read_text()


def test_a_database_that_cannot_be_reached_gives_503_and_no_password_anywhere(world, tmp_path):
    """Cold start with the database down: not ready, every query 503 with Retry-After and the cause; the
    password in DATABASE_URL is in no answer and no log line."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port_nobody_listens_on = closed.getsockname()[1]
    closed.close()
    secret = "Sup3r-s3cret-pw"
    env = server_env(tmp_path, DATABASE_URL=f"postgresql://app:{secret}@127.0.0.1:{port_nobody_listens_on}/db",
                     ARTIFACTS_URI=world["artifacts"].uri())
    log = tmp_path / "serve.log"
    with serving(env, log) as (port, _process):
        deadline = time.monotonic() + 60
        while (body := call(port, "GET", "/ready")[2])["problem"] is None:  # the first look at the database
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        status, _headers, body = call(port, "GET", "/ready")
        assert status == 503 and body["ready"] is False and "127.0.0.1" in body["problem"]
        seen = [json.dumps(body)]
        for method, path, payload in (("POST", "/items_from_user", PASADENA), ("POST", "/user_embeddings", [PASADENA]),
                                      ("GET", "/items_from_item?item_id=S10_1678", None)):
            status, headers, body = call(port, method, path, payload)
            assert status == 503 and headers["retry-after"] == "5" and "cannot connect to PostgreSQL" in body["error"], body
            seen.append(json.dumps(body))
        assert call(port, "GET", "/health")[0] == 200  # alive, only not ready
    assert secret not in "".join(seen) + log.read_text()


def test_losing_the_database_while_serving(world, tmp_path):
    """The items held in memory go on answering while the database is down, and /ready says what is wrong;
    a catalogue too large to hold (here: ITEM_INDEX_MAX_ITEMS=0) is queried in the database and gives 503."""
    db = EmbeddedPostgresDatabase(data_dir=str(tmp_path / "own-postgres"), database="lost")
    store = PgVectorStore(db=db)
    publish_and_load(world["frame"], world["artifacts"], store, "v1", epochs=20, seed=3)
    store.close()
    browsed = world["trained"]["products"]["productcode"].iloc[0]
    try:
        for max_items, answered_while_down in (("500000", 200), ("0", 503)):
            env = server_env(tmp_path, DATABASE_URL=db.conninfo(), ARTIFACTS_URI=world["artifacts"].uri(),
                             ITEM_INDEX_MAX_ITEMS=max_items)
            with serving(env, tmp_path / f"serve-{max_items}.log") as (port, _process):
                ready = wait_for_version(port, "v1")
                assert ready["items_from"] == ("memory" if max_items != "0" else "pgvector (HNSW)")
                before = call(port, "GET", f"/items_from_item?item_id={browsed}")
                assert before[0] == 200
                assert stop_embedded_server(tmp_path / "own-postgres")
                status, _headers, body = call(port, "GET", f"/items_from_item?item_id={browsed}")
                assert status == answered_while_down, body
                if status == 200:
                    assert body == before[2]
                    deadline = time.monotonic() + 30
                    while call(port, "GET", "/ready")[2]["problem"] is None:
                        assert time.monotonic() < deadline
                        time.sleep(0.2)
                    assert call(port, "GET", "/ready")[0] == 200  # still serving version v1 from memory
                else:
                    assert "Retry-After" in _headers or "retry-after" in _headers
            db.connect().close()  # the next round's server needs the database back
    finally:
        stop_embedded_server(tmp_path / "own-postgres")
