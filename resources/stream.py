"""The stream of online shopping-session events: a Kinesis data stream, or a local stand-in.

Both backends have the same interface (`EventStream`): `put` payloads, and `read` the records after a
checkpoint, which maps each shard to the position after the last record read. Readers keep the checkpoint
(the archive sensor keeps it in its cursor) and hand it back on the next read, so nothing is read twice or
skipped.

- `KinesisEventStream`: boto3 against a Kinesis stream (`AWS_ENDPOINT_URL` honoured), every shard read with
  shard iterators from its last sequence number (`AFTER_SEQUENCE_NUMBER`) or from `TRIM_HORIZON`.
- `LocalEventStream` (default): an append-only stream of JSON-lines segment files under
  `DATA_DIR/stream/<name>/`, one shard, checkpoints as byte offsets `<segment>:<offset>`. Writers append
  whole lines under an exclusive file lock and roll to a new segment past a size; readers take complete
  lines only, so a concurrent writer is never read half-way.

An event larger than `max_record_bytes` (`MAX_EVENT_BYTES`, 1 MiB by default) is read as a record that
keeps only the payload's first `PREVIEW_BYTES` and its size, so it can be dead-lettered with its reason, and
reading goes on past it. A line of the local stream that is not one of its own records is read the same
way (its raw bytes as the payload), never blocking the lines after it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from resources.aws_clients import SENSOR_TIMEOUTS, aws_client
from resources.settings import DEFAULTS
from resources.stream_record import PREVIEW_BYTES, StreamRecord  # noqa: F401  (re-exported)

LOCAL_SHARD = "shard-000000000000"
DEFAULT_MAX_RECORD_BYTES = DEFAULTS["max_event_bytes"]  # Kinesis' own default record size limit


class EventStream(dg.ConfigurableResource, ABC):
    """Where session events arrive."""

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # larger events are read as previews, to be dead-lettered

    @abstractmethod
    def put(self, payloads: Sequence[bytes], partition_keys: Sequence[str] | None = None) -> int:
        """Append payloads to the stream; returns how many were accepted."""

    @abstractmethod
    def read(self, checkpoint: Mapping[str, str], max_records: int = 10_000) -> tuple[list[StreamRecord], dict[str, str]]:
        """Records after `checkpoint` (at most `max_records`, in order per shard) and the checkpoint after them."""

    @abstractmethod
    def describe(self) -> str: ...


# --- local backend ------------------------------------------------------------------------------------------


def _segment_name(number: int) -> str:
    return f"segment-{number:08d}.jsonl"


def _position(checkpoint: str | None) -> tuple[int, int]:
    if not checkpoint:
        return 1, 0
    segment, _, offset = checkpoint.partition(":")
    return int(segment), int(offset)


class LocalEventStream(EventStream):
    """An append-only JSON-lines stream in a folder (the local stand-in for Kinesis)."""

    root: str
    segment_bytes: int = 64 * 1024 * 1024

    def _dir(self) -> Path:
        path = Path(self.root)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def describe(self) -> str:
        return f"local stream in {self.root}"

    def _segments(self) -> list[int]:
        return sorted(int(p.name[8:16]) for p in self._dir().glob("segment-*.jsonl"))

    def put(self, payloads: Sequence[bytes], partition_keys: Sequence[str] | None = None) -> int:
        if not payloads:
            return 0
        folder = self._dir()
        with open(folder / ".writer.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time; readers need no lock
            segments = self._segments() or [1]
            current = folder / _segment_name(segments[-1])
            if current.exists() and current.stat().st_size >= self.segment_bytes:
                current = folder / _segment_name(segments[-1] + 1)
            arrival = datetime.now(timezone.utc).isoformat()
            # a writer that died mid-line left a torn last line: end it, so the next event starts a line of its own
            lines = ["\n"] if _ends_torn(current) else []
            for payload in payloads:
                try:
                    body = {"data": payload.decode("utf-8")}
                except UnicodeDecodeError:
                    body = {"data_b64": base64.b64encode(payload).decode("ascii")}
                lines.append(json.dumps({"arrival": arrival, **body}, separators=(",", ":")) + "\n")
            with open(current, "ab") as handle:
                handle.write("".join(lines).encode("utf-8"))  # whole lines in one write
                handle.flush()
                os.fsync(handle.fileno())
        return len(payloads)

    def read(self, checkpoint: Mapping[str, str], max_records: int = 10_000) -> tuple[list[StreamRecord], dict[str, str]]:
        folder = self._dir()
        segment, offset = _position(checkpoint.get(LOCAL_SHARD))
        records: list[StreamRecord] = []
        while len(records) < max_records:
            path = folder / _segment_name(segment)
            got, offset = self._read_segment(path, segment, offset, max_records - len(records))
            records.extend(got)
            if got:
                continue
            # nothing more in this segment; a later segment means this one is final, but read it once more:
            # the writer may have appended to it just before moving on
            if not any(s > segment for s in self._segments()):
                break
            got, offset = self._read_segment(path, segment, offset, max_records - len(records))
            records.extend(got)
            if not got:
                segment, offset = segment + 1, 0
        return records, {**checkpoint, LOCAL_SHARD: f"{segment:08d}:{offset:012d}"}

    def _read_segment(self, path: Path, segment: int, offset: int, limit: int) -> tuple[list[StreamRecord], int]:
        if not path.exists():
            return [], offset
        # a chunk holds any line of an acceptable event (JSON escapes make a line up to 6x its payload)
        chunk_bytes = max(8 * 1024 * 1024, 6 * self.max_record_bytes + 4096)
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read(chunk_bytes)
            records = []
            position = 0
            while len(records) < limit:
                end = chunk.find(b"\n", position)
                if end >= 0:
                    if chunk[position:end].strip():  # a blank line (a writer's repair of a torn line) is no event
                        records.append(self._line_record(chunk[position:end], segment, offset + position))
                    position = end + 1
                    continue
                if position == 0 and len(chunk) == chunk_bytes:
                    # a whole chunk without a line end: one line longer than any acceptable event
                    line_end = _find_line_end(handle)
                    if line_end is None:
                        break  # still being written
                    records.append(_oversize_line(chunk, segment, offset, line_end - offset))
                    return records, line_end + 1
                break  # a line still being written: wait for it
        return records, offset + position

    def _line_record(self, line: bytes, segment: int, position: int) -> StreamRecord:
        sequence = f"{segment:08d}:{position:012d}"
        try:
            item = json.loads(line)
            data = base64.b64decode(item["data_b64"]) if "data_b64" in item else item["data"].encode("utf-8")
            arrival = item["arrival"]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            # not a line `put` wrote (another writer, a damaged file): its bytes are the event, to be dead-lettered
            return StreamRecord.limited(LOCAL_SHARD, sequence, line, datetime.now(timezone.utc), self.max_record_bytes)
        return StreamRecord.limited(LOCAL_SHARD, sequence, data, _arrival(arrival), self.max_record_bytes)


def _arrival(text) -> datetime:
    """A stored arrival time in UTC; when it cannot be read as one (a foreign writer), the time it is read."""
    try:
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, TypeError, OverflowError):
        return datetime.now(timezone.utc)


_ARRIVAL = re.compile(rb'^\{"arrival":"([^"]{1,64})"')


def _ends_torn(path: Path) -> bool:
    """Whether the segment's last line has no line end (its writer died mid-write)."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _find_line_end(handle) -> int | None:
    """The file offset of the next line end from the handle's position, None if the line is not complete."""
    while True:
        start = handle.tell()
        block = handle.read(8 * 1024 * 1024)
        if not block:
            return None
        found = block.find(b"\n")
        if found >= 0:
            return start + found


