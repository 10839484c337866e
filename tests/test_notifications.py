"""Approval notifications: one per registered or approved model, none twice, none lost; SNS on moto's
server, the local file and a webhook; approved models put to work."""

import http.server
import json
import threading
import uuid

import dagster as dg
import pytest

from mlops_assets.notifications import model_registry_sensor, notification
from resources.model_registry import APPROVED, PENDING, REJECTED, LocalModelRegistry, SageMakerModelRegistry
from resources.notifier import LocalNotifier, NotificationError, SnsNotifier


@pytest.fixture
def registry(app_db):
    return LocalModelRegistry(db=app_db, env=f"n{uuid.uuid4().hex[:8]}")


@pytest.fixture
def notifier(tmp_path):
    return LocalNotifier(path=str(tmp_path / "notifications.jsonl"), backoff_seconds=0.01)


def tick(registry, notifier, cursor=None):
    with dg.build_sensor_context(cursor=cursor, resources={"registry": registry, "notifier": notifier}) as context:
        result = model_registry_sensor(context)
    return result, result.cursor


def register(registry, pipeline, model_version):
    return registry.register(pipeline, model_version=model_version, model_data_url=f"s3://b/{model_version}/model.tar.gz",
                             metrics={"validation_auc": 0.91}, data_fingerprint="f00d", description="test model")


def test_registered_then_approved_each_notified_once_and_put_to_work(registry, notifier):
    package = register(registry, "credit", "c-1")
    result, cursor = tick(registry, notifier)
    assert not result.run_requests
    [sent] = notifier.sent()
    assert sent["subject"] == f"[SageMaker] New Model Registered in credit-{registry.env}-models"
    assert package.arn in sent["message"] and "version 1" in sent["message"]
    assert "s3://b/c-1/model.tar.gz" in sent["message"]
    # the reference's body: "Details:" and the EventBridge "SageMaker Model Package State Change" event
    event = json.loads(sent["message"].split("Details:\n", 1)[1])
    assert (event["source"], event["detail-type"], event["resources"]) == (
        "aws.sagemaker", "SageMaker Model Package State Change", [package.arn])
    detail = event["detail"]
    assert (detail["ModelPackageGroupName"], detail["ModelPackageVersion"], detail["ModelPackageArn"],
            detail["ModelApprovalStatus"]) == (package.group, 1, package.arn, PENDING)
    assert detail["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == "s3://b/c-1/model.tar.gz"
    assert detail["CustomerMetadataProperties"]["mldp:metric:validation_auc"] == "0.91"

    result, cursor = tick(registry, notifier, cursor)
    assert len(notifier.sent()) == 1 and not result.run_requests  # nothing new: nothing sent twice

    registry.approve(package.group, package.version, "Gini 0.82, reviewed")
    result, cursor = tick(registry, notifier, cursor)
    assert notifier.sent()[-1]["subject"] == f"[SageMaker] New Model Approved in credit-{registry.env}-models"
    approval = json.loads(notifier.sent()[-1]["message"].split("Details:\n", 1)[1])["detail"]
    assert (approval["ModelApprovalStatus"], approval["ApprovalDescription"]) == (APPROVED, "Gini 0.82, reviewed")
    [request] = result.run_requests
    assert request.job_name == "credit_scoring_job" and request.tags["model_version"] == "c-1"
    # the change is recorded in the lineage: on model_registry, and on credit_model (its current approval status)
    observed = {e.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in e.metadata.items()}
                for e in result.asset_events}
    assert {k: observed["model_registry"][k] for k in ("group", "version", "status", "reason", "model_version")} == {
        "group": package.group, "version": 1, "status": APPROVED, "reason": "Gini 0.82, reviewed", "model_version": "c-1"}
    assert (observed["credit_model"]["model_version"], observed["credit_model"]["approval_status"]) == ("c-1", APPROVED)

    restarted, _ = tick(registry, notifier, json.loads(json.dumps(cursor)))  # a restart replays nothing
    assert not restarted.run_requests and len(notifier.sent()) == 2 and not restarted.asset_events


def test_an_approved_recommender_reloads_its_embeddings_and_rejections_are_silent(registry, notifier):
    one, two = register(registry, "recsys", "r-1"), register(registry, "recsys", "r-2")
    _, cursor = tick(registry, notifier)
    registry.reject(two.group, two.version, "worse than popularity")
    registry.approve(one.group, one.version, "better NDCG")
    result, cursor = tick(registry, notifier, cursor)
    assert [m["subject"].split(" in ")[0] for m in notifier.sent()] == [
        "[SageMaker] New Model Registered", "[SageMaker] New Model Registered", "[SageMaker] New Model Approved"]
    [request] = result.run_requests
    assert request.job_name == "embeddings_load_job"
    assert request.run_config["ops"]["embeddings_tables"]["config"]["version"] == "r-1"


