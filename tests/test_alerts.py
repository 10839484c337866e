"""Alerts for failed runs and failed checks: one message per run, with what a person needs (job, partition,
error, failed checks, the run's link), none twice, none lost when the notifier fails, no credential in them;
through the local notifier and through SNS on moto's server."""

import json

import dagster as dg
import pytest

from mlops_assets.alerts import check_failure_alert_sensor, run_failure_alert_sensor
from resources.notifier import LocalNotifier, SnsNotifier

SECRET = "s3cr3t-Pa55word"
DAILY = dg.DailyPartitionsDefinition(start_date="2026-11-01")


@dg.asset(partitions_def=DAILY)
def nightly_scores(context: dg.AssetExecutionContext) -> None:
    if context.run.tags.get("fail") == "step":
        raise RuntimeError(f"could not connect to postgresql://scorer:{SECRET}@db.internal:5432/bank")


@dg.asset
def batch() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 10})


@dg.asset_check(asset=batch)
def batch_drift(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    drifted = context.run.tags.get("drift") == "yes"
    return dg.AssetCheckResult(passed=not drifted, description="PSI of the score 0.31 (error above 0.25)" if drifted
                               else None, metadata={"score_psi": 0.31 if drifted else 0.02})


@dg.asset_check(asset=batch, blocking=True)
def batch_not_empty(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=context.run.tags.get("empty") != "yes", description="no rows")


@dg.asset(deps=[batch])
def downstream() -> None:
    pass


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def notifier(tmp_path):
    return LocalNotifier(path=str(tmp_path / "alerts.jsonl"), backoff_seconds=0.01)


@pytest.fixture(autouse=True)
def settings(monkeypatch):
    monkeypatch.setenv("DAGSTER_UI_URL", "https://dagster.example.com/")
    monkeypatch.setenv("MLDP_ENV", "prod")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://scorer:{SECRET}@db.internal:5432/bank")


class Alerts:
    """Both alert sensors ticked as the daemon would, with their cursors kept."""

    def __init__(self, instance, notifier):
        self.instance, self.notifier, self.cursors = instance, notifier, {}

    def tick(self, notifier=None) -> list[str]:
        reasons = []
        for sensor in (run_failure_alert_sensor, check_failure_alert_sensor):
            with dg.build_sensor_context(instance=self.instance, cursor=self.cursors.get(sensor.name),
                                         resources={"notifier": notifier or self.notifier}) as context:
                result = sensor(context)
            self.cursors[sensor.name] = result.cursor
            reasons.append(result.skip_reason.skip_message if result.skip_reason else "")
        return reasons


def run(instance, assets, selection=None, tags=None, partition_key=None):
    return dg.materialize(assets, selection=selection, instance=instance, tags=tags or {},
                          partition_key=partition_key, raise_on_error=False)


def test_a_failed_run_is_told_once_with_what_a_person_needs(instance, notifier):
    alerts = Alerts(instance, notifier)
    run(instance, [nightly_scores], tags={"fail": "step"}, partition_key="2026-11-20")  # before the sensors
    alerts.tick()  # first tick: from here on (history is not news)
    assert notifier.sent() == []

    failed = run(instance, [nightly_scores], tags={"fail": "step"}, partition_key="2026-11-25")
    assert not failed.success
    alerts.tick()
    [alert] = notifier.sent()
    assert alert["subject"] == "[mldp prod] Run failed: __ephemeral_asset_job__ [2026-11-25]"
    message = alert["message"]
    assert f"Run: {failed.run_id} (FAILURE)" in message
    assert "Partition: 2026-11-25" in message and "Assets: nightly_scores" in message
    assert f"Open in Dagster: https://dagster.example.com/runs/{failed.run_id}" in message
    assert "Step nightly_scores failed:" in message and "could not connect to postgresql://" in message
    assert SECRET not in json.dumps(alert)  # the password of DATABASE_URL is masked

    # a good run, and ticks after: nothing more
    assert run(instance, [nightly_scores], partition_key="2026-11-24").success
    alerts.tick()
    alerts.tick()
    assert len(notifier.sent()) == 1


def test_failed_checks_are_told_once_per_run(instance, notifier):
    alerts = Alerts(instance, notifier)
    alerts.tick()
    # a non-blocking check fails in a run that succeeds: one alert, from the check sensor
    drifted = run(instance, [batch, batch_drift, batch_not_empty, downstream], tags={"drift": "yes"})
    assert drifted.success
    alerts.tick()
    [alert] = notifier.sent()
    assert alert["subject"] == "[mldp prod] 1 check(s) failed: __ephemeral_asset_job__"
    assert f"Run: {drifted.run_id} (SUCCESS, with failed checks)" in alert["message"]
    assert "Check batch_drift on batch did not pass (severity ERROR): PSI of the score 0.31" in alert["message"]
    assert "score_psi: 0.31" in alert["message"]
    assert "https://dagster.example.com/assets/batch?view=checks" in alert["message"]

    # a blocking check fails: the run fails too, and the one alert (the failure's) carries both
    blocked = run(instance, [batch, batch_drift, batch_not_empty, downstream], tags={"drift": "yes", "empty": "yes"})
    assert not blocked.success
    alerts.tick()
    alerts.tick()
    sent = notifier.sent()
    assert len(sent) == 2
    assert sent[1]["subject"] == "[mldp prod] Run failed: __ephemeral_asset_job__"
    assert "Check batch_not_empty on batch did not pass" in sent[1]["message"]
    assert "Check batch_drift on batch did not pass" in sent[1]["message"]

    # a clean run: nothing
    assert run(instance, [batch, batch_drift, batch_not_empty, downstream]).success
    alerts.tick()
    assert len(notifier.sent()) == 2


def test_an_alert_the_notifier_could_not_send_is_sent_on_a_later_tick(instance, notifier, tmp_path):
    alerts = Alerts(instance, notifier)
    alerts.tick()
    failed = run(instance, [nightly_scores], tags={"fail": "step"}, partition_key="2026-11-25")
    broken = LocalNotifier(path=str(tmp_path / "alerts.jsonl"), webhook_url="http://127.0.0.1:9/hook",
                           backoff_seconds=0.01)
    reasons = alerts.tick(notifier=broken)
    assert "alert not sent, retried on the next tick" in reasons[0] and "webhook is unreachable" in reasons[0]
    assert notifier.sent() == []
    alerts.tick()
    [alert] = notifier.sent()
    assert failed.run_id in alert["message"]
    alerts.tick()
    assert len(notifier.sent()) == 1


def test_alerts_reach_sns_subscribers(instance, moto, sns_subscriber):
    topic, received = sns_subscriber
    alerts = Alerts(instance, SnsNotifier(topic_arn=topic, region_name="us-east-1", endpoint_url=moto))
    alerts.tick()
    failed = run(instance, [nightly_scores], tags={"fail": "step"}, partition_key="2026-11-25")
    alerts.tick()
    alerts.tick()
    [message] = received()
    assert message["Subject"] == "[mldp prod] Run failed: __ephemeral_asset_job__ [2026-11-25]"
    assert f"https://dagster.example.com/runs/{failed.run_id}" in message["Message"]
    assert SECRET not in message["Message"]


FRESHNESS_DEFS = '''
from datetime import timedelta
import dagster as dg

@dg.asset(freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2),
                                                          warn_window=timedelta(hours=1)))
def hourly_scores():
    pass

@dg.asset
def no_policy():
    pass

defs = dg.Definitions(assets=[hourly_scores, no_policy])
'''


def test_an_asset_turning_stale_is_told_once_per_change(tmp_path, instance, notifier):
    """Dagster's freshness daemon evaluates the policy (here with the clock moved on); the sensor tells each
    change to WARN and FAIL once, and the return to fresh, and a notifier that fails is retried."""
    import importlib.util
    from datetime import datetime, timedelta, timezone

    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._daemon.freshness import FreshnessDaemon

    from mlops_assets.alerts import freshness_alert_sensor

    (tmp_path / "fresh_defs.py").write_text(FRESHNESS_DEFS)
    origin = LoadableTargetOrigin(python_file=str(tmp_path / "fresh_defs.py"), attribute="defs",
                                  working_directory=str(tmp_path))
    spec = importlib.util.spec_from_file_location("fresh_defs", tmp_path / "fresh_defs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    repository = module.defs.get_repository_def()
    cursor = {"value": None}

    def evaluate_at(moment: datetime) -> None:  # one iteration of the daemon, at `moment`
        with freeze_time(moment), WorkspaceProcessContext(
                instance, InProcessTestWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin))) as workspace:
            list(FreshnessDaemon().run_iteration(workspace))

    def tick(with_notifier=None) -> str:
        with dg.build_sensor_context(instance=instance, cursor=cursor["value"], repository_def=repository,
                                     resources={"notifier": with_notifier or notifier}) as context:
            result = freshness_alert_sensor(context)
        cursor["value"] = result.cursor
        return result.skip_reason.skip_message

    now = datetime.now(timezone.utc)
    instance.report_runless_asset_event(dg.AssetMaterialization("hourly_scores"))
    instance.report_runless_asset_event(dg.AssetMaterialization("no_policy"))
    evaluate_at(now)
    assert tick() == "no freshness change to tell" and notifier.sent() == []

    evaluate_at(now + timedelta(minutes=90))
    tick()
    [warned] = notifier.sent()
    assert warned["subject"] == "[mldp prod] Getting stale: hourly_scores"
    assert "https://dagster.example.com/assets/hourly_scores" in warned["message"]
    tick()
    assert len(notifier.sent()) == 1

    evaluate_at(now + timedelta(hours=3))
    broken = LocalNotifier(path=str(tmp_path / "alerts.jsonl"), webhook_url="http://127.0.0.1:9/hook",
                           backoff_seconds=0.01)
    assert "retried next tick" in tick(broken)
    assert len(notifier.sent()) == 1
    tick()
    stale = notifier.sent()[-1]
    assert stale["subject"] == "[mldp prod] Stale: hourly_scores"
    assert "not materialised within 2:00:00" in stale["message"]
    tick()
    assert len(notifier.sent()) == 2

    instance.report_runless_asset_event(dg.AssetMaterialization("hourly_scores"))  # materialised again
    evaluate_at(datetime.now(timezone.utc))
    tick()
    assert notifier.sent()[-1]["subject"] == "[mldp prod] Fresh again: hourly_scores"
    tick()
    assert len(notifier.sent()) == 3
    assert not any("no_policy" in m["subject"] for m in notifier.sent())


