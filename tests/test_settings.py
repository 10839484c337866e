"""Implementations are chosen from the environment in one place; bad settings fail with the variable's name."""

import dagster as dg
import pytest

from resources.artifacts import LocalArtifactStore, S3ArtifactStore
from resources.model_registry import LocalModelRegistry, SageMakerModelRegistry
from resources.notifier import LocalNotifier, SnsNotifier
from resources.postgres import EmbeddedPostgresDatabase, ExternalPostgresDatabase
from resources.readonly import (
    ProvisionedReadOnlyDatabase,
    ReadOnlyUrlDatabase,
    SecretsManagerReadOnlyDatabase,
)
from resources.sagemaker import AwsSageMakerJobs, LocalSageMakerJobs
from resources.settings import ConfigurationError, PlatformSettings, build_resources
from resources.source_db import EmbeddedClassicModels, SqlSourceDatabase
from resources.stream import KinesisEventStream, LocalEventStream


def resources_for(env):
    return build_resources(PlatformSettings.from_env(env))


def test_defaults_are_all_local(tmp_path):
    res = resources_for({"DATA_DIR": str(tmp_path)})
    assert isinstance(res["app_db"], EmbeddedPostgresDatabase)
    assert res["app_db"].data_dir == str(tmp_path / "postgres")
    assert isinstance(res["readonly_db"], ProvisionedReadOnlyDatabase)
    assert isinstance(res["artifacts"], LocalArtifactStore)
    assert res["artifacts"].root == str(tmp_path / "artifacts")
    assert isinstance(res["sagemaker"], LocalSageMakerJobs) and res["sagemaker"].backend == "local"
    assert (res["sagemaker"].training_instance_count, res["sagemaker"].transform_instance_count) == (1, 1)
    assert isinstance(res["events"], LocalEventStream) and res["events"].root == str(tmp_path / "stream" / "session-events")
    assert isinstance(res["source_db"], EmbeddedClassicModels)
    assert isinstance(res["registry"], LocalModelRegistry) and res["registry"].group_for("credit") == "credit-dev-models"
    assert res["registry"].version_policy == "approved"
    assert isinstance(res["notifier"], LocalNotifier) and res["notifier"].path == str(tmp_path / "notifications.jsonl")


def test_aws_settings_select_aws_implementations(tmp_path):
    res = resources_for({
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql+psycopg://app:pw@db.example:5432/bank",
        "READONLY_DATABASE_SECRET_ID": "prod/replica",
        "ARTIFACTS_URI": "s3://ml-artifacts/platform/dev",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "SAGEMAKER_BACKEND": "aws",
        "SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/sm",
        "STREAM_BACKEND": "kinesis",
        "KINESIS_STREAM_NAME": "session-events",
        "SOURCE_DATABASE_URL": "mysql+pymysql://etl:pw@aurora.example:3306/classicmodels",
        "MODEL_REGISTRY_BACKEND": "sagemaker",
        "MLDP_ENV": "prod",
        "MODEL_VERSION_POLICY": "newest",
        "NOTIFIER_BACKEND": "sns",
        "SNS_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:model-approvals",
        "MODEL_REGISTRY_EVENTS_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/registry-events",
        "SAGEMAKER_TRAINING_INSTANCE_COUNT": "2",
        "SAGEMAKER_TRANSFORM_INSTANCE_COUNT": "4",
    })
    assert isinstance(res["app_db"], ExternalPostgresDatabase)
    assert res["app_db"].describe() == "postgresql://app@db.example:5432/bank"
    assert isinstance(res["readonly_db"], SecretsManagerReadOnlyDatabase)
    assert res["readonly_db"].secretsmanager.region_name == "eu-west-1"
    artifacts = res["artifacts"]
    assert isinstance(artifacts, S3ArtifactStore)
    assert (artifacts.bucket, artifacts.prefix) == ("ml-artifacts", "platform/dev")
    assert artifacts.s3.endpoint_url == "http://127.0.0.1:5000"
    sagemaker = res["sagemaker"]
    assert isinstance(sagemaker, AwsSageMakerJobs) and sagemaker.role_arn.endswith("role/sm")
    assert (sagemaker.region_name, sagemaker.endpoint_url) == ("eu-west-1", "http://127.0.0.1:5000")
    assert (sagemaker.training_instance_count, sagemaker.transform_instance_count) == (2, 4)
    assert isinstance(res["events"], KinesisEventStream) and res["events"].stream_name == "session-events"
    assert res["events"].endpoint_url == "http://127.0.0.1:5000"
    assert isinstance(res["source_db"], SqlSourceDatabase)
    assert res["source_db"].describe() == "mysql+pymysql://etl:***@aurora.example:3306/classicmodels"
    registry = res["registry"]
    assert isinstance(registry, SageMakerModelRegistry) and registry.group_for("recsys") == "recsys-prod-models"
    assert registry.version_policy == "newest" and registry.region_name == "eu-west-1"
    assert registry.events_queue_url.endswith("/registry-events")
    assert isinstance(res["notifier"], SnsNotifier) and res["notifier"].topic_arn.endswith(":model-approvals")


