"""The enrichment as a Kinesis Data Firehose transformation Lambda (the lab's streaming path).

``lambda_handler(event, context)`` takes Firehose's ``{"records": [{"recordId", "data"}]}`` (data base64) and
returns ``{"records": [{"recordId", "result", "data"}]}``: ``Ok`` with the enriched record as one JSON line,
``ProcessingFailed`` with the original data for events that cannot be enriched (Firehose routes those to
its error output), ``Dropped`` for empty records. The vector database, the artifact store and the model
version come from the same environment variables as everywhere else (``DATABASE_URL``, ``ARTIFACTS_URI``,
...; see README); connections and the user tower are kept between invocations of a warm container, and
the live model version is checked on each invocation.
"""

from __future__ import annotations

import base64
import json
import logging
from contextlib import ExitStack

from recsys_assets.enrichment import DEFAULT_K, enrich_batch
from recsys_assets.streaming import embedder_for

logger = logging.getLogger(__name__)
_state: dict = {}


def _resources():
    if "resources" not in _state:
        from resources.settings import open_resources

        stack = ExitStack()
        _state["resources"] = stack.enter_context(open_resources())
        _state["stack"] = stack
    return _state["resources"]


def reset() -> None:
    """Close connections and forget cached state (a cold start)."""
    stack = _state.pop("stack", None)
    _state.clear()
    if stack is not None:
        stack.close()


def lambda_handler(event: dict, context=None) -> dict:
    resources = _resources()
    store, artifacts = resources.pgvector, resources.artifacts
    version = store.active_version(store.item_table)
    if version is None:
        raise RuntimeError(f"no embeddings are loaded in {store.item_table}; nothing to recommend from")
    embedder = embedder_for(artifacts, version)
    records = event.get("records") or []
    results: dict[str, dict] = {}
    items = []
    for record in records:
        record_id = record["recordId"]
        try:
            payload = base64.b64decode(record.get("data") or "", validate=True)
        except ValueError:
            results[record_id] = {"recordId": record_id, "result": "ProcessingFailed", "data": record.get("data", "")}
            logger.warning("record %s: data is not base64", record_id)
            continue
        if not payload.strip():
            results[record_id] = {"recordId": record_id, "result": "Dropped", "data": record.get("data", "")}
            continue
        items.append((record_id, payload))
    outcome = enrich_batch(items, embedder, store, DEFAULT_K)
    for record_id, enriched in outcome.records:
        line = json.dumps(enriched, separators=(",", ":")) + "\n"
        results[record_id] = {"recordId": record_id, "result": "Ok",
                              "data": base64.b64encode(line.encode()).decode("ascii")}
    originals = {record["recordId"]: record.get("data", "") for record in records}
    for record_id, reason in outcome.rejected:
        logger.warning("record %s not enriched: %s", record_id, reason)
        results[record_id] = {"recordId": record_id, "result": "ProcessingFailed", "data": originals[record_id]}
    return {"records": [results[record["recordId"]] for record in records]}