def test_the_same_trouble_of_the_same_partition_is_told_once_an_hour(instance, notifier, monkeypatch):
    """An hour's run retried every 30 s that keeps failing the same way is one alert, not 120; another
    partition, another error, or the hour passing is told again, with the count of what was held back."""
    import mlops_assets.alerts as alerts_module

    alerts = Alerts(instance, notifier)
    alerts.tick()
    for _ in range(3):
        run(instance, [nightly_scores], tags={"fail": "step"}, partition_key="2026-11-25")
    reasons = alerts.tick()
    assert len(notifier.sent()) == 1 and "2 held back" in reasons[0]
    run(instance, [nightly_scores], tags={"fail": "step"}, partition_key="2026-11-23")  # another partition
    alerts.tick()
    assert [m["subject"].rsplit(" ", 1)[1] for m in notifier.sent()] == ["[2026-11-25]", "[2026-11-23]"]
    monkeypatch.setattr(alerts_module, "REPEAT_AFTER_SECONDS", 0)  # an hour later
    again = run(instance, [nightly_scores], tags={"fail": "step"}, partition_key="2026-11-25")
    alerts.tick()
    last = notifier.sent()[-1]
    assert len(notifier.sent()) == 3 and again.run_id in last["message"]
    assert "2 more run(s) of __ephemeral_asset_job__ 2026-11-25 with the trouble of the previous alert were held" in last["message"]
