"""Alerts to people when something needs them: a run that failed, a run that finished with a failed asset
check, each told once, and an asset that went stale, through the same notifier as the model approvals (SNS,
or the local log/webhook).

Both sensors read Dagster's run status changes (`DagsterInstance.fetch_run_status_changes`) after their
cursor, one kind each: `run_failure_alert_sensor` the failures, `check_failure_alert_sensor` the successes
whose run evaluated a check that did not pass. A failed run is told once, by the first sensor, with the failed
checks it evaluated (a blocking check that fails also fails its run); a successful run is told only by the
second, and only when a check failed. So every run gives at most one message.

A message names the job, the run, its partition and the assets, gives the error of each failed step (or each
failed check's description and numbers) and the run's link in the UI (`DAGSTER_UI_URL`). The same trouble
again, for the same job and partition, within `REPEAT_AFTER_SECONDS` (an hour's run retried every 30 s, a
check that keeps failing) is held back and counted in the next message that does go out. The cursor moves past
a run only once its message is sent: a notifier that fails (after its retries) is reported on the tick and the
same run is tried again on the next one. The first tick of a new deployment starts after the latest change, so
history is not told again. Credentials of the settings are masked in every message.

`freshness_alert_sensor` reads the freshness state Dagster's freshness daemon keeps for each asset with a
freshness policy (`resources.freshness`) and tells each change to WARN or FAIL, and the return to PASS after
one, once.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

import dagster as dg
from dagster import DagsterEventType, DagsterInstance

from resources.credentials import scrub
from resources.notifier import NotificationError, Notifier
from resources.settings import PlatformSettings

MAX_RUNS_PER_TICK = 20
REPEAT_AFTER_SECONDS = 3600  # the same trouble of the same job and partition is told at most once an hour
MAX_REMEMBERED = 500  # (job, partition) pairs whose last alert is kept in the cursor
MAX_ERROR_CHARS = 1500  # per step: enough for the cause, short enough for an e-mail or a chat message
PARTITION_TAG = "dagster/partition"
RUN_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # run and batch ids in errors


@dataclass(frozen=True)
class FailedCheck:
    asset: str
    check: str
    severity: str
    description: str
    metadata: dict[str, object]


def failed_checks(instance: DagsterInstance, run_id: str) -> list[FailedCheck]:
    """The asset checks of the run that did not pass (the last evaluation of each)."""
    last: dict[tuple[str, str], object] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data
        last[(evaluation.asset_key.to_user_string(), evaluation.check_name)] = evaluation
    return [
        FailedCheck(asset, check, evaluation.severity.value, evaluation.description or "",
                    {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()})
        for (asset, check), evaluation in sorted(last.items()) if not evaluation.passed
    ]


def step_errors(instance: DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step, error) of each failed step, the error as its exception's message (and its cause's)."""
    errors = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.event_specific_data.error
        parts, seen = [], set()
        while error is not None and len(parts) < 3:
            message = error.message.strip()
            if message and message not in seen:
                parts.append(message)
                seen.add(message)
            error = error.cause
        errors.append((entry.dagster_event.step_key or "?", "\n  caused by: ".join(parts)[:MAX_ERROR_CHARS]))
    return errors