def _oversize_line(head: bytes, segment: int, offset: int, length: int) -> StreamRecord:
    """A record for a line too long to read whole: its first bytes and its size, arrival from its start."""
    match = _ARRIVAL.match(head)
    arrival = _arrival(match.group(1).decode("ascii", "replace")) if match else datetime.now(timezone.utc)
    return StreamRecord(LOCAL_SHARD, f"{segment:08d}:{offset:012d}", head[:PREVIEW_BYTES], arrival, length)


# --- Kinesis backend ----------------------------------------------------------------------------------------


class KinesisEventStream(EventStream):
    """A Kinesis data stream (`KINESIS_STREAM_NAME`), read shard by shard with shard iterators."""

    stream_name: str
    region_name: str = DEFAULTS["aws_region"]
    endpoint_url: str | None = None
    put_retries: int = 5
    _kinesis: Any = PrivateAttr(default=None)

    def _client(self):
        """One client per resource instance, with short timeouts: the stream is read from a sensor tick."""
        if self._kinesis is None:
            self._kinesis = aws_client("kinesis", region_name=self.region_name, endpoint_url=self.endpoint_url,
                                       **SENSOR_TIMEOUTS)
        return self._kinesis

    def describe(self) -> str:
        return f"Kinesis stream {self.stream_name} ({self.region_name})"

    def put(self, payloads: Sequence[bytes], partition_keys: Sequence[str] | None = None) -> int:
        client = self._client()
        keys = list(partition_keys) if partition_keys is not None else [str(i) for i in range(len(payloads))]
        pending = [{"Data": p, "PartitionKey": k or "0"} for p, k in zip(payloads, keys)]
        accepted = 0
        for start in range(0, len(pending), 500):  # PutRecords takes at most 500 records
            batch = pending[start:start + 500]
            for attempt in range(self.put_retries + 1):
                response = client.put_records(StreamName=self.stream_name, Records=batch)
                failed = [entry for entry, result in zip(batch, response["Records"]) if "ErrorCode" in result]
                accepted += len(batch) - len(failed)
                if not failed:
                    break
                if attempt == self.put_retries:
                    raise RuntimeError(f"{len(failed)} record(s) refused by {self.describe()} after "
                                       f"{self.put_retries} retries: {response['Records'][0].get('ErrorMessage')}")
                batch = failed
                time.sleep(0.2 * 2**attempt)  # throughput exceeded: back off before retrying the rest
        return accepted

    def shards(self) -> list[str]:
        client = self._client()
        shards, token = [], None
        while True:
            page = client.list_shards(NextToken=token) if token else client.list_shards(StreamName=self.stream_name)
            shards.extend(shard["ShardId"] for shard in page["Shards"])
            token = page.get("NextToken")
            if not token:
                return shards

    def read(self, checkpoint: Mapping[str, str], max_records: int = 10_000) -> tuple[list[StreamRecord], dict[str, str]]:
        client = self._client()
        records: list[StreamRecord] = []
        after = dict(checkpoint)
        for shard in self.shards():
            if len(records) >= max_records:
                break
            if shard in after:
                iterator = client.get_shard_iterator(StreamName=self.stream_name, ShardId=shard,
                                                     ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                                                     StartingSequenceNumber=after[shard])["ShardIterator"]
            else:
                iterator = client.get_shard_iterator(StreamName=self.stream_name, ShardId=shard,
                                                     ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            empty_pages = 0
            while iterator and len(records) < max_records:
                page = client.get_records(ShardIterator=iterator, Limit=min(10_000, max_records - len(records)))
                for item in page["Records"]:
                    arrival = item["ApproximateArrivalTimestamp"]
                    records.append(StreamRecord.limited(shard, item["SequenceNumber"], item["Data"],
                                                        arrival.astimezone(timezone.utc), self.max_record_bytes))
                    after[shard] = item["SequenceNumber"]
                iterator = page.get("NextShardIterator")
                if page.get("MillisBehindLatest", 0) == 0:
                    break  # caught up with this shard
                # behind but empty: Kinesis returns empty pages across gaps in a shard; keep going a while
                empty_pages = 0 if page["Records"] else empty_pages + 1
                if empty_pages >= 25:
                    break
        return records, after