def test_a_failed_publish_keeps_the_change_for_the_next_tick(registry, notifier, moto, boto_client):
    register(registry, "credit", "c-9")
    broken = SnsNotifier(topic_arn="arn:aws:sns:us-east-1:123456789012:no-such-topic", region_name="us-east-1",
                         endpoint_url=moto, attempts=2, backoff_seconds=0.01)
    with pytest.raises(NotificationError, match="after 2 attempts"):
        broken.publish("s", "m")
    result, cursor = tick(registry, broken)
    assert not result.run_requests and "notification failed" in result.skip_reason.skip_message
    result, cursor = tick(registry, notifier, cursor)  # the next tick, delivery works again
    assert [m["subject"] for m in notifier.sent()] == [f"[SageMaker] New Model Registered in credit-{registry.env}-models"]


def test_malformed_events_and_unknown_statuses_are_reported_not_sent(registry, notifier, app_db):
    package = register(registry, "credit", "c-2")
    with app_db.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO model_package_events (arn, status) VALUES (%s, %s)", ("arn:mldp:gone", APPROVED))
        conn.execute("INSERT INTO model_package_events (arn, status) VALUES (%s, %s)", (package.arn, "Deleting"))
    result, cursor = tick(registry, notifier)
    assert [m["subject"].split(" in ")[0] for m in notifier.sent()] == ["[SageMaker] New Model Registered"]
    assert not result.run_requests
    result, _ = tick(registry, notifier, cursor)
    assert len(notifier.sent()) == 1  # the odd events were passed once, not retried forever
    change = registry.changes(None)[-1]
    assert change.status == "Deleting" and notification(change) is None


def test_sns_delivers_to_subscribers(registry, moto, sns_subscriber):
    topic, received = sns_subscriber
    register(registry, "credit", "c-3")
    tick(registry, SnsNotifier(topic_arn=topic, region_name="us-east-1", endpoint_url=moto))
    [body] = received()
    assert body["Subject"] == f"[SageMaker] New Model Registered in credit-{registry.env}-models"
    assert "c-3" in body["Message"]


