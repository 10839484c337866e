"""Training-run tracking sync: opted-in jobs recorded exactly once, incomplete ones reported, others ignored;
local SageMaker job records and SageMaker on moto's server."""

import json
import uuid
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.tracking import (
    MAX_ATTEMPTS,
    RETRY_AFTER_SECONDS,
    NotTrackable,
    TrackingTags,
    TrainingRunsConfig,
    tracked_run,
    training_jobs_sensor,
    training_runs,
)
from resources.sagemaker import AwsSageMakerJobs, LocalSageMakerJobs, TrainingJob
from resources.tracking import TrackingStore

TAGS = {"MODEL_DB_SYNC": "true", "MODEL_DB_PROJECT_NAME": "credit-limit-increase", "MODEL_DB_PROJECT_USER": "risk",
        "MODEL_DB_PROJECT_DESC": "scorecards", "MODEL_DB_MODEL_NAME": "scorecard", "MODEL_DB_MODEL_TYPE": "logreg"}


def job(name, tags, **extra):
    return TrainingJob(name=name, status="Completed", backend="aws", model_data_uri=f"s3://b/{name}/model.tar.gz",
                       hyperparameters={"l2": "0.001"}, input_channels={"train": "s3://b/train"},
                       metrics={"validation:auc": 0.91}, tags=tags, started_at="2026-11-22T10:00:00+00:00",
                       ended_at="2026-11-22T10:05:00+00:00", extra=extra)


def test_tags_decide_and_incomplete_jobs_say_why():
    assert tracked_run(job("plain", {"team": "risk"}), TrackingTags()) is None
    assert tracked_run(job("off", {**TAGS, "MODEL_DB_SYNC": "false"}), TrackingTags()) is None
    with pytest.raises(NotTrackable, match=r"training job half has MODEL_DB_SYNC but lacks the tag\(s\) "
                                           r"MODEL_DB_PROJECT_USER, MODEL_DB_MODEL_TYPE"):
        tracked_run(job("half", {k: v for k, v in TAGS.items() if k not in ("MODEL_DB_PROJECT_USER", "MODEL_DB_MODEL_TYPE")}),
                    TrackingTags())
    run = tracked_run(job("full", TAGS, input_data_config=[
        {"ChannelName": "train", "CompressionType": "Gzip", "RecordWrapperType": "RecordIO"}]), TrackingTags())
    assert (run.project_name, run.project_owner, run.model_name, run.model_type) == (
        "credit-limit-increase", "risk", "scorecard", "logreg")
    assert run.inputs[0].compression == "Gzip" and run.inputs[0].record_wrapper == "RecordIO"
    custom = TrackingTags(sync="TRACK", project_name="P", project_user="U", project_description="D", model_name="M",
                          model_type="T")
    assert tracked_run(job("custom", {"TRACK": "yes", "P": "p", "U": "u", "D": "d", "M": "m", "T": "t"}), custom).model_name == "m"


@pytest.fixture
def local_jobs(local_artifacts, tmp_path, code_dir):
    local_artifacts.write_text("data/train/part-0.csv", "a,1\n")
    sagemaker = LocalSageMakerJobs(artifacts=local_artifacts, work_dir=str(tmp_path / "jobs"))
    for name, tags in (("synced-1", TAGS), ("synced-2", {**TAGS, "MODEL_DB_MODEL_NAME": "scorecard-v2"}),
                       ("missing-tags", {"MODEL_DB_SYNC": "true"}), ("not-opted-in", {"team": "risk"})):
        sagemaker.train(job_name=name, source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
                        hyperparameters={"epochs": 2, "lr": 0.1}, output_prefix="training", tags=tags)
    return sagemaker


def sync(sagemaker, tracking, job_names=()):
    config = dg.RunConfig({"training_runs": TrainingRunsConfig(job_names=list(job_names))}) if job_names else None
    result = dg.materialize([training_runs], resources={"sagemaker": sagemaker, "tracking": tracking}, run_config=config)
    return {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node("training_runs")[0].metadata.items()}


def test_local_jobs_are_synced_once_with_everything_recorded(local_jobs, app_db):
    tracking = TrackingStore(db=app_db)
    before = {r["job_name"] for r in tracking.runs()}
    meta = sync(local_jobs, tracking)
    assert (meta["synced"], meta["reported"], meta["ignored_without_sync_tag"]) == (2, 1, 1)
    assert "missing-tags has MODEL_DB_SYNC but lacks" in meta["reports"]
    runs = {r["job_name"]: r for r in tracking.runs() if r["job_name"] not in before}
    assert set(runs) == {"synced-1", "synced-2"}
    assert tracking.runs(limit=1) == tracking.runs()[:1]
    recorded = runs["synced-1"]
    assert (recorded["project"], recorded["owner"], recorded["model"], recorded["model_type"]) == (
        "credit-limit-increase", "risk", "scorecard", "logreg")
    assert recorded["status"] == "Completed" and recorded["backend"] == "local"
    assert recorded["hyperparameters"] == {"epochs": "2", "lr": "0.1"}
    assert recorded["metrics"] == {}  # the test script prints no metric the job defines
    assert recorded["inputs"][0]["channel"] == "train" and recorded["inputs"][0]["compression"] == "None"
    assert recorded["artifact_uri"].endswith("training/synced-1/output/model.tar.gz")
    assert recorded["started_at"] and recorded["ended_at"]
    again = sync(local_jobs, tracking)
    assert (again["synced"], again["already_tracked"]) == (0, 2)  # exactly once


