"""The Firehose transformation Lambda, with Firehose-format events built from the lab's real record."""

import base64
import json

import pytest

from benchmarks.harness import publish_and_load, training_frame
from recsys_assets import lambda_handler
from resources.artifacts import LocalArtifactStore
from resources.pgvector import PgVectorStore
from tests.recsys_support import GOOD, POISON


@pytest.fixture
def configured(app_db, tmp_path, datasets_dir, monkeypatch):
    artifacts = LocalArtifactStore(root=str(tmp_path / "artifacts"))
    store = PgVectorStore(db=app_db)
    publish_and_load(training_frame(datasets_dir), artifacts, store, "lambda-v1", epochs=20)
    store.close()
    for name in ("READONLY_DATABASE_URL", "READONLY_DATABASE_SECRET_ID", "SOURCE_DATABASE_URL", "SAGEMAKER_BACKEND",
                 "STREAM_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", app_db.conninfo())  # how a Lambda gets its vector database
    monkeypatch.setenv("ARTIFACTS_URI", str(tmp_path / "artifacts"))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    lambda_handler.reset()
    yield
    lambda_handler.reset()


def firehose(*payloads: bytes) -> dict:
    return {"invocationId": "inv-1", "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/s",
            "region": "us-east-1",
            "records": [{"recordId": f"r{i}", "approximateArrivalTimestamp": 1700000000000 + i,
                         "data": base64.b64encode(p).decode()} for i, p in enumerate(payloads)]}


def test_firehose_records_come_back_ok_failed_or_dropped(configured, datasets_dir):
    path = datasets_dir / "classicmodels" / "delivery-stream-one-record.json"
    if path.exists():
        real = json.loads(path.read_text())
        event = {k: v for k, v in real.items() if k not in ("recommended_items", "similar_items")}
    else:
        event = {"session_id": "s", "customer_number": 478, "city": "Pasadena", "country": "USA", "credit_limit": 59811,
                 "browse_history": [{"product_code": "S10_1678", "quantity": "1", "in_shopping_cart": True}]}
    good = json.dumps(event).encode()
    response = lambda_handler.lambda_handler(firehose(good, b"{not json", b"  ", json.dumps({**event, "browse_history": []}).encode()))
    results = {r["recordId"]: r for r in response["records"]}
    assert [r["recordId"] for r in response["records"]] == ["r0", "r1", "r2", "r3"]  # order kept, none lost
    assert [results[f"r{i}"]["result"] for i in range(4)] == ["Ok", "ProcessingFailed", "Dropped", "Ok"]
    enriched = json.loads(base64.b64decode(results["r0"]["data"]))
    assert base64.b64decode(results["r0"]["data"]).endswith(b"\n")  # one JSON line per record, as Firehose concatenates
    assert enriched["customer_number"] == event["customer_number"] and len(enriched["recommended_items"]) == 5
    assert enriched["enrichment"]["model_version"] == "lambda-v1"
    assert base64.b64decode(results["r1"]["data"]) == b"{not json"  # failed records keep their data
    partial = json.loads(base64.b64decode(results["r3"]["data"]))
    assert partial["similar_items"] is None and partial["enrichment"]["status"] == "partial"
    # a warm container answers the next invocation with the same connections and tower
    again = lambda_handler.lambda_handler(firehose(good))
    assert again["records"][0]["result"] == "Ok"


def test_poison_records_fail_alone_and_the_invocation_goes_on(configured, monkeypatch):
    monkeypatch.setenv("MAX_EVENT_BYTES", "16384")
    lambda_handler.reset()
    good = json.dumps(GOOD).encode()
    names = list(POISON)
    payloads = [good]
    for name in names:
        payloads += [POISON[name][0], good]
    event = firehose(*payloads)
    event["records"].append({"recordId": "not-a-string", "data": 12345})
    event["records"].append({"recordId": "not-base64", "data": "***"})
    event["records"].append({"recordId": "not-ascii", "data": "é"})
    response = lambda_handler.lambda_handler(event)
    results = {r["recordId"]: r["result"] for r in response["records"]}
    assert [r["recordId"] for r in response["records"]] == [r["recordId"] for r in event["records"]]
    assert [results[f"r{i}"] for i in range(0, len(payloads), 2)] == ["Ok"] * (len(names) + 1)
    assert {name: results[f"r{2 * i + 1}"] for i, name in enumerate(names)} == {name: "ProcessingFailed" for name in names}
    assert results["not-a-string"] == results["not-base64"] == results["not-ascii"] == "ProcessingFailed"
    failed = {r["recordId"]: r["data"] for r in response["records"]}
    assert failed["r1"] == event["records"][1]["data"]  # a failed record keeps its original data


@pytest.mark.parametrize("event, message", [
    ({}, "has no 'records' list"),
    ({"records": "abc"}, "has no 'records' list"),
    ({"records": [{"data": "e30="}]}, "record 0 of the Firehose event has no string 'recordId'"),
    ({"records": [{"recordId": 7, "data": "e30="}]}, "record 0 of the Firehose event has no string 'recordId'"),
    ({"records": [{"recordId": "a", "data": "e30="}, {"recordId": "a", "data": "e30="}]}, "recordId 'a' appears twice"),
])
def test_a_malformed_envelope_is_a_clear_error(configured, event, message):
    with pytest.raises(lambda_handler.FirehoseEnvelopeError, match=message):
        lambda_handler.lambda_handler(event)
