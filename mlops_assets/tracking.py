"""Training-run tracking sync (reference: SageMaker training jobs synced to ModelDB, opted in by tags).

`training_jobs_sensor` lists completed training jobs (the local SageMaker backend's job records, or
ListTrainingJobs on AWS, describing only new jobs) and requests a `training_runs` run for the ones it has
not seen, and again for opted-in ones that a failed run left unrecorded. That asset records each opted-in
job exactly once in the tracking tables: project (name, user, description), model (name, type, artifact
URI), hyperparameters, final metrics, input datasets (channel -> URI, compression, record wrapper),
start/end time and status. A job carrying the sync tag but missing another configured tag is reported with
the reason; a job without the sync tag is ignored."""

import hashlib
import json
import time
import warnings

import dagster as dg
import pandas as pd

from resources import freshness
from resources.metadata import markdown_table, tidy_number
from resources.sagemaker import SageMakerJobs, TrainingJob
from resources.settings import PlatformSettings
from resources.tracking import TAG_KEYS, InputDataset, TrackedRun, TrackingStore

GROUP = "mlops"
TRUE_VALUES = {"true", "1", "yes", "y"}


class TrackingTags(dg.Config):
    """The tag keys that opt a training job in and describe it (defaults as the reference)."""

    sync: str = TAG_KEYS["sync"]
    project_name: str = TAG_KEYS["project_name"]
    project_user: str = TAG_KEYS["project_user"]
    project_description: str = TAG_KEYS["project_description"]
    model_name: str = TAG_KEYS["model_name"]
    model_type: str = TAG_KEYS["model_type"]


class NotTrackable(ValueError):
    """The job asks to be synced but cannot be; the message is the reason reported."""


def tracked_run(job: TrainingJob, tags: TrackingTags) -> TrackedRun | None:
    """The tracking record of a job, None when it did not opt in; `NotTrackable` when it is incomplete."""
    if str(job.tags.get(tags.sync, "")).strip().lower() not in TRUE_VALUES:
        return None
    required = {"project_name": tags.project_name, "project_user": tags.project_user,
                "project_description": tags.project_description, "model_name": tags.model_name,
                "model_type": tags.model_type}
    missing = [key for key in required.values() if not str(job.tags.get(key, "")).strip()]
    if missing:
        raise NotTrackable(f"training job {job.name} has {tags.sync} but lacks the tag(s) {', '.join(missing)}")
    configs = {c.get("ChannelName"): c for c in job.extra.get("input_data_config", [])}
    inputs = tuple(
        InputDataset(channel, uri, configs.get(channel, {}).get("CompressionType", "None"),
                     configs.get(channel, {}).get("RecordWrapperType", "None"))
        for channel, uri in sorted(job.input_channels.items())
    )
    value = {field: job.tags[key] for field, key in required.items()}
    return TrackedRun(
        job_name=job.name, backend=job.backend, status=job.status, started_at=job.started_at, ended_at=job.ended_at,
        project_name=value["project_name"], project_owner=value["project_user"],
        project_description=value["project_description"], model_name=value["model_name"],
        model_type=value["model_type"], artifact_uri=job.model_data_uri, hyperparameters=dict(job.hyperparameters),
        metrics=dict(job.metrics), inputs=inputs,
    )


class TrainingRunsConfig(dg.Config):
    tags: TrackingTags = TrackingTags()
    job_names: list[str] = []  # the jobs to look at (the sensor names the new ones); empty: every completed job


_settings = PlatformSettings.from_env()


# The sensor syncs each job as it completes; every night the asset also follows the clock by itself, so a job
# the sensor gave up on (or missed while it was stopped) is recorded by the next morning.
@dg.asset(group_name=GROUP, kinds={"postgres", "sagemaker"}, freshness_policy=freshness.training_cadence(),
          automation_condition=dg.AutomationCondition.on_cron(_settings.tracking_sweep_cron,
                                                              _settings.schedule_timezone))
def training_runs(context: dg.AssetExecutionContext, config: TrainingRunsConfig, sagemaker: SageMakerJobs,
                  tracking: TrackingStore) -> dg.MaterializeResult:
    """Completed training jobs that opted in (tag `MODEL_DB_SYNC`), recorded once each in the tracking
    tables; the materialisation history lists what each sync recorded."""
    problems: list[str] = []
    jobs = (sagemaker.describe_training_jobs(config.job_names, problems) if config.job_names
            else sagemaker.list_training_jobs(status="Completed", problems=problems))
    synced, already, reported, ignored = [], 0, [], 0
    for job in jobs:
        try:
            run = tracked_run(job, config.tags)
        except NotTrackable as exc:
            reported.append({"job": job.name, "reason": str(exc)})
            context.log.warning(str(exc))
            continue
        if run is None:
            ignored += 1
        elif tracking.record(run):
            synced.append(run)
        else:
            already += 1
    for problem in problems:
        reported.append({"job": "?", "reason": problem})
        context.log.warning(problem)
    table = [{"job": r.job_name, "project": r.project_name, "model": f"{r.model_name} ({r.model_type})",
              "status": r.status, "ended": r.ended_at, "metrics": ", ".join(f"{name} {tidy_number(value) if isinstance(value, float) else value}"
                                    for name, value in sorted(r.metrics.items()))}
             for r in synced]
    return dg.MaterializeResult(
        metadata={
            "synced": len(synced),
            "already_tracked": already,
            "ignored_without_sync_tag": ignored,
            "reported": len(reported),
            "runs": dg.MetadataValue.md(markdown_table(pd.DataFrame(table)) if table else "none this time"),
            "reports": dg.MetadataValue.md(markdown_table(pd.DataFrame(reported)) if reported else "none"),
            "tracked_runs_total": tracking.count(),
        }
    )