def test_the_local_notifier_posts_to_a_webhook(tmp_path):
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the http.server API)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        notifier = LocalNotifier(path=str(tmp_path / "n.jsonl"), webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        notifier.publish("[SageMaker] New Model Approved in credit-dev-models", "details")
    finally:
        server.shutdown()
        thread.join()
    assert received[0]["subject"] == "[SageMaker] New Model Approved in credit-dev-models"
    assert notifier.sent()[0]["message"] == "details"


def test_an_approval_rejected_before_the_tick_is_told_as_made_but_not_put_to_work(registry, notifier):
    package = register(registry, "credit", "c-4")
    _, cursor = tick(registry, notifier)
    registry.approve(package.group, package.version, "looked fine")
    registry.reject(package.group, package.version, "leakage found in the training data")
    result, cursor = tick(registry, notifier, cursor)
    assert not result.run_requests  # a model rejected since is never put to work
    approved = notifier.sent()[-1]
    assert approved["subject"].startswith("[SageMaker] New Model Approved")
    assert "its status has since become Rejected" in approved["message"] and "Reason: looked fine" in approved["message"]
    detail = json.loads(approved["message"].split("Details:\n", 1)[1])["detail"]  # the change as it was made
    assert (detail["ModelApprovalStatus"], detail["ApprovalDescription"]) == (APPROVED, "looked fine")
    assert registry.package(package.group, package.version).status == REJECTED


def test_approval_runs_are_pinned_to_the_approved_version(registry, notifier):
    older, newer = register(registry, "credit", "c-5"), register(registry, "credit", "c-6")
    registry.approve(newer.group, newer.version, "current champion")
    _, cursor = tick(registry, notifier)
    registry.approve(older.group, older.version, "rollback: c-6 misbehaves")  # c-6 is still Approved and newer
    result, _ = tick(registry, notifier, cursor)
    [request] = result.run_requests
    assert request.run_config["ops"]["credit_scores"]["config"]["model_version"] == "c-5"
    assert request.tags["model_version"] == "c-5"


def test_the_first_tick_skips_old_history(registry, notifier, app_db):
    old, recent = register(registry, "credit", "c-7"), register(registry, "credit", "c-8")
    registry.approve(old.group, old.version, "approved long ago")
    with app_db.connect(autocommit=True) as conn:
        conn.execute("UPDATE model_package_events SET at = now() - interval '3 days' WHERE arn = %s", (old.arn,))
    result, cursor = tick(registry, notifier)
    assert not result.run_requests  # the old approval is history: no rescoring on a new deployment
    [sent] = notifier.sent()
    assert recent.arn in sent["message"]
    registry.approve(recent.group, recent.version, "new")
    result, _ = tick(registry, notifier, cursor)
    assert [r.tags["model_version"] for r in result.run_requests] == ["c-8"]


def test_a_publish_failing_mid_tick_keeps_the_cursor_after_what_was_sent(registry, notifier, tmp_path):
    register(registry, "credit", "c-10"), register(registry, "credit", "c-11")

    class FailsSecond(LocalNotifier):
        def _send(self, subject, message):
            if len(self.sent()) >= 1:
                raise OSError("disk full")
            return super()._send(subject, message)

    flaky = FailsSecond(path=str(tmp_path / "flaky.jsonl"), attempts=2, backoff_seconds=0.01)
    result, cursor = tick(registry, flaky)
    assert "notification failed" in result.skip_reason.skip_message and len(flaky.sent()) == 1
    tick(registry, notifier, cursor)  # the next tick sends only the one that failed
    [second] = notifier.sent()
    assert "c-11" in second["message"]


def test_the_sagemaker_registry_feeds_the_sensor(moto, notifier):
    registry = SageMakerModelRegistry(env=f"n{uuid.uuid4().hex[:8]}", region_name="us-east-1", endpoint_url=moto,
                                      inference_image="img:1")
    package = register(registry, "recsys", "r-9")
    registry.approve(package.group, package.version, "better NDCG")  # registered and approved between two polls
    result, cursor = tick(registry, notifier)
    assert [m["subject"].split(" in ")[0] for m in notifier.sent()] == [
        "[SageMaker] New Model Registered", "[SageMaker] New Model Approved"]
    [request] = result.run_requests
    assert request.run_config["ops"]["embeddings_tables"]["config"]["version"] == "r-9"
    result, cursor = tick(registry, notifier, cursor)
    assert not result.run_requests and len(notifier.sent()) == 2  # nothing twice
    registry.reject(package.group, package.version, "drift")
    tick(registry, notifier, cursor)
    assert len(notifier.sent()) == 2  # rejections are not told


def emit(events, package, status: str, reason: str | None = None) -> dict:
    """What SageMaker puts on EventBridge when a package is created or its approval changes (moto's SageMaker
    does not emit these itself)."""
    detail = {"ModelPackageGroupName": package.group, "ModelPackageVersion": package.version,
              "ModelPackageArn": package.arn, "ModelPackageName": package.group, "ModelApprovalStatus": status,
              "ModelPackageStatus": "Completed", "CreationTime": 1764000000000,
              **({"ApprovalDescription": reason} if reason else {})}
    response = events.put_events(Entries=[{"Source": "aws.sagemaker", "DetailType": "SageMaker Model Package State Change",
                                           "Detail": json.dumps(detail), "Resources": [package.arn]}])
    assert response["FailedEntryCount"] == 0
    return detail


def test_registry_events_from_the_eventbridge_queue_are_told_as_received_and_once(moto, boto_client, notifier):
    sqs, events = boto_client("sqs"), boto_client("events")
    env = f"n{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=f"registry-events-{env}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=f"model-packages-{env}", EventPattern=json.dumps({
        "source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": [f"credit-{env}-models", f"recsys-{env}-models"]}}))
    events.put_targets(Rule=f"model-packages-{env}", Targets=[{"Id": "registry-sensor", "Arn": queue_arn}])
    registry = SageMakerModelRegistry(env=env, region_name="us-east-1", endpoint_url=moto, inference_image="img:1",
                                      events_queue_url=queue, visibility_timeout_seconds=0)
    package = register(registry, "credit", "c-1")
    registered = emit(events, package, PENDING)
    registry.approve(package.group, package.version, "Gini 0.82")
    approved = emit(events, package, APPROVED, "Gini 0.82")
    sqs.send_message(QueueUrl=queue, MessageBody="not an event")  # poison among good messages
    for poison in ({"id": ["a"]}, {"detail": {"ModelApprovalStatus": [APPROVED]}}):  # fields of the wrong type
        body = {"id": "p-1", "time": "2026-11-26T10:00:00Z", "detail-type": "SageMaker Model Package State Change",
                "detail": {"ModelPackageGroupName": package.group, "ModelPackageArn": package.arn,
                           "ModelApprovalStatus": APPROVED}}
        body.update({k: v for k, v in poison.items() if k != "detail"})
        body["detail"].update(poison.get("detail", {}))
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({  # another environment's group, sent around the rule
        "id": "x", "time": "2026-11-26T10:00:00Z", "detail-type": "SageMaker Model Package State Change",
        "detail": {"ModelPackageGroupName": "credit-prod-models", "ModelPackageArn": "arn:x", "ModelApprovalStatus": APPROVED}}))

    result, cursor = tick(registry, notifier)
    sent = notifier.sent()
    assert [m["subject"] for m in sent] == [f"[SageMaker] New Model Registered in credit-{env}-models",
                                            f"[SageMaker] New Model Approved in credit-{env}-models"]
    told = [json.loads(m["message"].split("Details:\n", 1)[1]) for m in sent]
    assert [t["detail"] for t in told] == [registered, approved]  # the events as EventBridge delivered them
    assert all(t["source"] == "aws.sagemaker" and t["resources"] == [package.arn] for t in told)
    [request] = result.run_requests
    assert request.job_name == "credit_scoring_job" and request.tags["model_version"] == "c-1"
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)  # all handled or skipped

    # SQS delivers at least once: the same event again is not told again
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(told[1]))
    result, cursor = tick(registry, notifier, cursor)
    assert not result.run_requests and len(notifier.sent()) == 2
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)

    # two copies of one event in the same tick: told once
    third = register(registry, "credit", "c-3")
    copy = {**told[0], "id": "redelivered-1", "detail": {**told[0]["detail"], "ModelPackageArn": third.arn,
                                                         "ModelPackageVersion": third.version}}
    for _ in range(2):
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(copy))
    result, cursor = tick(registry, notifier, cursor)
    assert len(notifier.sent()) == 3 and third.arn in notifier.sent()[-1]["message"]
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)

    # a failed publish leaves the event in the queue for the next tick
    second = register(registry, "credit", "c-2")
    emit(events, second, PENDING)
    broken = SnsNotifier(topic_arn="arn:aws:sns:us-east-1:123456789012:no-such-topic", region_name="us-east-1",
                         endpoint_url=moto, attempts=1, backoff_seconds=0.01)
    result, cursor = tick(registry, broken, cursor)
    assert "notification failed" in result.skip_reason.skip_message and len(notifier.sent()) == 3
    result, cursor = tick(registry, notifier, cursor)
    assert notifier.sent()[-1]["subject"] == f"[SageMaker] New Model Registered in credit-{env}-models"
    assert json.loads(notifier.sent()[-1]["message"].split("Details:\n", 1)[1])["detail"]["ModelPackageArn"] == second.arn
    assert len(notifier.sent()) == 4