def planned_assets(instance: DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The assets the run set out to materialise (its selection, or every asset of its plan)."""
    keys = set(run.asset_selection or [])
    keys |= {entry.dagster_event.asset_key
             for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)}
    return sorted(key.to_user_string() for key in keys if key is not None)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass(frozen=True)
class Alert:
    subject: str
    message: str
    about: str  # the job and partition
    signature: str  # what went wrong, without the run: the same trouble again has the same signature


def compose(instance: DagsterInstance, run: dg.DagsterRun, failure_message: str | None, ui_url: str,
            environment: str) -> Alert | None:
    """The alert for a failed run, or for a finished one with failed checks; None when all is well."""
    checks = failed_checks(instance, run.run_id)
    failed = failure_message is not None
    if not failed and not checks:
        return None
    errors = step_errors(instance, run.run_id) if failed else []
    partition = run.tags.get(PARTITION_TAG)
    assets = planned_assets(instance, run)
    what = f"{run.job_name}" + (f" [{partition}]" if partition else "")
    subject = (f"[mldp {environment}] Run failed: {what}" if failed
               else f"[mldp {environment}] {len(checks)} check(s) failed: {what}")
    lines = [
        f"Job: {run.job_name}",
        f"Run: {run.run_id} ({'FAILURE' if failed else 'SUCCESS, with failed checks'})",
        f"Partition: {partition or '(none)'}",
        f"Assets: {', '.join(assets) if assets else '(none: a job of ops)'}",
        f"Open in Dagster: {ui_url}/runs/{run.run_id}",
    ]
    if failed:
        lines += ["", f"Error: {failure_message or 'the run failed'}"]
        for step, error in errors:
            lines += [f"Step {step} failed: {error}"]
    for check in checks:
        lines += ["", f"Check {check.check} on {check.asset} did not pass (severity {check.severity})"
                  + (f": {check.description}" if check.description else ""),
                  f"  {ui_url}/assets/{quote(check.asset)}?view=checks"]
        lines += [f"  {name}: {_short(value)}" for name, value in list(check.metadata.items())[:12]]
    signature = json.dumps([[step, RUN_IDS.sub("<id>", error)] for step, error in errors]
                           + [[c.asset, c.check, c.severity] for c in checks])
    return Alert(subject[:100], "\n".join(lines) + "\n", f"{run.job_name}|{partition or ''}", signature)


def _secrets(settings: PlatformSettings) -> tuple[list[str | None], tuple[str | None, ...]]:
    urls = [settings.database_url, settings.readonly_database_url, settings.source_database_url,
            settings.dagster_pg_url]
    return urls, (settings.notify_webhook_url,)


def run_alert_sensor(name: str, event_type: DagsterEventType, description: str) -> dg.SensorDefinition:
    """A sensor that tells, once each, the runs whose status changed to `event_type` and need a person."""

    @dg.sensor(name=name, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
               description=description)
    def _sensor(context: dg.SensorEvaluationContext, notifier: Notifier) -> dg.SensorResult:
        settings = PlatformSettings.from_env()
        urls, passwords = _secrets(settings)
        instance = context.instance
        if context.cursor is None:  # a new deployment: start after the latest change, history is not news
            latest = instance.fetch_run_status_changes(event_type, limit=1).records
            after = latest[0].storage_id if latest else 0
            return dg.SensorResult(skip_reason=f"watching {event_type.value} from here on",
                                   cursor=json.dumps({"after": after}))
        state = json.loads(context.cursor)
        after, told = state["after"], state.get("told", {})  # told: about -> [signature, sent at, held back]
        records = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=after),
            limit=MAX_RUNS_PER_TICK, ascending=True).records
        sent, quiet, held, failure = [], 0, 0, None
        for record in records:
            run = instance.get_run_by_id(record.event_log_entry.run_id)
            message = None
            if run is not None:  # a deleted run has nobody to tell about
                failure_message = None
                if event_type == DagsterEventType.RUN_FAILURE:
                    failure_message = record.event_log_entry.dagster_event.message or "the run failed"
                message = compose(instance, run, failure_message, settings.dagster_ui_url, settings.environment)
            last = told.get(message.about) if message else None
            now = time.time()
            if message is None:
                quiet += 1
            elif last and last[0] == message.signature and now - last[1] < REPEAT_AFTER_SECONDS:
                last[2] += 1  # the same trouble again, told less than an hour ago
                held += 1
            else:
                body = message.message + (f"\n{last[2]} more run(s) of {message.about.replace('|', ' ')} with the "
                                          "trouble of the previous alert were held back since it.\n"
                                          if last and last[2] else "")
                subject, body = (scrub(part, *urls, passwords=passwords) for part in (message.subject, body))
                try:
                    notifier.publish(subject, body)
                except NotificationError as exc:
                    failure = f"run {run.run_id}: {exc}"
                    context.log.error(f"alert not sent, it will be retried on the next tick: {failure}")
                    break  # the cursor stays before this run
                told[message.about] = [message.signature, now, 0]
                sent.append(run.run_id)
                context.log.info(f"alert sent: {subject}")
            after = record.storage_id
        kept = dict(sorted(told.items(), key=lambda item: item[1][1])[-MAX_REMEMBERED:])
        cursor = json.dumps({"after": after, "told": kept})
        if failure:
            return dg.SensorResult(skip_reason=f"alert not sent, retried on the next tick: {failure}", cursor=cursor)
        return dg.SensorResult(
            skip_reason=(f"{len(sent)} alert(s) sent ({', '.join(sent)})" if sent else "nothing to tell")
            + (f"; {held} held back (told within the hour)" if held else "")
            + (f"; {quiet} run(s) needed no alert" if quiet else ""),
            cursor=cursor)

    return _sensor


run_failure_alert_sensor = run_alert_sensor(
    "run_failure_alert_sensor", DagsterEventType.RUN_FAILURE,
    "Tells people, once per run, about every failed run: job, partition, assets, each failed step's error and "
    "failed check, and the run's link in the UI (DAGSTER_UI_URL), through SNS or the local notifier.",
)
check_failure_alert_sensor = run_alert_sensor(
    "check_failure_alert_sensor", DagsterEventType.RUN_SUCCESS,
    "Tells people, once per run, about a run that succeeded but evaluated an asset check that did not pass "
    "(drift, reconciliation): each check's description and numbers and the links in the UI. A failed run's "
    "checks are in its failure alert instead.",
)


# What to do when an asset is stale, by asset (the default: look at what should have materialised it).
STALE_HINTS = {
    "recommendations": "Are events arriving (session_events_sensor's ticks), and do the recommendations_job runs it "
                       "requests succeed? A quiet stream makes this stale too: widen FRESHNESS_RECOMMENDATIONS_HOURS "
                       "if so.",
    "item_embeddings": "No model version was loaded lately: train one (recsys_training_job, or start "
                       "recsys_retraining_schedule) and approve it; the approval loads the embeddings.",
    "user_embeddings": "No model version was loaded lately: train one and approve it.",
    "credit_model": "The scorecard was not retrained lately: run credit_training_job or start "
                    "credit_retraining_schedule.",
    "recsys_model": "The recommender was not retrained lately: run recsys_training_job or start "
                    "recsys_retraining_schedule.",
    "training_runs": "No training job was synced lately: is training_jobs_sensor running, and did any training "
                     "job complete?",
}
TOLD_STATES = ("WARN", "FAIL")


def freshness_message(key: str, state: str, previous: str | None, since: datetime, policy, ui_url: str,
                      environment: str) -> tuple[str, str]:
    """(subject, message) for an asset whose freshness state changed to `state`."""
    asset_url = f"{ui_url}/assets/{quote(key)}"
    if state == "PASS":
        return (f"[mldp {environment}] Fresh again: {key}"[:100],
                f"{key} is fresh again (it was {previous}) since {since:%Y-%m-%d %H:%M} UTC.\n{asset_url}\n")
    window = policy.fail_window.to_timedelta() if policy is not None else None
    subject = f"[mldp {environment}] {'Stale' if state == 'FAIL' else 'Getting stale'}: {key}"
    lines = [
        f"{key} is {state} since {since:%Y-%m-%d %H:%M} UTC"
        + (f": not materialised within {window} (its freshness policy)" if window and state == "FAIL" else "")
        + (f": close to its window of {window}" if window and state == "WARN" else "") + ".",
        STALE_HINTS.get(key, "Check the schedule, sensor or person that materialises it."),
        f"Open in Dagster: {asset_url}",
    ]
    return subject[:100], "\n".join(lines) + "\n"


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Tells people when an asset with a freshness policy turns WARN or FAIL (Dagster's freshness "
                       "daemon evaluates the policies), and when it is fresh again, once per change, through SNS or "
                       "the local notifier.")
def freshness_alert_sensor(context: dg.SensorEvaluationContext, notifier: Notifier) -> dg.SensorResult:
    settings = PlatformSettings.from_env()
    graph = context.repository_def.asset_graph
    policies = {node.key: node.freshness_policy for node in graph.asset_nodes if node.freshness_policy}
    told: dict[str, str] = json.loads(context.cursor)["told"] if context.cursor else {}
    records = context.instance.get_freshness_state_records(list(policies))
    sent, failure = [], None
    for key in sorted(policies, key=lambda k: k.to_user_string()):
        record = records.get(key)
        if record is None:
            continue
        name, state = key.to_user_string(), record.freshness_state.value
        previous = told.get(name, "PASS")
        worth_telling = (state in TOLD_STATES and state != previous) or (state == "PASS" and previous in TOLD_STATES)
        if worth_telling:
            since = record.updated_at if record.updated_at.tzinfo else record.updated_at.replace(tzinfo=timezone.utc)
            subject, body = freshness_message(name, state, previous, since, policies[key], settings.dagster_ui_url,
                                              settings.environment)
            try:
                notifier.publish(subject, body)
            except NotificationError as exc:
                failure = f"{name} ({state}): {exc}"
                context.log.error(f"freshness alert not sent, it will be retried on the next tick: {failure}")
                continue  # told stays as it was: tried again next tick
            sent.append(f"{name} {state}")
        if state in ("PASS", *TOLD_STATES):
            told[name] = state
    cursor = json.dumps({"told": told}, sort_keys=True)
    reason = (f"told: {', '.join(sent)}" if sent else "no freshness change to tell") + (
        f"; not sent, retried next tick: {failure}" if failure else "")
    return dg.SensorResult(skip_reason=reason, cursor=cursor)