training_runs_job = dg.define_asset_job("training_runs_job", selection=[training_runs],
                                        description="Record opted-in training jobs in the tracking tables.")


RETRY_AFTER_SECONDS = 15 * 60
MAX_ATTEMPTS = 4


@dg.sensor(job=training_runs_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Every minute, finds completed SageMaker training jobs it has not seen and requests a "
                       "`training_runs` sync for those tagged for tracking; retried when a sync did not record them.")
def training_jobs_sensor(context: dg.SensorEvaluationContext, sagemaker: SageMakerJobs,
                         tracking: TrackingStore) -> dg.SensorResult:
    """Requests a `training_runs` sync for completed training jobs it has not seen yet.

    A requested job that opted in stays in the cursor's `waiting` list until it is in the tracking
    tables; if it is still missing `RETRY_AFTER_SECONDS` after the request (the sync run failed), it is
    requested again, up to `MAX_ATTEMPTS` times (recording is idempotent, so a slow run that finishes after
    all does no harm). After that it is reported; a manual `training_runs` run picks it up.
    """
    state = json.loads(context.cursor) if context.cursor else {}
    seen = set(state.get("seen", []))
    waiting: dict[str, dict] = dict(state.get("waiting", {}))
    listed = set(sagemaker.training_job_names(status="Completed"))  # names only: a tick describes just the new ones
    now = time.time()

    done = tracking.tracked(waiting)
    for name in list(waiting):
        if name in done or name not in listed:  # recorded; or no longer listed (deleted, or beyond the newest 100)
            del waiting[name]
    retry, given_up = [], []
    for name, entry in sorted(waiting.items()):
        if now - entry["requested_at"] < RETRY_AFTER_SECONDS:
            continue
        if entry["attempts"] >= MAX_ATTEMPTS:
            given_up.append(name)
        else:
            retry.append(name)
    for name in given_up:
        del waiting[name]
        context.log.error(f"training job {name} is still not tracked after {MAX_ATTEMPTS} sync runs; see those runs, "
                          "then materialise training_runs to sync it")

    new = sorted(name for name in listed if name not in seen)
    for job in sagemaker.describe_training_jobs(new):
        if _wants_sync(job):
            waiting[job.name] = {"requested_at": now, "attempts": 1}
    for name in retry:
        waiting[name] = {"requested_at": now, "attempts": waiting[name]["attempts"] + 1}
    cursor = json.dumps({"seen": sorted((seen & listed) | set(new)), "waiting": waiting}, sort_keys=True)
    names = sorted(set(new) | set(retry))
    if not names:
        return dg.SensorResult(skip_reason=f"no new completed training job ({len(waiting)} waiting to be recorded)",
                               cursor=cursor)
    key = "\n".join(f"{name}:{waiting.get(name, {}).get('attempts', 1)}" for name in names)
    run_key = "training-runs-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    if retry:
        context.log.warning(f"sync requested again for {', '.join(retry)}: not tracked {RETRY_AFTER_SECONDS // 60} "
                            "minutes after the last request")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=run_key, run_config=dg.RunConfig(
            {"training_runs": TrainingRunsConfig(job_names=names)}))],
        cursor=cursor,
    )


def _wants_sync(job: TrainingJob) -> bool:
    """Whether the sync run must record this job (it opted in and is complete), with the default tag keys."""
    try:
        return tracked_run(job, TrackingTags()) is not None
    except NotTrackable:
        return False  # reported by the sync run; nothing to wait for


with warnings.catch_warnings():  # use_user_code_server is marked beta; its behaviour is pinned with dagster itself
    warnings.simplefilter("ignore", dg.BetaWarning)
    training_runs_automation_sensor = dg.AutomationConditionSensorDefinition(
        "training_runs_automation_sensor",
        target=dg.AssetSelection.assets(training_runs),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        use_user_code_server=True,  # evaluated with the project's code by the sensor daemon, like the other sensors
        emit_backfills=False,
        description=f"Evaluates `training_runs`' automation condition: a full sync of every completed training job "
                    f"each night (`TRACKING_SWEEP_CRON`, now `{_settings.tracking_sweep_cron}` in "
                    f"{_settings.schedule_timezone}), behind training_jobs_sensor's sync of each job as it completes.",
    )
