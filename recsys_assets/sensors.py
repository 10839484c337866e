"""The recommender's sensors.

`session_events_sensor`: archives new session events and requests each hour's `recommendations` run (see
`recsys_assets.streaming`).

`model_artifacts_sensor`: register each new complete model version, and (policy `newest`) load its
embeddings, once per version content.

The cursor maps the versions already requested to their signature (a hash of the manifest and of the listed
files' sizes and times), not a key or a timestamp: a version counts once it is complete (`manifest.json`
present and every file it lists present), whatever order its files arrived in, so a half-uploaded version
waits and out-of-order writes are never skipped (the failure modes of key-order and `since_last_modified`
cursors). A version republished in place gets a new signature and is requested again; the signature is
part of the `run_key`, so a replayed tick requests nothing twice.
"""

import json
from collections import Counter

import dagster as dg

from recsys_assets import embeddings
from recsys_assets.jobs import embeddings_load_job, embeddings_run_config, recommendations_job
from recsys_assets.stream_archive import archive, hour_partition
from recsys_assets.streaming import MAX_EVENTS_PER_TICK, SESSION_HOURS, session_events
from resources.artifacts import ArtifactStore
from resources.metadata import artifact_link
from resources.stream import EventStream
from resources.model_registry import ModelRegistry


def read_cursor(cursor: str | None) -> dict[str, str]:
    return dict(json.loads(cursor)["requested"]) if cursor else {}


@dg.sensor(job=embeddings_load_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches `ml-artifacts/` for complete model versions (however they were published), registers "
                       "each new one in the model registry and, under MODEL_VERSION_POLICY=newest, loads its "
                       "embeddings at once.")
def model_artifacts_sensor(context: dg.SensorEvaluationContext, artifacts: ArtifactStore,
                           registry: ModelRegistry) -> dg.SensorResult:
    """Watches `ARTIFACTS_URI/ml-artifacts/` (a folder, or S3 through dagster-aws `get_objects`).

    Every new complete version enters the model registry (a version a data scientist published by hand is
    registered here, PendingManualApproval). With `MODEL_VERSION_POLICY=newest` its embeddings are loaded
    at once; with `approved` (the default) the approval does that (`model_registry_sensor`).
    """
    requested = read_cursor(context.cursor)
    problems: list[str] = []
    complete = embeddings.complete_versions(artifacts, problems)
    for problem in problems:
        context.log.warning(problem)
    new = sorted((v for v, info in complete.items() if requested.get(v) != info.signature),
                 key=lambda v: (complete[v].published_at, v))
    if not new:
        return dg.SensorResult(skip_reason=f"nothing new under {artifacts.uri(embeddings.ARTIFACTS_PREFIX)}: "
                                           f"{len(complete)} complete version(s), all registered before",
                               cursor=context.cursor)
    done = []
    for version in new:
        package = register_published(registry, artifacts, complete[version])  # the existing one if registered
        done.append(f"{version} ({'republished' if version in requested else 'new'}): {package.group} version "
                    f"{package.version}, {package.status}")
        context.log.info(f"complete model version {done[-1]}")
    # versions deleted from the store are forgotten, so the cursor does not grow forever
    cursor = {v: sig for v, sig in requested.items() if v in complete}
    cursor.update({v: complete[v].signature for v in new})
    if registry.version_policy != "newest":
        return dg.SensorResult(skip_reason=f"registered {'; '.join(done)}. Approve a version to load its embeddings "
                                           "(`mldp registry approve` or model_approval_job).",
                               cursor=json.dumps({"requested": sorted(cursor.items())}))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"embeddings-{version}-{complete[version].signature[:12]}",
                          run_config=embeddings_run_config(version), tags={"model_version": version})
            for version in new
        ],
        cursor=json.dumps({"requested": sorted(cursor.items())}),
    )


def register_published(registry: ModelRegistry, artifacts: ArtifactStore, version: embeddings.CompleteVersion):
    """The version's package: the one `recsys_model` registered, or, for a version that arrived in the bucket
    without going through it, a new one."""
    manifest = version.manifest
    metrics = {k: float(v) for k, v in (manifest.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return registry.register(
        "recsys", model_version=version.version, model_data_url=artifacts.uri(embeddings.version_prefix(version.version)),
        metrics=metrics, data_fingerprint=str((manifest.get("training_data") or {}).get("fingerprint", "")),
        description=f"published to {artifacts.uri(embeddings.version_prefix(version.version))} outside the pipeline",
    )


@dg.sensor(job=recommendations_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Reads new session events from the stream (local files or Kinesis) after its checkpoint, "
                       "archives them by hour, adds each hour as a partition, records it as a materialisation of "
                       "`session_events` and requests the hour's `recommendations` run.")
def session_events_sensor(context: dg.SensorEvaluationContext, events: EventStream,
                          artifacts: ArtifactStore) -> dg.SensorResult:
    """Archives new session events and requests the hours they belong to. The cursor is the stream checkpoint;
    Dagster keeps it, the hours' materialisations and the run requests only after this function returns, that
    is after the archive is written."""
    checkpoint = json.loads(context.cursor)["checkpoint"] if context.cursor else {}
    records, after = events.read(checkpoint, max_records=MAX_EVENTS_PER_TICK)
    if not records:
        return dg.SensorResult(skip_reason=f"no new events in {events.describe()}", cursor=context.cursor)
    written = archive(artifacts, records)
    outside = written.pop(None, [])
    if outside:
        context.log.warning(f"events arrived in a future hour: dead-lettered in {', '.join(outside)}")
    counts = Counter(hour_partition(r.arrival) for r in records)
    summary = ", ".join(f"{counts[partition]} in {partition}" for partition in sorted(written))
    context.log.info(f"archived {len(records)} events from {events.describe()}: {summary or 'none in an hour'}"
                     + (f"; {len(records) - sum(counts[p] for p in written)} in a future hour dead-lettered"
                        if outside else ""))
    return dg.SensorResult(
        # the hours become partitions (an hour that is one already is left as it is), then materialised, then run
        dynamic_partitions_requests=[SESSION_HOURS.build_add_request(sorted(written))] if written else [],
        run_requests=[
            dg.RunRequest(partition_key=partition, run_key=f"{partition}|{'|'.join(keys)}",
                          tags={"events": str(counts[partition])})
            for partition, keys in sorted(written.items())
        ],
        skip_reason=None if written else f"{len(records)} events read, all in a future hour: dead-lettered",
        asset_events=[
            dg.AssetMaterialization(asset_key=session_events.key, partition=partition, metadata={
                "events_archived": counts[partition], "batches": len(keys),
                "batch": artifact_link(artifacts.uri(keys[-1])), "stream": events.describe()})
            for partition, keys in sorted(written.items())
        ],
        cursor=json.dumps({"checkpoint": after}),
    )