def test_the_approval_jobs_scaffolded_config_launches_and_fails_saying_what_to_fill_in(registry):
    """The Launchpad's "Scaffold missing config" gives group '', version 0, reason '': valid config (Launch is
    not blocked), and the run says what is waiting for a decision."""
    from dagster import DagsterInstance

    from mlops_assets.approval import model_approval_job

    package = register(registry, "credit", "c-9")

    def launch(**config):
        return model_approval_job.execute_in_process(
            run_config={"ops": {"decide_model_package": {"config": config}}}, resources={"registry": registry},
            instance=DagsterInstance.ephemeral(), raise_on_error=False)

    def error(result) -> str:
        [failure] = [e for e in result.all_events if e.is_step_failure]
        return str(failure.step_failure_data.error.cause.message)

    waiting = f"waiting for a decision: {package.group} version {package.version}"
    scaffolded = launch(group="", version=0, reason="")
    assert not scaffolded.success and "is not a model package group" in error(scaffolded) and waiting in error(scaffolded)
    wrong_version = launch(group=package.group, version=0, reason="looks fine")
    assert "has no version 0" in error(wrong_version) and waiting in error(wrong_version)
    no_reason = launch(group=package.group, version=package.version, reason=" ")
    assert "reason is empty" in error(no_reason)
    assert registry.package(package.group, package.version).status == PENDING  # nothing decided by any of them
    approved = launch(group=package.group, version=package.version, reason="Gini 0.84, reviewed")
    assert approved.success and registry.package(package.group, package.version).status == APPROVED
