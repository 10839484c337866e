"""`model_artifacts_sensor`: register each new complete model version, and (policy `newest`) load its
embeddings, once per version content.

The cursor maps the versions already requested to their signature (a hash of the manifest and of the listed
files' sizes and times), not a key or a timestamp: a version counts once it is complete (`manifest.json`
present and every file it lists present), whatever order its files arrived in, so a half-uploaded version
waits and out-of-order writes are never skipped (the failure modes of key-order and `since_last_modified`
cursors). A version republished in place gets a new signature and is requested again; the signature is
part of the `run_key`, so a replayed tick requests nothing twice.
"""

import json

import dagster as dg

from recsys_assets import embeddings
from recsys_assets.jobs import embeddings_load_job, embeddings_run_config
from resources.artifacts import ArtifactStore
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
