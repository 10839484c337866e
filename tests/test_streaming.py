"""Session events -> archive sensor -> hourly recommendations: no loss, no replay, reproducible hours."""

import json
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from benchmarks.harness import publish_and_load, training_frame
import recsys_assets as recsys
from recsys_assets import stream_archive, streaming
from recsys_assets.session_events import break_event, make_events
from resources.artifacts import LocalArtifactStore
from resources.pgvector import PgVectorStore
from resources.stream import KinesisEventStream, LocalEventStream
from resources.stream_record import StreamRecord
from tests.recsys_support import GOOD, POISON


@pytest.fixture(scope="module")
def world(app_db, tmp_path_factory, datasets_dir):
    root = tmp_path_factory.mktemp("stream")
    artifacts = LocalArtifactStore(root=str(root / "artifacts"))
    store = PgVectorStore(db=app_db)
    frame = training_frame(datasets_dir)
    trained = publish_and_load(frame, artifacts, store, "stream-v1")
    customers = frame.drop_duplicates("customernumber")[["customernumber", "city", "country", "creditlimit"]]
    yield {"root": root, "artifacts": artifacts, "store": store, "frame": frame, "customers": customers, **trained}
    store.close()


def produce(stream, world, n, seed=0, broken=0.0):
    payloads = make_events(world["products"]["productcode"].tolist(), world["customers"], n, seed=seed,
                           broken_fraction=broken)
    stream.put(payloads)
    return payloads


def tick(stream, artifacts, cursor=None):
    with dg.build_sensor_context(cursor=cursor, resources={"events": stream, "artifacts": artifacts}) as context:
        result = recsys.session_events_sensor(context)
    return result, result.cursor


def clear_of_the_hour_turn(margin_seconds: int = 120) -> None:
    """Wait out the end of the hour when less than `margin_seconds` remain: a test that puts events on the stream
    at two moments and expects them in one hour must not straddle the turn (the stream stamps arrival itself)."""
    now = datetime.now(timezone.utc)
    left = 3600 - (now.minute * 60 + now.second)
    if left < margin_seconds:
        time.sleep(left + 1)


def hours(result) -> list[str]:
    """The hours a tick archived events of (its materialisations of `session_events`), each checked to be
    added as a partition and to have its run requested by the same tick."""
    archived = [e.partition for e in result.asset_events if e.asset_key == streaming.session_events.key]
    added = {key for request in result.dynamic_partitions_requests for key in request.partition_keys}
    assert set(archived) <= added
    assert sorted(r.partition_key for r in result.run_requests or []) == sorted(archived)
    return sorted(archived)


def archived_count(result, partition: str) -> int:
    [event] = [e for e in result.asset_events if e.partition == partition]
    return event.metadata["events_archived"].value


