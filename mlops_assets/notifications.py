"""Model approval notifications (reference: an EventBridge rule on "SageMaker Model Package State Change"
for the group `{pipeline}-{env}-models` invoking a Lambda that publishes to SNS).

`model_registry_sensor` reads the registry's status changes after its cursor, sends one notification per
change worth telling (Approved: "New Model Approved", PendingManualApproval: "New Model Registered"; other
statuses: none), and on approval requests the runs that put the model to work: a credit scoring batch or
a reload of the embeddings tables, pinned to the approved version. The cursor only moves past a change once
its notification was sent: a failed publish (after retries) is reported and tried again on the next tick.

- A change is described as it was made (its status and reason); an approval whose package has been
  rejected since is still told, but not put to work.
- The first tick of a new deployment (no cursor) handles the changes of the last `FIRST_TICK_LOOKBACK`;
  older history is taken as handled, so a registry full of old versions does not notify or rescore again.
- With the SageMaker registry and `MODEL_REGISTRY_EVENTS_QUEUE_URL`, the changes are the EventBridge events
  themselves, from an SQS queue the rule feeds; a message is deleted once handled, and one that is not such
  an event is reported and skipped. Without the queue the registry is polled.
- At most `MAX_CHANGES_PER_TICK` changes per tick (the rest on the next one), so a tick stays well inside
  Dagster's sensor timeout and its cursor is saved.
"""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg

from credit_assets.jobs import credit_scoring_job, credit_scoring_run_config
from mlops_assets.tracking import GROUP
from recsys_assets.jobs import embeddings_load_job, embeddings_run_config
from resources.model_registry import APPROVED, PENDING, ModelRegistry, StatusChange
from resources.notifier import NotificationError, Notifier

FIRST_TICK_LOOKBACK = timedelta(hours=24)
MAX_CHANGES_PER_TICK = 50

SUBJECTS = {
    APPROVED: "[SageMaker] New Model Approved in {group}",
    PENDING: "[SageMaker] New Model Registered in {group}",
}


model_registry = dg.AssetSpec(
    "model_registry", group_name=GROUP, kinds={"sagemaker"}, deps=["credit_model", "recsys_model"],
    description="The model package groups `credit-<env>-models` and `recsys-<env>-models` (SageMaker Model Registry, "
                "or its local twin): every trained version, PendingManualApproval until a person approves or rejects "
                "it. Each change, from `mldp registry`, `model_approval_job`, the AWS console or a sensor, is recorded "
                "here as an observation with its status, reason and version. Scoring and the embeddings tables use "
                "the version the registry chooses.",
)


def notification(change: StatusChange) -> tuple[str, str] | None:
    """(subject, message) for a status change, or None when the status is not one people are told about.

    As the reference's Lambda: the subject `[SageMaker] New Model Approved in {group}` and, after a
    readable summary, `Details:` followed by the EventBridge "SageMaker Model Package State Change" event
    as JSON (the event received, or one of that shape for a change read from the registry), so subscribers
    written for the reference keep working.
    """
    if change.status not in SUBJECTS:
        return None
    package = change.package
    since = f" (its status has since become {package.status})" if package.status != change.status else ""
    message = (
        f"Model package {package.arn} in group {package.group}, version {package.version}, is now {change.status}"
        f"{since}.\n"
        + (f"Reason: {change.reason}\n" if change.reason else "")
        + f"Model data: {package.model_data_url}\n"
        f"Artifact version: {package.model_version or '(not set: registered outside this platform)'}\n\n"
        f"Details:\n{json.dumps(change.as_event(), indent=2, sort_keys=True, default=str)}\n"
    )
    return SUBJECTS[change.status].format(group=package.group), message


MODEL_ASSETS = {"credit": "credit_model", "recsys": "recsys_model"}


