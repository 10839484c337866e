"""`model_artifacts_sensor`: load each new complete model version's embeddings, exactly once.

The cursor is the set of versions already requested, not a key or a timestamp: a version counts once it is
complete (``manifest.json`` present and every file it lists present), whatever order its files arrived in,
so a half-uploaded version waits and out-of-order writes are never skipped (the failure modes of key-order
and ``since_last_modified`` cursors). ``run_key`` makes a replayed tick harmless as well.
"""

import json

import dagster as dg

from recsys_assets import embeddings
from recsys_assets.jobs import embeddings_load_job, embeddings_run_config
from resources.artifacts import ArtifactStore


def read_cursor(cursor: str | None) -> set[str]:
    return set(json.loads(cursor)["requested"]) if cursor else set()


@dg.sensor(job=embeddings_load_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def model_artifacts_sensor(context: dg.SensorEvaluationContext, artifacts: ArtifactStore) -> dg.SensorResult:
    """Watches ``ARTIFACTS_URI/ml-artifacts/`` (a folder, or S3 through dagster-aws `get_objects`)."""
    requested = read_cursor(context.cursor)
    complete = embeddings.complete_versions(artifacts)
    new = sorted((v for v in complete if v not in requested), key=lambda v: (complete[v].published_at, v))
    if not new:
        return dg.SensorResult(skip_reason=f"no new complete model version ({len(complete)} known)",
                               cursor=context.cursor)
    for version in new:
        context.log.info(f"new complete model version {version}")
    # forget versions deleted from the store so the cursor does not grow forever
    cursor = json.dumps({"requested": sorted((requested & set(complete)) | set(new))})
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"embeddings-{version}", run_config=embeddings_run_config(version),
                          tags={"model_version": version})
            for version in new
        ],
        cursor=cursor,
    )
