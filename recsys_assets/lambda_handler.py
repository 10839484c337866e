"""The enrichment as a Kinesis Data Firehose transformation Lambda (the lab's streaming path).

``lambda_handler(event, context)`` takes Firehose's ``{"records": [{"recordId", "data"}]}`` (data base64) and
returns ``{"records": [{"recordId", "result", "data"}]}``, one result per record, in order: ``Ok`` with the
enriched record as one JSON line, ``ProcessingFailed`` with the original data for records that cannot be
enriched (Firehose routes those to its error output: data that is not a base64 string, not JSON, over
``MAX_EVENT_BYTES``, or an event a check refuses), ``Dropped`` for empty records.

Nothing in a record's content makes the handler raise; only a malformed envelope does (no ``records``
list, a record without a string ``recordId``, or one ``recordId`` twice: Firehose could not match the
answers to its records), and having no embeddings loaded (Firehose retries the batch). The user tower and
the items are always of one model version, the live one. The vector database, the artifact store and the
limits come from the same environment variables as everywhere else (``DATABASE_URL``, ``ARTIFACTS_URI``,
``MAX_EVENT_BYTES``, ...; see README); connections and the user tower are kept between invocations of a
warm container, and the live model version is checked on each invocation.
"""

from __future__ import annotations

import base64
import json
import logging
from contextlib import ExitStack

from recsys_assets.enrichment import DEFAULT_K
from recsys_assets.streaming import enrich_with_live_model

logger = logging.getLogger(__name__)
_state: dict = {}


class FirehoseEnvelopeError(ValueError):
    """The invocation is not a Firehose transformation request; names what is wrong, never record data."""


def _resources():
    if "resources" not in _state:
        from resources.settings import PlatformSettings, open_resources

        settings = PlatformSettings.from_env()
        stack = ExitStack()
        _state["resources"] = stack.enter_context(open_resources(settings))
        _state["max_event_bytes"] = settings.max_event_bytes
        _state["stack"] = stack
    return _state["resources"]


def reset() -> None:
    """Close connections and forget cached state (a cold start)."""
    stack = _state.pop("stack", None)
    _state.clear()
    if stack is not None:
        stack.close()


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
    resources = _resources()
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
    _version, outcome, _latencies = enrich_with_live_model(items, resources.artifacts, resources.pgvector, DEFAULT_K,
                                                           batch_size=max(1, len(items)),
                                                           max_bytes=_state["max_event_bytes"])
    for record_id, enriched in outcome.records:
        line = json.dumps(enriched, separators=(",", ":")) + "\n"
        results[record_id] = _result(record_id, "Ok", base64.b64encode(line.encode()).decode("ascii"))
    originals = {record["recordId"]: record["data"] for record in records}
    for record_id, reason in outcome.rejected:
        logger.warning("record %s not enriched: %s", record_id, reason)
        results[record_id] = _result(record_id, "ProcessingFailed", originals[record_id])
    return {"records": [results[record["recordId"]] for record in records]}
