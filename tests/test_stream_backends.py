"""Both stream backends: the local JSON-lines stream (with a concurrent writer) and Kinesis on moto's server."""

import json
import threading
from datetime import datetime, timezone

import pytest

from resources.stream import LOCAL_SHARD, KinesisEventStream, LocalEventStream


def payloads(start, count):
    return [json.dumps({"n": i}).encode() for i in range(start, start + count)]


def numbers(records):
    return [json.loads(r.data)["n"] for r in records]


def test_local_stream_reads_from_checkpoints_across_segments(tmp_path):
    stream = LocalEventStream(root=str(tmp_path / "s"), segment_bytes=2_000)  # tiny segments: many of them
    for start in range(0, 300, 30):
        stream.put(payloads(start, 30))
    assert len(list((tmp_path / "s").glob("segment-*.jsonl"))) > 3
    seen, checkpoint = [], {}
    while True:
        records, checkpoint = stream.read(checkpoint, max_records=47)
        if not records:
            break
        seen.extend(records)
    assert numbers(seen) == list(range(300))
    assert all(r.shard == LOCAL_SHARD for r in seen)
    assert [r.sequence for r in seen] == sorted(r.sequence for r in seen)
    stream.put(payloads(300, 5))
    records, _after = stream.read(checkpoint)
    assert numbers(records) == list(range(300, 305))  # only what came after the checkpoint


def test_local_stream_ignores_a_line_still_being_written_and_keeps_odd_payloads(tmp_path):
    stream = LocalEventStream(root=str(tmp_path / "s"))
    stream.put([b"\xff\xfe not utf-8", b"{broken json"])
    records, checkpoint = stream.read({})
    assert [r.data for r in records] == [b"\xff\xfe not utf-8", b"{broken json"]
    segment = next((tmp_path / "s").glob("segment-*.jsonl"))
    with open(segment, "ab") as handle:
        handle.write(b'{"arrival": "2026-11-22T10:00:00+00:00", "da')  # a writer caught mid-line
    records, later = stream.read(checkpoint)
    assert records == [] and later == checkpoint
    with open(segment, "ab") as handle:
        handle.write(b'ta": "late"}\n')
    records, _ = stream.read(checkpoint)
    assert [r.data for r in records] == [b"late"]


def test_local_stream_with_a_concurrent_writer_loses_and_repeats_nothing(tmp_path):
    writer_stream = LocalEventStream(root=str(tmp_path / "s"), segment_bytes=20_000)
    reader_stream = LocalEventStream(root=str(tmp_path / "s"), segment_bytes=20_000)
    done = threading.Event()

    def write():
        for start in range(0, 5_000, 50):
            writer_stream.put(payloads(start, 50))
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen, checkpoint = [], {}
    while True:
        finished = done.is_set()
        records, checkpoint = reader_stream.read(checkpoint, max_records=333)
        seen.extend(records)
        if finished and not records:
            break
    thread.join()
    assert numbers(seen) == list(range(5_000))


@pytest.fixture
def kinesis(moto, boto_client):
    client = boto_client("kinesis")
    client.create_stream(StreamName="session-events", ShardCount=2)
    return KinesisEventStream(stream_name="session-events", region_name="us-east-1", endpoint_url=moto)


def test_kinesis_reads_every_shard_from_its_checkpoint(kinesis):
    assert len(kinesis.shards()) == 2
    assert kinesis.put(payloads(0, 40), [f"session-{i}" for i in range(40)]) == 40
    records, checkpoint = kinesis.read({})
    assert sorted(numbers(records)) == list(range(40))
    assert {r.shard for r in records} == set(kinesis.shards())  # spread over both shards
    assert set(checkpoint) == set(kinesis.shards())
    again, same = kinesis.read(checkpoint)
    assert again == [] and same == checkpoint
    kinesis.put(payloads(40, 10), [f"session-{i}" for i in range(40, 50)])
    records, checkpoint = kinesis.read(checkpoint)
    assert sorted(numbers(records)) == list(range(40, 50))


def test_kinesis_read_in_limited_steps_still_gets_everything_once(kinesis):
    kinesis.put(payloads(0, 30), [f"k{i}" for i in range(30)])
    seen, checkpoint = [], {}
    for _ in range(20):
        records, checkpoint = kinesis.read(checkpoint, max_records=7)
        seen.extend(records)
        if not records:
            break
    assert sorted(numbers(seen)) == list(range(30)) and len(seen) == 30