def hour_instance(partition: str) -> dg.DagsterInstance:
    """An instance where `partition` is an hour of `session_hours`, as the sensor's tick leaves it."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(streaming.SESSION_HOURS.name, [partition])
    return instance


def materialize_hour(world, partition, config=None):
    return dg.materialize([recsys.embeddings_tables, recsys.recommendations],
                          selection=dg.AssetSelection.assets(recsys.recommendations), partition_key=partition,
                          resources={"artifacts": world["artifacts"], "pgvector": world["store"], "registry": None},
                          run_config=config, instance=hour_instance(partition))


def read_lines(artifacts, key):
    return [json.loads(line) for line in artifacts.read_text(key).splitlines()] if artifacts.exists(key) else []


def hour_files(partition):
    hour = datetime.strptime(partition, "%Y-%m-%d-%H:%M").replace(tzinfo=timezone.utc)
    folder, stamp = stream_archive.hour_folder(hour), hour.strftime("%Y-%m-%d-%H")
    return (f"recommendations/{folder}/recommendations-{stamp}.jsonl", f"dead_letter/{folder}/dead-letter-{stamp}.jsonl")


def test_events_flow_into_hourly_recommendations_exactly_once(world, tmp_path):
    stream = LocalEventStream(root=str(tmp_path / "stream"))
    artifacts = _with_model(world, LocalArtifactStore(root=str(tmp_path / "artifacts")))
    clear_of_the_hour_turn()
    produce(stream, world, 120, seed=1, broken=0.1)
    result, cursor = tick(stream, artifacts)
    [partition] = hours(result)
    assert archived_count(result, partition) == 120 and result.run_requests[0].tags["events"] == "120"
    first_run_key = result.run_requests[0].run_key
    raw = artifacts.list("raw_events/")
    folder = stream_archive.hour_folder(datetime.now(timezone.utc))
    assert len(raw) == 1 and raw[0].key.startswith(f"raw_events/{folder}")

    result, cursor = tick(stream, artifacts, cursor)
    assert hours(result) == [] and "no new events" in result.skip_reason.skip_message  # nothing new: nothing recorded

    produce(stream, world, 80, seed=2)
    result, cursor = tick(stream, artifacts, cursor)
    assert hours(result) == [partition] and archived_count(result, partition) == 80
    assert result.run_requests[0].run_key != first_run_key  # a batch of its own: a run of its own

    # a restart: a fresh evaluation with the kept cursor replays nothing
    result, _ = tick(stream, artifacts, json.loads(json.dumps(cursor)))
    assert hours(result) == []

    outcome = materialize_hour({**world, "artifacts": artifacts}, partition)
    meta = outcome.asset_materializations_for_node("recommendations")[0].metadata
    assert meta["events_in"].value == 200
    assert meta["enriched"].value + meta["dead_lettered"].value == 200 and meta["dead_lettered"].value > 0
    checks = {check.check_name: check for check in outcome.get_asset_check_evaluations()}
    assert set(checks) == {"events_reconcile", "recommendations_drift"}
    check = checks["events_reconcile"]
    assert check.passed
    # the hour's drift numbers, each a number the UI plots; customers of the training data: nothing to flag
    drift = {k: v.value for k, v in checks["recommendations_drift"].metadata.items()}
    assert checks["recommendations_drift"].passed, checks["recommendations_drift"].description
    assert drift["events_enriched"] == meta["enriched"].value and drift["catalogue_items"] == len(world["products"])
    assert 0 < drift["catalogue_coverage"] <= 1 and drift["distinct_items_recommended"] >= 5
    assert -1 <= drift["score_p10"] <= drift["score_p50"] <= drift["score_p90"] <= 1
    assert drift["unseen_city_share"] < 0.2 and drift["unseen_country_share"] < 0.2
    assert meta["catalogue_coverage"].value == drift["catalogue_coverage"]  # plotted hour after hour
    output, dead = hour_files(partition)
    records = read_lines(artifacts, output)
    assert len(records) == meta["enriched"].value
    assert len({r["session_id"] for r in records}) == len(records)  # no duplicates
    assert all(len(r["recommended_items"]) == 5 for r in records)
    letters = read_lines(artifacts, dead)
    assert all(letter["reason"] and ("payload" in letter or "payload_base64" in letter) for letter in letters)


def _with_model(world, artifacts):
    """Copy the published model files next to the events, as one ARTIFACTS_URI holds both."""
    for info in world["artifacts"].list("ml-artifacts/"):
        artifacts.write_bytes(info.key, world["artifacts"].read_bytes(info.key))
    return artifacts


def test_a_tick_that_crashed_before_its_cursor_was_kept_is_replayed_without_duplicates(world, tmp_path):
    stream = LocalEventStream(root=str(tmp_path / "stream"))
    artifacts = _with_model(world, LocalArtifactStore(root=str(tmp_path / "artifacts")))
    clear_of_the_hour_turn()
    produce(stream, world, 30, seed=3)
    result, cursor = tick(stream, artifacts)
    produce(stream, world, 20, seed=4)
    tick(stream, artifacts, cursor)  # archived, then "crashed": its cursor was never kept
    produce(stream, world, 10, seed=5)
    replay, cursor = tick(stream, artifacts, cursor)  # the same start, more events
    [partition] = hours(replay)
    batches = artifacts.list("raw_events/")
    assert len(batches) == 2  # the crashed tick's batch was replaced by the replay's larger one
    outcome = materialize_hour({**world, "artifacts": artifacts}, partition)
    meta = outcome.asset_materializations_for_node("recommendations")[0].metadata
    assert meta["events_in"].value == 60 and meta["duplicates_dropped"].value == 0


def test_duplicated_archives_are_deduplicated_and_an_hour_is_reproducible(world, tmp_path):
    artifacts = _with_model(world, LocalArtifactStore(root=str(tmp_path / "artifacts")))
    hour = datetime(2026, 3, 4, 5, 0, tzinfo=timezone.utc)
    payloads = make_events(world["products"]["productcode"].tolist(), world["customers"], 25, seed=6)
    payloads.append(break_event(json.loads(payloads[0]), "not json"))
    records = [StreamRecord("shard-a", str(100 + i), p, hour + timedelta(seconds=i)) for i, p in enumerate(payloads)]
    stream_archive.archive(artifacts, records[:15])
    stream_archive.archive(artifacts, records[10:])  # overlaps the first batch (another first sequence)
    partition = "2026-03-04-05:00"
    first = materialize_hour({**world, "artifacts": artifacts}, partition)
    meta = first.asset_materializations_for_node("recommendations")[0].metadata
    assert (meta["events_in"].value, meta["duplicates_dropped"].value, meta["dead_lettered"].value) == (26, 5, 1)
    output, dead = hour_files(partition)
    before = artifacts.read_bytes(output)
    materialize_hour({**world, "artifacts": artifacts}, partition)  # a backfill of the same hour
    assert artifacts.read_bytes(output) == before
    assert read_lines(artifacts, dead)[0]["reason"].startswith("not JSON")


def test_events_of_two_hours_are_archived_as_two_partitions(tmp_path):
    artifacts = LocalArtifactStore(root=str(tmp_path / "artifacts"))
    start = datetime(2026, 5, 6, 7, 59, 50, tzinfo=timezone.utc)
    records = [StreamRecord("shard-a", str(i), b"{}", start + timedelta(seconds=5 * i)) for i in range(4)]
    written = stream_archive.archive(artifacts, records)
    assert sorted(written) == ["2026-05-06-07:00", "2026-05-06-08:00"]


def test_after_a_model_change_an_hour_is_recomputed_with_the_new_version(world, tmp_path):
    artifacts = _with_model(world, LocalArtifactStore(root=str(tmp_path / "artifacts")))
    hour = datetime(2026, 3, 5, 6, 0, tzinfo=timezone.utc)
    payloads = make_events(world["products"]["productcode"].tolist(), world["customers"], 10, seed=7)
    stream_archive.archive(artifacts, [StreamRecord("shard-a", str(i), p, hour) for i, p in enumerate(payloads)])
    partition = "2026-03-05-06:00"
    store = PgVectorStore(db=world["store"].db, item_table="item_emb_v2", user_table="user_emb_v2")
    try:
        publish_and_load(world["frame"], artifacts, store, "stream-v2", epochs=20, seed=11)
        outcome = dg.materialize([recsys.embeddings_tables, recsys.recommendations],
                                 selection=dg.AssetSelection.assets(recsys.recommendations), partition_key=partition,
                                 resources={"artifacts": artifacts, "pgvector": store, "registry": None},
                                 instance=hour_instance(partition))
        assert outcome.asset_materializations_for_node("recommendations")[0].metadata["model_version"].value == "stream-v2"
        records = read_lines(artifacts, hour_files(partition)[0])
        assert {r["enrichment"]["model_version"] for r in records} == {"stream-v2"}
    finally:
        store.close()


def test_the_sensor_reads_a_kinesis_stream(world, moto, boto_client, tmp_path):
    boto_client("kinesis").create_stream(StreamName="sessions", ShardCount=2)
    stream = KinesisEventStream(stream_name="sessions", region_name="us-east-1", endpoint_url=moto)
    artifacts = LocalArtifactStore(root=str(tmp_path / "artifacts"))
    clear_of_the_hour_turn()
    produce(stream, world, 40, seed=8)
    result, cursor = tick(stream, artifacts)
    assert len(hours(result)) == 1
    names = sorted(info.key.rsplit("/", 1)[-1] for info in artifacts.list("raw_events/"))
    assert [name.split("-")[0] + "-" + name.split("-")[1] for name in names] == sorted(stream.shards())  # one batch per shard
    assert set(json.loads(cursor)["checkpoint"]) == set(stream.shards())
    produce(stream, world, 5, seed=9)
    result, cursor = tick(stream, artifacts, cursor)
    archived = sum(len(artifacts.read_text(i.key).splitlines()) for i in artifacts.list("raw_events/"))
    assert archived == 45


def test_poison_and_oversize_events_are_dead_lettered_and_the_hour_is_enriched(world, tmp_path):
    """Each poison event (and one of 9 MiB) in the local stream: the sensor reads past it, the hour's run
    dead-letters exactly it, with its reason, and enriches every good event around it."""
    stream = LocalEventStream(root=str(tmp_path / "stream"), max_record_bytes=16_384)
    artifacts = _with_model(world, LocalArtifactStore(root=str(tmp_path / "artifacts")))
    good = produce(stream, world, 30, seed=12)
    poison = [payload for payload, _reason in POISON.values() if len(payload) <= 16_384]
    stream.put(poison)
    huge = json.dumps({**GOOD, "padding": "p" * (9 * 1024 * 1024)}).encode()
    stream.put([huge])
    more = produce(stream, world, 30, seed=13)
    result, cursor = tick(stream, artifacts)
    partitions = hours(result)
    assert partitions, result.skip_reason
    enriched = dead = 0
    letters = []
    for partition in partitions:
        outcome = materialize_hour({**world, "artifacts": artifacts}, partition)
        [check] = [c for c in outcome.get_asset_check_evaluations() if c.check_name == "events_reconcile"]
        assert check.passed
        meta = outcome.asset_materializations_for_node("recommendations")[0].metadata
        enriched, dead = enriched + meta["enriched"].value, dead + meta["dead_lettered"].value
        letters += read_lines(artifacts, hour_files(partition)[1])
    expected_good = [json.loads(p)["session_id"] for p in good + more if _is_good(p)]
    assert enriched == len(expected_good)
    assert dead == len(good) + len(more) - len(expected_good) + len(poison) + 1
    by_size = [letter for letter in letters if letter.get("payload_truncated")]
    # too long to read whole, the local stream's line is measured as stored: a little more than the payload
    assert len(by_size) == 1 and len(huge) <= by_size[0]["payload_bytes"] < len(huge) + 200
    assert by_size[0]["reason"].startswith("event too large: ") and len(by_size[0]["payload"]) == 1024
    reasons = " | ".join(letter["reason"] for letter in letters)
    for name, (payload, reason) in POISON.items():
        if len(payload) <= 16_384:
            assert reason in reasons, name
    again, _ = tick(stream, artifacts, cursor)
    assert hours(again) == []  # nothing left unread, nothing read twice


def _is_good(payload: bytes) -> bool:
    from recsys_assets.enrichment import EventRejected, parse_event

    try:
        parse_event(payload)
    except EventRejected:
        return False
    return True


def test_old_hours_become_partitions_and_future_ones_are_dead_lettered_by_the_sensor(world, tmp_path):
    """An event from long ago (an old segment, a long-retention Kinesis stream) gets its hour as a partition;
    one from the future (a writer's clock) has no hour to go to yet: the sensor dead-letters it and goes on,
    instead of failing every tick on a partition that cannot exist."""
    stream = LocalEventStream(root=str(tmp_path / "stream"))
    artifacts = LocalArtifactStore(root=str(tmp_path / "artifacts"))
    produce(stream, world, 5, seed=14)
    segment = next((tmp_path / "stream").glob("segment-*.jsonl"))
    with open(segment, "ab") as handle:
        for arrival in ("2025-06-01T10:00:00+00:00", "2999-01-01T00:00:00+00:00"):
            handle.write(json.dumps({"arrival": arrival, "data": json.dumps(GOOD)}).encode() + b"\n")
    produce(stream, world, 5, seed=15)
    result, cursor = tick(stream, artifacts)
    archived = sum(len(artifacts.read_text(i.key).splitlines()) for i in artifacts.list("raw_events/"))
    assert archived == 11 and "2025-06-01-10:00" in hours(result)
    # every archived hour is added as a partition by the same tick, the old one included
    [added] = result.dynamic_partitions_requests
    assert added.partitions_def_name == "session_hours" and set(added.partition_keys) == set(hours(result))

    [outside] = artifacts.list("dead_letter/outside_partitions/")
    letters = read_lines(artifacts, outside.key)
    assert [letter["arrival"][:4] for letter in letters] == ["2999"]
    assert letters[0]["reason"].startswith("arrival in a future hour")
    again, _ = tick(stream, artifacts, cursor)
    assert hours(again) == []


def test_recommendations_that_collapse_onto_a_few_items_are_flagged(monkeypatch):
    monkeypatch.delenv("DRIFT_COVERAGE_WARN", raising=False)
    same = [{"recommended_items": [{"id": f"S{i}", "score": 0.5} for i in range(5)], "enrichment": {"notes": []}}] * 100
    _, small = streaming.recommendations_drift(same, catalogue=109, k=5)  # 5 of the 109 the hour could have shown
    assert not small.passed and small.severity == dg.AssetCheckSeverity.WARN
    assert small.metadata["coverage_of_possible"].value == pytest.approx(5 / 109, rel=1e-3)
    _, large = streaming.recommendations_drift(same, catalogue=100_000, k=5)  # 5 of the 500 it could have shown
    assert not large.passed and large.severity == dg.AssetCheckSeverity.ERROR
    assert large.metadata["catalogue_coverage"].value == 5e-05
    varied = [{"recommended_items": [{"id": f"S{5 * n + i}", "score": 0.5} for i in range(5)],
               "enrichment": {"notes": []}} for n in range(100)]
    assert streaming.recommendations_drift(varied, catalogue=100_000, k=5)[1].passed
    monkeypatch.setenv("DRIFT_MIN_SAMPLE", "500")  # fewer events than that: not judged
    _, quiet = streaming.recommendations_drift(same, catalogue=100_000, k=5)
    assert quiet.passed and quiet.description.startswith("not judged: 100 events")
