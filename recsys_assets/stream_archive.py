"""The stream archive: session events kept by hour, as `session_events_sensor` writes them and the hourly
`recommendations` read them, and the pieces both need (the hour's folder and partition key, dead letters,
the user tower of a published model version).

Layout, Firehose's: `raw_events/YYYY/MM/DD/HH/<shard>-<first>-<last>.jsonl` per archived batch,
`dead_letter/...` for what cannot be enriched. The Dagster assets and the sensor live in
`recsys_assets.streaming`; this module imports neither Dagster nor torch (nor pandas), so light paths (the
Firehose Lambda's tests, benchmarks, tools) can use it without loading the recommender's definitions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from recsys_assets.enrichment import TowerEmbedder, load_user_tower
from resources.artifact_keys import join_key, version_prefix
from resources.stream_record import StreamRecord

if TYPE_CHECKING:
    from resources.artifacts import ArtifactStore

RAW_PREFIX = "raw_events"
DEAD_LETTER_PREFIX = "dead_letter"


def hour_folder(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y/%m/%d/%H")


# the session_hours partitions' keys: the UTC hour events arrived in, "2026-11-26-14:00"
HOUR_FORMAT = "%Y-%m-%d-%H:%M"


def hour_partition(moment: datetime) -> str:
    """The key of the hour `moment` falls in."""
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0).strftime(HOUR_FORMAT)


def partition_hour(partition: str) -> datetime:
    """The hour a partition key names; a clear error for a key that is not one (added by hand, say)."""
    try:
        hour = datetime.strptime(partition, HOUR_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        hour = None
    if hour is None or hour.minute != 0:
        raise ValueError(f"partition {partition!r} of session_hours is not an hour such as 2026-11-26-14:00 (UTC)")
    return hour


def _safe(sequence: str) -> str:
    return sequence.replace(":", "_")


def batch_key(hour: datetime, shard: str, first: str, last: str) -> str:
    return join_key(RAW_PREFIX, hour_folder(hour), f"{shard}-{_safe(first)}-{_safe(last)}.jsonl")


def archive(artifacts: ArtifactStore, records: list[StreamRecord]) -> dict[str | None, list[str]]:
    """Write `records` as raw batches, one per (hour, shard); returns {hour partition: [batch keys]}.

    A batch is named by shard and sequence range; an earlier batch of the same hour and shard starting at
    the same sequence (a tick that crashed before its cursor was kept, then read again) is replaced. Records
    whose arrival is in a future hour (a clock that runs ahead) are dead-lettered under
    `dead_letter/outside_partitions/` instead, with the reason, and counted under the key `None`.
    """
    groups: dict[tuple[str, str], list[StreamRecord]] = defaultdict(list)
    outside: list[StreamRecord] = []
    latest = datetime.now(timezone.utc)
    for record in records:
        if record.arrival.replace(minute=0, second=0, microsecond=0) <= latest:
            groups[(hour_partition(record.arrival), record.shard)].append(record)
        else:
            outside.append(record)
    written: dict[str | None, list[str]] = defaultdict(list)
    for (partition, shard), batch in sorted(groups.items()):
        hour = batch[0].arrival
        key = batch_key(hour, shard, batch[0].sequence, batch[-1].sequence)
        artifacts.write_text(key, "".join(json.dumps(r.to_json()) + "\n" for r in batch))
        replayed = f"{shard}-{_safe(batch[0].sequence)}-"
        superseded = [info.key for info in artifacts.list(join_key(RAW_PREFIX, hour_folder(hour)) + "/")
                      if info.key != key and info.key.rsplit("/", 1)[-1].startswith(replayed)]
        artifacts.delete(superseded)
        written[partition].append(key)
    if outside:
        reason = (f"arrival in a future hour (after {latest:%Y-%m-%d %H:%M} UTC, when it was archived): no hour "
                  "can hold it yet")
        key = join_key(DEAD_LETTER_PREFIX, "outside_partitions",
                       f"{outside[0].shard}-{_safe(outside[0].sequence)}-{_safe(outside[-1].sequence)}.jsonl")
        artifacts.write_text(key, "".join(json.dumps(dead_letter_line(r, reason)) + "\n" for r in outside))
        written[None].append(key)
    return dict(written)


def archived_records(artifacts: ArtifactStore, hour: datetime) -> tuple[list[StreamRecord], int]:
    """The hour's archived events, deduplicated by (shard, sequence) and in stream order; and how many
    duplicates were dropped."""
    seen: dict[tuple[str, str], StreamRecord] = {}
    total = 0
    for info in artifacts.list(join_key(RAW_PREFIX, hour_folder(hour)) + "/"):
        for line in artifacts.read_text(info.key).splitlines():
            if line.strip():
                record = StreamRecord.from_json(json.loads(line))
                seen[(record.shard, record.sequence)] = record
                total += 1
    ordered = sorted(seen.values(), key=lambda r: (r.shard, _sequence_order(r.sequence)))
    return ordered, total - len(ordered)


def _sequence_order(sequence: str):
    return (0, int(sequence), "") if sequence.isdigit() else (1, 0, sequence)  # Kinesis: numbers; local: offsets


_embedders: dict[tuple[str, str], TowerEmbedder] = {}


def embedder_for(artifacts: ArtifactStore, version: str) -> TowerEmbedder:
    """The user tower of a published model version, in numpy (read once per process; see
    `enrichment.load_user_tower`)."""
    cache_key = (artifacts.uri(), version)
    if cache_key not in _embedders:
        prefix = version_prefix(version)
        tower = load_user_tower(lambda name: artifacts.read_bytes(join_key(prefix, name)), version,
                                artifacts.uri(prefix), torch_fallback=True)
        _embedders[cache_key] = TowerEmbedder(tower, version)
    return _embedders[cache_key]


def oversize_reason(record: StreamRecord) -> str:
    """The dead-letter reason of an event over the stream's size limit (read as a preview)."""
    return (f"event too large: {record.oversize_bytes:,} bytes, over the stream's limit (MAX_EVENT_BYTES); "
            f"its first {len(record.data):,} bytes are kept here")


def dead_letter_line(record: StreamRecord, reason: str) -> dict:
    """A dead letter: the reason, where the event was in the stream, and its payload (of an oversize event,
    the first bytes and the size)."""
    try:
        payload = {"payload": record.data.decode("utf-8")}
    except UnicodeDecodeError:
        payload = {"payload_base64": record.to_json()["data"]}
    if record.oversize_bytes:
        payload.update(payload_bytes=record.oversize_bytes, payload_truncated=True)
    return {"reason": reason, "shard": record.shard, "sequence": record.sequence,
            "arrival": record.arrival.isoformat(), **payload}