def observations(registry: ModelRegistry, change: StatusChange) -> list[dg.AssetObservation]:
    """The change as the UI shows it: an observation of `model_registry` (the group, version, status and
    reason), and one of the model's own asset, so its page shows the version's current approval status next
    to the PendingManualApproval it was registered with."""
    package = change.package
    metadata = {
        "group": package.group,
        "version": package.version,
        "status": change.status,
        "reason": change.reason or "",
        "model_version": package.model_version or "",
        "model_package": package.arn,
        "changed_at": change.at.isoformat() if change.at else "",
    }
    events = [dg.AssetObservation(asset_key=model_registry.key, metadata=metadata)]
    model_asset = MODEL_ASSETS.get(registry.pipeline_of(package.group) or "")
    if model_asset and package.model_version:
        events.append(dg.AssetObservation(asset_key=model_asset, metadata={
            "model_version": package.model_version, "approval_status": change.status,
            "reason": change.reason or "", "model_package": package.arn}))
    return events


def put_to_work(registry: ModelRegistry, change: StatusChange) -> dg.RunRequest | None:
    """The run that uses a newly approved model, pinned to its version."""
    package = change.package
    if not package.model_version:  # e.g. registered by the exported SageMaker Pipeline, which scores by itself
        return None
    pipeline = registry.pipeline_of(package.group)
    run_key = f"approved-{package.arn}-{change.key}-{change.at.isoformat() if change.at else ''}"
    tags = {"model_package": package.arn, "model_version": package.model_version}
    if pipeline == "credit":
        return dg.RunRequest(job_name=credit_scoring_job.name, run_key=run_key, tags=tags,
                             run_config=credit_scoring_run_config(package.model_version))
    if pipeline == "recsys":
        return dg.RunRequest(job_name=embeddings_load_job.name, run_key=run_key, tags=tags,
                             run_config=embeddings_run_config(package.model_version))
    return None


@dg.sensor(jobs=[credit_scoring_job, embeddings_load_job], minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Tells people about registered and approved models (SNS or the local notifier), records each "
                       "registry change on `model_registry` and the model's asset, and starts a scoring batch or an "
                       "embeddings load pinned to each newly approved version.")
def model_registry_sensor(context: dg.SensorEvaluationContext, registry: ModelRegistry,
                          notifier: Notifier) -> dg.SensorResult:
    """Notifies about registered and approved models, and puts approved ones to work."""
    cursor = json.loads(context.cursor) if context.cursor else None
    history_before = datetime.now(timezone.utc) - FIRST_TICK_LOOKBACK if cursor is None else None
    requests: list[dg.RunRequest] = []
    events: list[dg.AssetObservation] = []
    failure = None
    sent = old = 0
    for change in registry.changes(cursor, limit=MAX_CHANGES_PER_TICK):
        if change.package is None:
            context.log.warning(f"registry change {change.key} ({change.status!r}) names no model package; skipped")
            cursor = registry.advance(cursor, change)
            continue
        if history_before is not None and change.at is not None and change.at < history_before:
            old += 1  # before this sensor's first tick: history, not news
            cursor = registry.advance(cursor, change)
            continue
        message = notification(change)
        if message is None:
            events.extend(observations(registry, change))
            context.log.info(f"{change.package.arn}: status {change.status!r}, nobody is notified")
        else:
            try:
                notifier.publish(*message)
                sent += 1
            except NotificationError as exc:
                failure = f"{change.package.arn} ({change.status}): {exc}"
                context.log.error(f"notification not sent, it will be retried on the next tick: {failure}")
                break  # the cursor stays before this change
            events.extend(observations(registry, change))
        if change.status == APPROVED:
            if change.package.status != APPROVED:
                context.log.warning(f"{change.package.arn} was approved but is {change.package.status} now: not put "
                                    "to work")
            elif (request := put_to_work(registry, change)) is not None:
                requests.append(request)
            else:
                context.log.info(f"{change.package.arn} carries no artifact version of this platform: not put to work")
        cursor = registry.advance(cursor, change)
    if old:
        context.log.info(f"first tick: {old} registry change(s) older than {FIRST_TICK_LOOKBACK} taken as handled")
    new_cursor = json.dumps(cursor) if cursor is not None else context.cursor
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=new_cursor, asset_events=events)
    reason = f"notification failed: {failure}" if failure else f"{sent} notification(s) sent, no model approved"
    return dg.SensorResult(skip_reason=reason, cursor=new_cursor, asset_events=events)
