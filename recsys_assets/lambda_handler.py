"""The enrichment as a Kinesis Data Firehose transformation Lambda (the lab's streaming path).

`lambda_handler(event, context)` takes Firehose's `{"records": [{"recordId", "data"}]}` (data base64) and
returns `{"records": [{"recordId", "result", "data"}]}`, one result per record, in order: `Ok` with the
enriched record as one JSON line, `ProcessingFailed` with the original data for records that cannot be
enriched (Firehose routes those to its error output: data that is not a base64 string, not JSON, over
`MAX_EVENT_BYTES`, or an event a check refuses), `Dropped` for empty records.

Nothing in a record's content makes the handler raise; only a malformed envelope does (no `records`
list, a record without a string `recordId`, or one `recordId` twice: Firehose could not match the
answers to its records), having no embeddings loaded, or a database that cannot be reached (Firehose
retries the batch). The user tower and the items are always of one model version, the live one.

Settings come from the same environment variables as everywhere else (see README): the database from
`READONLY_DATABASE_SECRET_ID` (deployed: the read replica's read-only user), `READONLY_DATABASE_URL` or
`DATABASE_URL`; the model files from `ARTIFACTS_URI` (both through `recsys_assets.live_model`, as the
recommendations API reads them); `MAX_EVENT_BYTES`, `ITEM_INDEX_MAX_ITEMS`, `AWS_REGION`. Connections, the
user tower and the live version's item vectors (`resources.item_index`: nearest items ranked in memory) are
kept between invocations of a warm container, and the live model version is checked on each invocation.

The package imports no Dagster, pandas or torch: customers are embedded in numpy from the version's
`model/user_tower.json`, and the nearest items come from `resources.item_index` (numpy) and `resources.vector_queries` (psycopg), so the
deployment package (`deploy/lambda/build.py`) stays far below Lambda's 250 MB.
"""

from __future__ import annotations

import base64
import json
import logging

import psycopg

from recsys_assets.enrichment import DEFAULT_K, enrich_with_live_model
from recsys_assets.live_model import ArtifactTowers, query_connector
from resources.credentials import DatabaseUnavailableError
from resources.item_index import LiveItems
from resources.settings import PlatformSettings
from resources.vector_queries import ReadOnlyNearestItems

logger = logging.getLogger(__name__)
_state: dict = {}


class FirehoseEnvelopeError(ValueError):
    """The invocation is not a Firehose transformation request; names what is wrong, never record data."""


def _setup() -> dict:
    if "items" not in _state:
        settings = PlatformSettings.from_env()
        store = ReadOnlyNearestItems(query_connector(settings))
        _state.update(settings=settings, towers=ArtifactTowers(settings),
                      items=LiveItems(store, settings.item_index_max_items))
    return _state


def reset() -> None:
    """Close connections and forget cached state (a cold start)."""
    items = _state.get("items")
    _state.clear()
    if items is not None:
        items.close()


def firehose_records(event) -> list[dict]:
    """The invocation's records, after checking the envelope (not the records' content)."""
    records = event.get("records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise FirehoseEnvelopeError("not a Firehose transformation event: it has no 'records' list")
    seen: set[str] = set()
    for position, record in enumerate(records):
        record_id = record.get("recordId") if isinstance(record, dict) else None
        if not isinstance(record_id, str) or not record_id:
            raise FirehoseEnvelopeError(f"record {position} of the Firehose event has no string 'recordId'")
        if record_id in seen:
            raise FirehoseEnvelopeError(f"recordId {record_id[:100]!r} appears twice in the Firehose event")
        seen.add(record_id)
    return records


def _result(record_id: str, result: str, data: str) -> dict:
    return {"recordId": record_id, "result": result, "data": data}


def lambda_handler(event: dict, context=None) -> dict:
    records = firehose_records(event)
    state = _setup()
    results: dict[str, dict] = {}
    items = []
    for record in records:
        record_id, data = record["recordId"], record.get("data")
        if not isinstance(data, str):
            results[record_id] = _result(record_id, "ProcessingFailed", "")
            logger.warning("record %s: data is not a base64 string but %s", record_id, type(data).__name__)
            continue
        try:
            payload = base64.b64decode(data, validate=True)
        except ValueError:
            results[record_id] = _result(record_id, "ProcessingFailed", data)
            logger.warning("record %s: data is not base64", record_id)
            continue
        if not payload.strip():
            results[record_id] = _result(record_id, "Dropped", data)
            continue
        items.append((record_id, payload))
    try:
        _version, outcome, _latencies = enrich_with_live_model(items, state["towers"].embedder, state["items"], DEFAULT_K,
                                                               batch_size=max(1, len(items)),
                                                               max_bytes=state["settings"].max_event_bytes)
    except (DatabaseUnavailableError, psycopg.OperationalError):
        reset()  # a connection the server dropped (a failover): the retried invocation opens new ones
        raise
    for record_id, enriched in outcome.records:
        line = json.dumps(enriched, separators=(",", ":")) + "\n"
        results[record_id] = _result(record_id, "Ok", base64.b64encode(line.encode()).decode("ascii"))
    originals = {record["recordId"]: record["data"] for record in records}
    for record_id, reason in outcome.rejected:
        logger.warning("record %s not enriched: %s", record_id, reason)
        results[record_id] = _result(record_id, "ProcessingFailed", originals[record_id])
    return {"records": [results[record["recordId"]] for record in records]}