def test_readonly_url_is_used_when_given(tmp_path):
    res = resources_for({"DATA_DIR": str(tmp_path), "READONLY_DATABASE_URL": "postgresql://ro:secret@replica/bank"})
    assert isinstance(res["readonly_db"], ReadOnlyUrlDatabase)
    assert "secret" not in res["readonly_db"].describe()


def test_credentials_from_the_process_environment_travel_as_env_vars(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.example/bank")
    settings = PlatformSettings.from_env()
    assert settings.from_process_env
    defs = dg.Definitions(resources=build_resources(settings))
    # the UI shows the variable's name; the value is only read when a run starts
    assert isinstance(defs.resources["app_db"].url, dg.EnvVar)
    assert defs.resources["app_db"].url.env_var_name == "DATABASE_URL"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SAGEMAKER_BACKEND": "cloud"}, "SAGEMAKER_BACKEND must be 'local' or 'aws'"),
        ({"SAGEMAKER_BACKEND": "aws", "SAGEMAKER_ROLE_ARN": "arn"}, "needs ARTIFACTS_URI=s3://"),
        ({"SAGEMAKER_BACKEND": "aws", "ARTIFACTS_URI": "s3://b/p"}, "needs SAGEMAKER_ROLE_ARN"),
        ({"READONLY_DATABASE_URL": "postgresql://x", "READONLY_DATABASE_SECRET_ID": "s"}, "not both"),
        ({"SAGEMAKER_MAX_WAIT_SECONDS": "soon"}, "SAGEMAKER_MAX_WAIT_SECONDS"),
        ({"STREAM_BACKEND": "kafka"}, "STREAM_BACKEND must be 'local' or 'kinesis'"),
        ({"STREAM_BACKEND": "kinesis"}, "needs KINESIS_STREAM_NAME"),
        ({"EMBEDDINGS_RETENTION": "all"}, "EMBEDDINGS_RETENTION"),
        ({"MODEL_REGISTRY_BACKEND": "mlflow"}, "MODEL_REGISTRY_BACKEND must be 'local' or 'sagemaker'"),
        ({"MODEL_VERSION_POLICY": "latest"}, "MODEL_VERSION_POLICY must be 'approved' or 'newest'"),
        ({"NOTIFIER_BACKEND": "email"}, "NOTIFIER_BACKEND must be 'local' or 'sns'"),
        ({"NOTIFIER_BACKEND": "sns"}, "needs SNS_TOPIC_ARN"),
        ({"MLDP_ENV": "Prod Env"}, "MLDP_ENV must be lower-case"),
        ({"MODEL_REGISTRY_EVENTS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/q"},
         "MODEL_REGISTRY_EVENTS_QUEUE_URL needs MODEL_REGISTRY_BACKEND=sagemaker"),
        ({"MODEL_REGISTRY_BACKEND": "sagemaker", "MODEL_REGISTRY_EVENTS_QUEUE_URL": "registry-events"},
         "MODEL_REGISTRY_EVENTS_QUEUE_URL must be an SQS queue URL"),
        ({"SAGEMAKER_TRANSFORM_INSTANCE_COUNT": "0"}, "SAGEMAKER_TRANSFORM_INSTANCE_COUNT must be a whole number of "
                                                      "instances from 1 to 100, not '0'"),
        ({"SAGEMAKER_TRAINING_INSTANCE_COUNT": "two"}, "SAGEMAKER_TRAINING_INSTANCE_COUNT must be a whole number"),
        ({"SAGEMAKER_TRAINING_INSTANCE_COUNT": "2"}, "SAGEMAKER_TRAINING_INSTANCE_COUNT above 1 needs "
                                                     "SAGEMAKER_BACKEND=aws"),
        ({"CREDIT_SCORING_CRON": "every morning"}, "CREDIT_SCORING_CRON must be a cron expression of five fields"),
        ({"CREDIT_RETRAINING_CRON": "0 25 * * *"}, "CREDIT_RETRAINING_CRON must be a cron expression"),
        ({"RECSYS_RETRAINING_CRON": "* * * *"}, "RECSYS_RETRAINING_CRON must be a cron expression"),
        ({"SCHEDULE_TIMEZONE": "Mars/Olympus_Mons"}, "SCHEDULE_TIMEZONE must be an IANA time zone"),
        ({"SCHEDULE_TIMEZONE": "../../etc/passwd"}, "SCHEDULE_TIMEZONE must be an IANA time zone"),
        ({"SCHEDULE_TIMEZONE": "America"}, "SCHEDULE_TIMEZONE must be an IANA time zone"),
        ({"DAGSTER_UI_URL": "javascript:alert(1)"}, "DAGSTER_UI_URL must be the Dagster UI's address"),
        ({"DAGSTER_UI_URL": "https://dagster.example.com/?q=1"}, "DAGSTER_UI_URL must be the Dagster UI's address"),
        ({"FRESHNESS_TRAINING_DAYS": "0"}, "FRESHNESS_TRAINING_DAYS must be a whole number of days from 1 to 365"),
        ({"FRESHNESS_RECOMMENDATIONS_HOURS": "1.5"}, "FRESHNESS_RECOMMENDATIONS_HOURS must be a whole number of hours"),
        ({"DRIFT_PSI_WARN": "high"}, "DRIFT_PSI_WARN must be a population stability index, not 'high'"),
        ({"DRIFT_PSI_ERROR": "nan"}, "DRIFT_PSI_ERROR must be a population stability index"),
        ({"DRIFT_PSI_WARN": "0.3"}, r"DRIFT_PSI_ERROR \(0.25\) must be above DRIFT_PSI_WARN \(0.3\)"),
        ({"DRIFT_COVERAGE_ERROR": "0.5"}, r"DRIFT_COVERAGE_ERROR \(0.5\) must be below DRIFT_COVERAGE_WARN"),
        ({"DRIFT_UNSEEN_WARN": "1.5"}, "DRIFT_UNSEEN_WARN must be a share of events"),
        ({"DRIFT_APPROVAL_RATE_ERROR": "-0.1"}, "DRIFT_APPROVAL_RATE_ERROR must be a difference of approval rates"),
        ({"DRIFT_MIN_SAMPLE": "0"}, "DRIFT_MIN_SAMPLE must be a whole number"),
        ({"ETL_ENGINE": "emr"}, "ETL_ENGINE must be one of inprocess, spark, glue"),
        ({"ETL_ENGINE": "glue", "GLUE_SOURCE_SECRET_ID": "s"}, "ETL_ENGINE=glue needs ARTIFACTS_URI=s3://"),
        ({"ETL_ENGINE": "glue", "ARTIFACTS_URI": "s3://b/p"}, "ETL_ENGINE=glue needs GLUE_SOURCE_SECRET_ID"),
        ({"GLUE_WORKERS": "1"}, "GLUE_WORKERS must be a whole number of workers from 2 to 299"),
        ({"GLUE_WORKER_TYPE": "G.3X"}, "GLUE_WORKER_TYPE must be one of"),
    ],
)
def test_contradictory_settings_name_the_variable(env, message, tmp_path):
    with pytest.raises(ConfigurationError, match=message):
        PlatformSettings.from_env({"DATA_DIR": str(tmp_path), **env})


def test_unsupported_artifact_scheme(tmp_path):
    with pytest.raises(ValueError, match="only s3:// URIs and local paths"):
        resources_for({"DATA_DIR": str(tmp_path), "ARTIFACTS_URI": "gs://bucket/x"})
