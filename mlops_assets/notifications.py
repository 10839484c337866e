"""Model approval notifications (reference: an EventBridge rule on "SageMaker Model Package State Change"
for the group ``{pipeline}-{env}-models`` invoking a Lambda that publishes to SNS).

`model_registry_sensor` reads the registry's status changes after its cursor, sends one notification per
change worth telling (Approved: "New Model Approved", PendingManualApproval: "New Model Registered"; other
statuses: none), and on approval requests the runs that put the model to work: a credit scoring batch, or
a reload of the embeddings tables with the approved version. The cursor only moves past a change once its
notification was sent: a failed publish (after retries) is reported and tried again on the next tick.
"""

import json

import dagster as dg

from credit_assets import credit_scoring_job
from recsys_assets.jobs import embeddings_load_job, embeddings_run_config
from resources.model_registry import APPROVED, PENDING, ModelRegistry, StatusChange
from resources.notifier import NotificationError, Notifier

SUBJECTS = {
    APPROVED: "[SageMaker] New Model Approved in {group}",
    PENDING: "[SageMaker] New Model Registered in {group}",
}


def notification(change: StatusChange) -> tuple[str, str] | None:
    """(subject, message) for a status change, or None when the status is not one people are told about."""
    if change.status not in SUBJECTS:
        return None
    package = change.package
    details = {**package.to_json(), "status": change.status}
    message = (
        f"Model package {package.arn} in group {package.group}, version {package.version}, is now {change.status}.\n"
        f"Model data: {package.model_data_url}\n"
        f"Artifact version: {package.model_version}\n\n"
        f"Details:\n{json.dumps(details, indent=2, sort_keys=True)}\n"
    )
    return SUBJECTS[change.status].format(group=package.group), message


def pipeline_of(registry: ModelRegistry, group: str) -> str | None:
    suffix = f"-{registry.env}-models"
    return group[: -len(suffix)] if group.endswith(suffix) else None


def put_to_work(registry: ModelRegistry, change: StatusChange) -> dg.RunRequest | None:
    """The run that uses a newly approved model."""
    package = change.package
    pipeline = pipeline_of(registry, package.group)
    run_key = f"approved-{package.arn}-{package.modified_at.isoformat()}"
    tags = {"model_package": package.arn, "model_version": package.model_version}
    if pipeline == "credit":
        return dg.RunRequest(job_name=credit_scoring_job.name, run_key=run_key, tags=tags)
    if pipeline == "recsys":
        return dg.RunRequest(job_name=embeddings_load_job.name, run_key=run_key, tags=tags,
                             run_config=embeddings_run_config(package.model_version))
    return None


@dg.sensor(jobs=[credit_scoring_job, embeddings_load_job], minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING)
def model_registry_sensor(context: dg.SensorEvaluationContext, registry: ModelRegistry,
                          notifier: Notifier) -> dg.SensorResult:
    """Notifies about registered and approved models, and puts approved ones to work."""
    cursor = json.loads(context.cursor) if context.cursor else None
    requests: list[dg.RunRequest] = []
    failure = None
    sent = 0
    for change in registry.changes(cursor):
        if change.package is None:
            context.log.warning(f"registry change {change.position} ({change.status!r}) names no model package; skipped")
            cursor = registry.advance(cursor, change)
            continue
        message = notification(change)
        if message is None:
            context.log.info(f"{change.package.arn}: status {change.status!r}, nobody is notified")
        else:
            try:
                notifier.publish(*message)
                sent += 1
            except NotificationError as exc:
                failure = f"{change.package.arn} ({change.status}): {exc}"
                context.log.error(f"notification not sent, it will be retried on the next tick: {failure}")
                break  # the cursor stays before this change
        if change.status == APPROVED and (request := put_to_work(registry, change)) is not None:
            requests.append(request)
        cursor = registry.advance(cursor, change)
    new_cursor = json.dumps(cursor) if cursor is not None else context.cursor
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)
    reason = f"notification failed: {failure}" if failure else f"{sent} notification(s) sent, no model approved"
    return dg.SensorResult(skip_reason=reason, cursor=new_cursor)