def test_local_stream_reads_past_oversize_events_and_foreign_lines(tmp_path):
    """An event over the limit comes back as a preview with its size (to be dead-lettered), one longer than
    a whole read chunk too, and reading goes on past both, as past a line `put` did not write."""
    stream = LocalEventStream(root=str(tmp_path / "s"), max_record_bytes=4_096)
    stream.put(payloads(0, 2))
    stream.put([b"x" * 10_000])  # over the limit, inside one read chunk
    stream.put(payloads(2, 1))
    huge = b'{"session_id": "' + b"y" * (9 * 1024 * 1024) + b'"}'  # longer than a read chunk (8 MiB)
    stream.put([huge])
    segment = next((tmp_path / "s").glob("segment-*.jsonl"))
    with open(segment, "ab") as handle:
        handle.write(b"a line some other program wrote\n")
    stream.put(payloads(3, 2))
    records, checkpoint = stream.read({})
    assert len(records) == 8, [(r.oversize_bytes, len(r.data)) for r in records]
    assert numbers([records[i] for i in (0, 1, 3, 6, 7)]) == [0, 1, 2, 3, 4]
    assert records[2].oversize_bytes == 10_000 and records[2].data == b"x" * 1024
    assert records[4].oversize_bytes > len(huge) and len(records[4].data) == 1024  # the stored line's size
    assert records[3].arrival <= records[4].arrival <= records[6].arrival  # read off the line's start
    assert records[5].data == b"a line some other program wrote" and not records[5].oversize_bytes
    again, same = stream.read(checkpoint)
    assert again == [] and same == checkpoint


def test_local_stream_waits_for_an_oversize_line_still_being_written(tmp_path):
    stream = LocalEventStream(root=str(tmp_path / "s"), max_record_bytes=4_096)
    stream.put(payloads(0, 1))
    records, checkpoint = stream.read({})
    segment = next((tmp_path / "s").glob("segment-*.jsonl"))
    with open(segment, "ab") as handle:
        handle.write(b'{"arrival":"2026-11-22T10:00:00+00:00","data":"' + b"z" * (9 * 1024 * 1024))
    records, later = stream.read(checkpoint)
    assert records == [] and later == checkpoint  # not complete yet: nothing read, nothing skipped
    with open(segment, "ab") as handle:
        handle.write(b'"}\n')
    stream.put(payloads(1, 1))
    records, _ = stream.read(checkpoint)
    assert records[0].oversize_bytes > 9 * 1024 * 1024 and numbers(records[1:]) == [1]
    assert records[0].arrival.isoformat() == "2026-11-22T10:00:00+00:00"


def test_kinesis_oversize_records_are_previews(moto, boto_client):
    boto_client("kinesis").create_stream(StreamName="small", ShardCount=1)
    stream = KinesisEventStream(stream_name="small", region_name="us-east-1", endpoint_url=moto, max_record_bytes=2_048)
    stream.put([*payloads(0, 1), b"w" * 5_000, *payloads(1, 1)], ["a", "a", "a"])
    records, _checkpoint = stream.read({})
    assert [r.oversize_bytes for r in records] == [0, 5_000, 0]
    assert records[1].data == b"w" * 1024 and numbers([records[0], records[2]]) == [0, 1]


def test_local_stream_lines_with_odd_arrivals_blank_lines_and_a_torn_last_line(tmp_path):
    """What a damaged segment holds never stops reading: an arrival no clock can hold is read as the time it
    is read, blank lines are no events, and a line a dead writer tore is ended before the next event."""
    stream = LocalEventStream(root=str(tmp_path / "s"))
    stream.put(payloads(0, 1))
    segment = next((tmp_path / "s").glob("segment-*.jsonl"))
    with open(segment, "ab") as handle:
        handle.write(b'{"arrival":"9999-12-31T23:30:00-05:00","data":"{\\"n\\": 1}"}\n')  # beyond UTC's range
        handle.write(b'{"arrival":"2026-03-01T10:00:00","data":"{\\"n\\": 2}"}\n')  # no offset: taken as UTC
        handle.write(b"\n   \r\n")
        handle.write(b'{"arrival":"2026-11-22T10:00:00+00:00","data":"{\\"n\\": 99')  # a writer died here
    stream.put(payloads(3, 1))
    before = datetime.now(timezone.utc)
    records, _checkpoint = stream.read({})
    assert [r.data for r in records][:3] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert records[1].arrival >= before and records[2].arrival == datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
    torn, last = records[3:]
    assert torn.data.startswith(b'{"arrival":"2026-11-22T10:00:00+00:00","data":"{\\"n\\": 99')  # dead-lettered
    assert numbers([last]) == [3]  # the next event is whole, not glued to the torn line
