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
`DATABASE_URL`; the model files from `ARTIFACTS_URI`; `MAX_EVENT_BYTES`, `AWS_REGION`. Connections
and the user tower are kept between invocations of a warm container, and the live model version is checked
on each invocation.

The package imports no Dagster, pandas or torch: customers are embedded in numpy from the version's
`model/user_tower.json`, and the nearest items come from `resources.vector_queries` over psycopg, so the
deployment package (`deploy/lambda/build.py`) stays far below Lambda's 250 MB.
"""

from __future__ import annotations

import base64
import json
import logging

import psycopg

from recsys_assets.enrichment import DEFAULT_K, TowerEmbedder, enrich_with_live_model, load_user_tower
from recsys_assets.model_code.numpy_tower import MAX_FILE_BYTES
from resources.artifact_keys import join_key, read_artifact, version_prefix
from resources.credentials import DatabaseUnavailableError, connect_or_explain, credentials_from_secret
from resources.settings import ConfigurationError, PlatformSettings
from resources.vector_queries import ReadOnlyNearestItems

logger = logging.getLogger(__name__)
_state: dict = {}
CONNECT_TIMEOUT_SECONDS = 10


class FirehoseEnvelopeError(ValueError):
    """The invocation is not a Firehose transformation request; names what is wrong, never record data."""


def _connector(settings: PlatformSettings):
    """How the Lambda opens a database connection: the read-only user of `READONLY_DATABASE_SECRET_ID` (the
    deployed form), else `READONLY_DATABASE_URL`, else `DATABASE_URL`. Sessions are read-only and their
    statements time out after `READONLY_STATEMENT_TIMEOUT_SECONDS`."""
    options = f"-c statement_timeout={settings.readonly_statement_timeout_seconds * 1000}"
    timeout = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}  # well within the function's own timeout
    if settings.readonly_secret_id:
        from resources.aws_clients import aws_client

        secret_id = settings.readonly_secret_id
        client = aws_client("secretsmanager", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
        credentials = credentials_from_secret(secret_id, client.get_secret_value(SecretId=secret_id).get("SecretString"))
        describe = f"the database in Secrets Manager secret {secret_id!r}"
        return lambda: connect_or_explain(describe=describe, autocommit=True, options=options, **timeout,
                                          **credentials)
    for name, url in (("READONLY_DATABASE_URL", settings.readonly_database_url), ("DATABASE_URL", settings.database_url)):
        if url:
            return lambda: connect_or_explain(url, describe=f"given by {name}", autocommit=True, options=options,
                                              **timeout)
    raise ConfigurationError("the Firehose Lambda needs READONLY_DATABASE_SECRET_ID, READONLY_DATABASE_URL or "
                             "DATABASE_URL: the database holding the live embeddings tables")


def _setup() -> dict:
    if "store" not in _state:
        settings = PlatformSettings.from_env()
        s3 = None
        if settings.artifacts_uri.startswith("s3://"):
            from resources.aws_clients import aws_client

            s3 = aws_client("s3", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)
        _state.update(settings=settings, s3=s3, store=ReadOnlyNearestItems(_connector(settings)), embedders={})
    return _state


def _embedder(version: str) -> TowerEmbedder:
    """The model version's user tower in numpy, read once per warm container."""
    embedders = _state["embedders"]
    if version not in embedders:
        settings, prefix = _state["settings"], version_prefix(version)

        def read(name: str) -> bytes:
            return read_artifact(settings.artifacts_uri, join_key(prefix, name), region_name=settings.aws_region,
                                 endpoint_url=settings.aws_endpoint_url, client=_state["s3"],
                                 max_bytes=MAX_FILE_BYTES)

        where = f"{settings.artifacts_uri.rstrip('/')}/{prefix}"
        embedders[version] = TowerEmbedder(load_user_tower(read, version, where), version)
    return embedders[version]


def reset() -> None:
    """Close connections and forget cached state (a cold start)."""
    store = _state.get("store")
    _state.clear()
    if store is not None:
        store.close()


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
        _version, outcome, _latencies = enrich_with_live_model(items, _embedder, state["store"], DEFAULT_K,
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