def sensor_tick(sagemaker, tracking, cursor=None):
    with dg.build_sensor_context(cursor=cursor, resources={"sagemaker": sagemaker, "tracking": tracking}) as context:
        return training_jobs_sensor(context)


def aged(cursor, seconds=RETRY_AFTER_SECONDS + 1):
    """The cursor as a later tick sees it: every request `seconds` older."""
    state = json.loads(cursor)
    for entry in state["waiting"].values():
        entry["requested_at"] -= seconds
    return json.dumps(state)


def test_the_sensor_requests_new_jobs_once_and_again_when_a_sync_run_failed(local_artifacts, tmp_path, code_dir,
                                                                             app_db):
    local_artifacts.write_text("data/train/part-0.csv", "a,1\n")
    sagemaker = LocalSageMakerJobs(artifacts=local_artifacts, work_dir=str(tmp_path / "jobs"))
    tracking = TrackingStore(db=app_db)
    suffix = uuid.uuid4().hex[:8]
    opted, plain, half = f"opted-{suffix}", f"plain-{suffix}", f"half-{suffix}"
    for name, tags in ((opted, TAGS), (plain, {"team": "risk"}), (half, {"MODEL_DB_SYNC": "true"})):
        sagemaker.train(job_name=name, source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
                        hyperparameters={"epochs": 1}, output_prefix="training", tags=tags)

    first = sensor_tick(sagemaker, tracking)
    [request] = first.run_requests
    assert request.run_config["ops"]["training_runs"]["config"]["job_names"] == sorted([opted, plain, half])
    assert set(json.loads(first.cursor)["waiting"]) == {opted}  # only an opted-in, complete job is awaited
    assert not sensor_tick(sagemaker, tracking, first.cursor).run_requests  # a run is on its way: nothing new

    # that run failed (nothing recorded): once the retry delay has passed, the job is requested again
    retried = sensor_tick(sagemaker, tracking, aged(first.cursor))
    [again] = retried.run_requests
    assert again.run_config["ops"]["training_runs"]["config"]["job_names"] == [opted]
    assert again.run_key != request.run_key and json.loads(retried.cursor)["waiting"][opted]["attempts"] == 2

    sync(sagemaker, tracking, [opted])  # the retried run succeeds
    settled = sensor_tick(sagemaker, tracking, aged(retried.cursor))
    assert not settled.run_requests and json.loads(settled.cursor)["waiting"] == {}
    assert not sensor_tick(sagemaker, tracking, settled.cursor).run_requests  # and no replay after that

    # a job that never gets recorded is requested at most MAX_ATTEMPTS times, then reported and dropped
    stuck = f"stuck-{suffix}"
    sagemaker.train(job_name=stuck, source_dir=code_dir, entry_point="train.py", channels={"train": "data/train"},
                    hyperparameters={"epochs": 1}, output_prefix="training", tags=TAGS)
    state = json.loads(settled.cursor)
    state["seen"].append(stuck)
    state["waiting"] = {stuck: {"requested_at": 0, "attempts": MAX_ATTEMPTS},
                        f"gone-{suffix}": {"requested_at": 0, "attempts": 1}}  # no longer listed: dropped
    given_up = sensor_tick(sagemaker, tracking, json.dumps(state))
    assert not given_up.run_requests and json.loads(given_up.cursor)["waiting"] == {}
    assert tracking.tracked([stuck, opted]) == {opted}


def test_unreadable_job_records_are_reported(local_jobs, app_db):
    record = next(Path(local_jobs.work_dir).glob("training/*/job.json"))
    record.write_text("{broken")
    meta = sync(local_jobs, TrackingStore(db=app_db))
    assert "is unreadable" in meta["reports"]


def test_sagemaker_jobs_with_tags_from_moto(moto, boto_client, s3_artifacts, app_db):
    client = boto_client("sagemaker")
    for name, tags in (("aws-synced", TAGS), ("aws-ignored", {"team": "x"})):
        client.create_training_job(
            TrainingJobName=name, RoleArn="arn:aws:iam::123456789012:role/sm",
            AlgorithmSpecification={"TrainingImage": "img", "TrainingInputMode": "File"},
            HyperParameters={"l2": json.dumps("0.01")},
            InputDataConfig=[{"ChannelName": "train", "CompressionType": "Gzip", "RecordWrapperType": "None",
                              "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/train"}}}],
            OutputDataConfig={"S3OutputPath": "s3://b/out"},
            ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": 60}, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    sagemaker = AwsSageMakerJobs(artifacts=s3_artifacts, endpoint_url=moto,
                                  role_arn="arn:aws:iam::123456789012:role/sm")
    tracking = TrackingStore(db=app_db)
    meta = sync(sagemaker, tracking, job_names=["aws-synced", "aws-ignored"])
    assert (meta["synced"], meta["ignored_without_sync_tag"]) == (1, 1)
    [run] = [r for r in tracking.runs() if r["job_name"] == "aws-synced"]
    assert run["backend"] == "aws" and run["hyperparameters"] == {"l2": "0.01"}
    assert run["inputs"] == [{"channel": "train", "uri": "s3://b/train", "compression": "Gzip", "record_wrapper": "None"}]
    assert run["artifact_uri"] == "s3://b/out/aws-synced/output/model.tar.gz"
