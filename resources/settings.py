"""The one place that reads the environment.

Every outside system sits behind a resource with a local and an AWS-capable implementation; which one
is used is decided here, from environment variables, and nowhere else. The README lists every variable.
Values that carry credentials (database URLs) are handed to Dagster as `dg.EnvVar` so the UI shows the
variable's name, never its value.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MAX_INSTANCE_COUNT = 100  # a bound on SAGEMAKER_*_INSTANCE_COUNT; the account's service quotas may be lower


# Drift thresholds (warn, error), each the field `drift_<key>` (its defaults there): (variables' prefix, what
# the number is, higher is worse)
DRIFT_THRESHOLDS = {
    "psi": ("DRIFT_PSI", "a population stability index", True),
    "approval_rate": ("DRIFT_APPROVAL_RATE", "a difference of approval rates (0-1)", True),
    "coverage": ("DRIFT_COVERAGE", "a share of the catalogue (0-1)", False),
    "unseen": ("DRIFT_UNSEEN", "a share of events (0-1)", True),
}

# When the schedules fire (in SCHEDULE_TIMEZONE), each the field of its name in lower case (defaults there)
CRON_SETTINGS = ("CREDIT_SCORING_CRON", "CREDIT_RETRAINING_CRON", "RECSYS_RETRAINING_CRON", "TRACKING_SWEEP_CRON")


# the JDBC drivers Debian installs (libmariadb-java, libpostgresql-jdbc-java; scripts/install_spark_runtime.sh)
SPARK_JDBC_JARS = "/usr/share/java/mariadb-java-client.jar,/usr/share/java/postgresql.jar"
ETL_ENGINES = ("inprocess", "spark", "glue")
GLUE_WORKER_TYPES = ("G.025X", "G.1X", "G.2X", "G.4X", "G.8X", "Z.2X")


class ConfigurationError(ValueError):
    """A setting is missing or contradicts another one; the message names the variable."""


def _default_data_dir() -> Path:
    # An editable install keeps its state beside the code (git-ignored `.data/`); a packaged install has
    # no project folder to write into, so it uses the current directory instead.
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / ".data"
    return Path.cwd() / ".data"


@dataclass(frozen=True)
class PlatformSettings:
    """Settings resolved from the environment (see README, "Environment variables")."""

    data_dir: Path
    datasets_dir: Path
    database_url: str | None = None
    readonly_database_url: str | None = None
    readonly_secret_id: str | None = None
    readonly_role: str = "mldp_readonly"
    source_database_url: str | None = None
    stream_backend: str = "local"
    kinesis_stream_name: str | None = None
    environment: str = "dev"
    registry_backend: str = "local"
    registry_events_queue_url: str | None = None
    model_version_policy: str = "approved"
    notifier_backend: str = "local"
    sns_topic_arn: str | None = None
    notify_webhook_url: str | None = None
    embeddings_retention: int = 2
    readonly_statement_timeout_seconds: int = 600
    max_event_bytes: int = 1024 * 1024  # Kinesis' own default record size limit
    item_index_max_items: int = 500_000
    recommender_refresh_seconds: float = 2.0
    etl_engine: str = "inprocess"
    spark_master: str = "local[2]"
    spark_driver_memory: str = "1g"
    spark_jdbc_jars: str = SPARK_JDBC_JARS
    glue_etl_job_name: str = "mldp-ratings-etl"
    glue_worker_type: str = "G.1X"
    glue_workers: int = 2
    glue_source_secret_id: str | None = None
    artifacts_uri: str = ""
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    sagemaker_backend: str = "local"
    sagemaker_role_arn: str | None = None
    sagemaker_instance_type: str = "ml.m5.xlarge"
    sagemaker_framework_version: str = "2.8.0"
    sagemaker_inference_framework_version: str = "2.6.0"
    sagemaker_py_version: str = "py312"
    sagemaker_training_image: str | None = None
    sagemaker_inference_image: str | None = None
    sagemaker_max_wait_seconds: int = 3600
    sagemaker_training_instance_count: int = 1
    sagemaker_transform_instance_count: int = 1
    dagster_home: Path | None = None
    dagster_pg_url: str | None = None
    dagster_ui_url: str = "http://127.0.0.1:3000"
    schedule_timezone: str = "UTC"
    # daily scoring at 06:00, retraining on Sundays (off by default), the tracking sync's nightly sweep at 01:00
    credit_scoring_cron: str = "0 6 * * *"
    credit_retraining_cron: str = "0 2 * * 0"
    recsys_retraining_cron: str = "0 3 * * 0"
    tracking_sweep_cron: str = "0 1 * * *"
    freshness_training_days: int = 8
    freshness_recommendations_hours: int = 2
    drift_psi: tuple[float, float] = (0.1, 0.25)
    drift_approval_rate: tuple[float, float] = (0.10, 0.20)
    drift_coverage: tuple[float, float] = (0.10, 0.02)
    drift_unseen: tuple[float, float] = (0.20, 0.50)
    drift_min_sample: int = 50
    # True when read from this process's environment: credentials are then passed as dg.EnvVar, so the
    # Dagster UI shows the variable's name instead of its value.
    from_process_env: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PlatformSettings:
        from_process_env = env is None
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def setting(name: str, field: str) -> str:
            """The variable's value, or the field's default as text (the defaults are written once, above)."""
            return get(name) or str(DEFAULTS[field])

        data_dir = Path(get("DATA_DIR") or _default_data_dir()).expanduser().resolve()
        datasets_dir = Path(get("DATASETS_DIR") or PROJECT_ROOT.parent / "shared" / "datasets").expanduser()
        backend = (setting("SAGEMAKER_BACKEND", "sagemaker_backend")).lower()
        if backend not in ("local", "aws"):
            raise ConfigurationError(f"SAGEMAKER_BACKEND must be 'local' or 'aws', not {backend!r}")
        artifacts_uri = get("ARTIFACTS_URI") or str(data_dir / "artifacts")
        if backend == "aws" and not artifacts_uri.startswith("s3://"):
            raise ConfigurationError(
                "SAGEMAKER_BACKEND=aws needs ARTIFACTS_URI=s3://bucket/prefix: SageMaker jobs read their "
                f"channels from S3 and write models there (ARTIFACTS_URI is {artifacts_uri!r})"
            )
        if backend == "aws" and not get("SAGEMAKER_ROLE_ARN"):
            raise ConfigurationError("SAGEMAKER_BACKEND=aws needs SAGEMAKER_ROLE_ARN (the jobs' execution role)")
        if get("READONLY_DATABASE_URL") and get("READONLY_DATABASE_SECRET_ID"):
            raise ConfigurationError("set READONLY_DATABASE_URL or READONLY_DATABASE_SECRET_ID, not both")
        max_wait = setting("SAGEMAKER_MAX_WAIT_SECONDS", "sagemaker_max_wait_seconds")
        if not max_wait.isdigit():
            raise ConfigurationError(f"SAGEMAKER_MAX_WAIT_SECONDS must be a whole number of seconds, not {max_wait!r}")
        instance_counts = {}
        for name in ("SAGEMAKER_TRAINING_INSTANCE_COUNT", "SAGEMAKER_TRANSFORM_INSTANCE_COUNT"):
            count = setting(name, name.lower())
            if not count.isdigit() or not 1 <= int(count) <= MAX_INSTANCE_COUNT:
                raise ConfigurationError(f"{name} must be a whole number of instances from 1 to {MAX_INSTANCE_COUNT}, "
                                         f"not {count!r}")
            instance_counts[name] = int(count)
        if backend == "local" and instance_counts["SAGEMAKER_TRAINING_INSTANCE_COUNT"] > 1:
            raise ConfigurationError(
                "SAGEMAKER_TRAINING_INSTANCE_COUNT above 1 needs SAGEMAKER_BACKEND=aws: the local backend runs one "
                "training instance")
        stream_backend = (setting("STREAM_BACKEND", "stream_backend")).lower()
        if stream_backend not in ("local", "kinesis"):
            raise ConfigurationError(f"STREAM_BACKEND must be 'local' or 'kinesis', not {stream_backend!r}")
        if stream_backend == "kinesis" and not get("KINESIS_STREAM_NAME"):
            raise ConfigurationError("STREAM_BACKEND=kinesis needs KINESIS_STREAM_NAME")
        registry_backend = (setting("MODEL_REGISTRY_BACKEND", "registry_backend")).lower()
        if registry_backend not in ("local", "sagemaker"):
            raise ConfigurationError(f"MODEL_REGISTRY_BACKEND must be 'local' or 'sagemaker', not {registry_backend!r}")
        events_queue = get("MODEL_REGISTRY_EVENTS_QUEUE_URL")
        if events_queue and registry_backend != "sagemaker":
            raise ConfigurationError("MODEL_REGISTRY_EVENTS_QUEUE_URL needs MODEL_REGISTRY_BACKEND=sagemaker (the queue "
                                     "carries SageMaker Model Registry events)")
        if events_queue and not re.fullmatch(r"https?://[^\s]+", events_queue):
            raise ConfigurationError("MODEL_REGISTRY_EVENTS_QUEUE_URL must be an SQS queue URL "
                                     "(https://sqs.<region>.amazonaws.com/<account>/<queue>)")
        policy = (setting("MODEL_VERSION_POLICY", "model_version_policy")).lower()
        if policy not in ("approved", "newest"):
            raise ConfigurationError(f"MODEL_VERSION_POLICY must be 'approved' or 'newest', not {policy!r}")
        notifier_backend = (setting("NOTIFIER_BACKEND", "notifier_backend")).lower()
        if notifier_backend not in ("local", "sns"):
            raise ConfigurationError(f"NOTIFIER_BACKEND must be 'local' or 'sns', not {notifier_backend!r}")
        if notifier_backend == "sns" and not get("SNS_TOPIC_ARN"):
            raise ConfigurationError("NOTIFIER_BACKEND=sns needs SNS_TOPIC_ARN")
        environment = setting("MLDP_ENV", "environment")
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", environment):
            raise ConfigurationError(f"MLDP_ENV must be lower-case letters, digits and hyphens, not {environment!r}")
        _check_connection_strings(get)
        retention = setting("EMBEDDINGS_RETENTION", "embeddings_retention")
        if not retention.isdigit():
            raise ConfigurationError(f"EMBEDDINGS_RETENTION must be a whole number of versions, not {retention!r}")
        readonly_timeout = setting("READONLY_STATEMENT_TIMEOUT_SECONDS", "readonly_statement_timeout_seconds")
        if not readonly_timeout.isdigit() or not 1 <= int(readonly_timeout) <= 3600:
            raise ConfigurationError("READONLY_STATEMENT_TIMEOUT_SECONDS must be a whole number of seconds from 1 to "
                                     f"3600, not {readonly_timeout!r}")
        max_event_bytes = setting("MAX_EVENT_BYTES", "max_event_bytes")
        if not max_event_bytes.isdigit() or not 1024 <= int(max_event_bytes) <= 10 * 1024 * 1024:
            raise ConfigurationError("MAX_EVENT_BYTES must be a whole number of bytes from 1024 to 10485760 (10 MiB, "
                                     f"Kinesis' largest record), not {max_event_bytes!r}")
        ui_url = (setting("DAGSTER_UI_URL", "dagster_ui_url")).rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", ui_url):
            raise ConfigurationError("DAGSTER_UI_URL must be the Dagster UI's address as the people alerted open it, "
                                     f"e.g. https://dagster.example.com (not {ui_url!r})")
        schedule_timezone = setting("SCHEDULE_TIMEZONE", "schedule_timezone")
        if get("SCHEDULE_TIMEZONE"):  # checked only when set: the Lambda's runtime may have no time-zone database
            _check_timezone("SCHEDULE_TIMEZONE", schedule_timezone)
        crons = {}
        for name in CRON_SETTINGS:
            crons[name.lower()] = setting(name, name.lower())
            if get(name) is not None:
                _check_cron(name, crons[name.lower()])
        freshness = {}
        for name, low, high, unit in (("FRESHNESS_TRAINING_DAYS", 1, 365, "days"),
                                      ("FRESHNESS_RECOMMENDATIONS_HOURS", 1, 720, "hours")):
            value = setting(name, name.lower())
            if not value.isdigit() or not low <= int(value) <= high:
                raise ConfigurationError(f"{name} must be a whole number of {unit} from {low} to {high}, not {value!r}")
            freshness[name.lower()] = int(value)
        max_items = setting("ITEM_INDEX_MAX_ITEMS", "item_index_max_items")
        if not max_items.isdigit() or not 0 <= int(max_items) <= 50_000_000:
            raise ConfigurationError("ITEM_INDEX_MAX_ITEMS must be a whole number of items from 0 (never held in "
                                     f"memory) to 50000000, not {max_items!r}")
        refresh = setting("RECOMMENDER_REFRESH_SECONDS", "recommender_refresh_seconds")
        try:
            refresh_seconds = float(refresh)
        except ValueError:
            refresh_seconds = -1.0
        if not 0.1 <= refresh_seconds <= 3600:
            raise ConfigurationError(f"RECOMMENDER_REFRESH_SECONDS must be a number of seconds from 0.1 to 3600, not "
                                     f"{refresh!r}")
        etl_engine = (setting("ETL_ENGINE", "etl_engine")).lower()
        if etl_engine not in ETL_ENGINES:
            raise ConfigurationError(f"ETL_ENGINE must be one of {', '.join(ETL_ENGINES)}, not {etl_engine!r}")
        if etl_engine == "glue" and not artifacts_uri.startswith("s3://"):
            raise ConfigurationError("ETL_ENGINE=glue needs ARTIFACTS_URI=s3://bucket/prefix: the Glue job writes the "
                                     f"training data there (ARTIFACTS_URI is {artifacts_uri!r})")
        if etl_engine == "glue" and not get("GLUE_SOURCE_SECRET_ID"):
            raise ConfigurationError("ETL_ENGINE=glue needs GLUE_SOURCE_SECRET_ID: the Secrets Manager secret (JSON with "
                                     "username and password) the Glue job reads the source database with")
        worker_type = setting("GLUE_WORKER_TYPE", "glue_worker_type")
        if worker_type not in GLUE_WORKER_TYPES:
            raise ConfigurationError(f"GLUE_WORKER_TYPE must be one of {', '.join(GLUE_WORKER_TYPES)}, not {worker_type!r}")
        glue_workers = setting("GLUE_WORKERS", "glue_workers")
        if not glue_workers.isdigit() or not 2 <= int(glue_workers) <= 299:
            raise ConfigurationError(f"GLUE_WORKERS must be a whole number of workers from 2 to 299, not {glue_workers!r}")
        drift = {f"drift_{key}": _drift_thresholds(get, prefix, *DEFAULTS[f"drift_{key}"], what, higher_is_worse)
                 for key, (prefix, what, higher_is_worse) in DRIFT_THRESHOLDS.items()}
        min_sample = setting("DRIFT_MIN_SAMPLE", "drift_min_sample")
        if not min_sample.isdigit() or not 1 <= int(min_sample) <= 1_000_000:
            raise ConfigurationError(f"DRIFT_MIN_SAMPLE must be a whole number (of customers or events) from 1 to "
                                     f"1000000, not {min_sample!r}")
        return cls(
            data_dir=data_dir,
            datasets_dir=datasets_dir,
            database_url=get("DATABASE_URL"),
            readonly_database_url=get("READONLY_DATABASE_URL"),
            readonly_secret_id=get("READONLY_DATABASE_SECRET_ID"),
            readonly_role=setting("READONLY_ROLE", "readonly_role"),
            source_database_url=get("SOURCE_DATABASE_URL"),
            stream_backend=stream_backend,
            kinesis_stream_name=get("KINESIS_STREAM_NAME"),
            environment=environment,
            registry_backend=registry_backend,
            registry_events_queue_url=events_queue,
            model_version_policy=policy,
            notifier_backend=notifier_backend,
            sns_topic_arn=get("SNS_TOPIC_ARN"),
            notify_webhook_url=get("NOTIFY_WEBHOOK_URL"),
            embeddings_retention=int(retention),
            readonly_statement_timeout_seconds=int(readonly_timeout),
            max_event_bytes=int(max_event_bytes),
            item_index_max_items=int(max_items),
            recommender_refresh_seconds=refresh_seconds,
            etl_engine=etl_engine,
            spark_master=setting("SPARK_MASTER", "spark_master"),
            spark_driver_memory=setting("SPARK_DRIVER_MEMORY", "spark_driver_memory"),
            spark_jdbc_jars=get("SPARK_JDBC_JARS") or SPARK_JDBC_JARS,
            glue_etl_job_name=setting("GLUE_ETL_JOB_NAME", "glue_etl_job_name"),
            glue_worker_type=worker_type,
            glue_workers=int(glue_workers),
            glue_source_secret_id=get("GLUE_SOURCE_SECRET_ID"),
            artifacts_uri=artifacts_uri,
            aws_region=get("AWS_REGION") or setting("AWS_DEFAULT_REGION", "aws_region"),
            aws_endpoint_url=get("AWS_ENDPOINT_URL"),
            sagemaker_backend=backend,
            sagemaker_role_arn=get("SAGEMAKER_ROLE_ARN"),
            sagemaker_instance_type=setting("SAGEMAKER_INSTANCE_TYPE", "sagemaker_instance_type"),
            sagemaker_framework_version=setting("SAGEMAKER_FRAMEWORK_VERSION", "sagemaker_framework_version"),
            sagemaker_inference_framework_version=setting("SAGEMAKER_INFERENCE_FRAMEWORK_VERSION", "sagemaker_inference_framework_version"),
            sagemaker_py_version=setting("SAGEMAKER_PY_VERSION", "sagemaker_py_version"),
            sagemaker_training_image=get("SAGEMAKER_TRAINING_IMAGE"),
            sagemaker_inference_image=get("SAGEMAKER_INFERENCE_IMAGE"),
            sagemaker_max_wait_seconds=int(max_wait),
            sagemaker_training_instance_count=instance_counts["SAGEMAKER_TRAINING_INSTANCE_COUNT"],
            sagemaker_transform_instance_count=instance_counts["SAGEMAKER_TRANSFORM_INSTANCE_COUNT"],
            dagster_home=Path(get("DAGSTER_HOME")).expanduser() if get("DAGSTER_HOME") else None,
            dagster_pg_url=get("DAGSTER_PG_URL"),
            dagster_ui_url=ui_url,
            schedule_timezone=schedule_timezone,
            **crons,
            **freshness,
            **drift,
            drift_min_sample=int(min_sample),
            from_process_env=from_process_env,
        )

    @property
    def local_stream_dir(self) -> Path:
        return self.data_dir / "stream" / "session-events"

    @property
    def sagemaker_work_dir(self) -> Path:
        return self.data_dir / "sagemaker"

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.data_dir / "postgres"


DEFAULTS = {f.name: f.default for f in dataclasses.fields(PlatformSettings)}

def _drift_thresholds(get, prefix: str, warn: float, error: float, what: str,
                      higher_is_worse: bool) -> tuple[float, float]:
    """`<prefix>_WARN` and `<prefix>_ERROR`: numbers, an error beyond its warning."""
    values = {}
    for level, default in (("WARN", warn), ("ERROR", error)):
        name, raw = f"{prefix}_{level}", get(f"{prefix}_{level}")
        try:
            value = float(raw) if raw is not None else default
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value > 1 and prefix != "DRIFT_PSI") or value > 100:
            raise ConfigurationError(f"{name} must be {what}, not {raw!r}")
        values[level] = value
    beyond = values["ERROR"] > values["WARN"] if higher_is_worse else values["ERROR"] < values["WARN"]
    if not beyond:
        raise ConfigurationError(f"{prefix}_ERROR ({values['ERROR']}) must be {'above' if higher_is_worse else 'below'} "
                                 f"{prefix}_WARN ({values['WARN']}): an error is worse than a warning")
    return values["WARN"], values["ERROR"]


def _check_timezone(name: str, value: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of the database, "America"
        raise ConfigurationError(f"{name} must be an IANA time zone such as UTC or Europe/Berlin, not {value!r}") from None


def _check_cron(name: str, value: str) -> None:
    """Five fields, each a value, range, list or step Dagster's scheduler accepts."""
    from dagster._utils.schedules import is_valid_cron_string  # imported here: the Lambda reads settings too

    if not is_valid_cron_string(value):
        raise ConfigurationError(f"{name} must be a cron expression of five fields (minute hour day-of-month month "
                                 f"day-of-week), e.g. '0 6 * * *' for 06:00 every day, not {value!r}")


def _check_connection_strings(get) -> None:
    """Every URL setting parses, or a ConfigurationError names the setting; the value is never shown (it may
    carry a password, and the message reaches logs and Dagster's event log)."""
    from resources import credentials

    checks = {
        "DATABASE_URL": credentials.check_postgres_url,
        "READONLY_DATABASE_URL": credentials.check_postgres_url,
        "SOURCE_DATABASE_URL": credentials.check_sqlalchemy_url,
        "DAGSTER_PG_URL": credentials.check_postgres_sqlalchemy_url,
        "NOTIFY_WEBHOOK_URL": credentials.check_http_url,
    }
    for name, check in checks.items():
        value = get(name)
        if value is None:
            continue
        try:
            check(value)
        except credentials.UnusableConnectionString as exc:
            raise ConfigurationError(f"{name} {exc} (its value is not shown: it may carry a password)") from None


def build_resources(settings: PlatformSettings | None = None) -> dict[str, object]:
    """The Dagster resources for these settings: local implementations unless AWS is configured."""
    import dagster as dg
    from dagster_aws.s3 import S3Resource
    from dagster_aws.secretsmanager import SecretsManagerResource

    from resources.artifacts import LocalArtifactStore, S3ArtifactStore, parse_artifacts_uri
    from resources.datasets import ReferenceDatasets
    from resources.etl_engine import PIPES_PREFIX, RatingsEtlEngine
    from resources.model_registry import LocalModelRegistry, SageMakerModelRegistry
    from resources.notifier import LocalNotifier, SnsNotifier
    from resources.pgvector import PgVectorStore
    from resources.postgres import EmbeddedPostgresDatabase, ExternalPostgresDatabase
    from resources.readonly import ProvisionedReadOnlyDatabase, ReadOnlyUrlDatabase, SecretsManagerReadOnlyDatabase
    from resources.sagemaker import AwsSageMakerJobs, LocalSageMakerJobs
    from resources.source_db import EmbeddedClassicModels, SqlSourceDatabase
    from resources.stream import KinesisEventStream, LocalEventStream
    from resources.tracking import TrackingStore

    settings = settings or PlatformSettings.from_env()
    aws = {"region_name": settings.aws_region, "endpoint_url": settings.aws_endpoint_url}

    def secret(name: str, value: str):
        return dg.EnvVar(name) if settings.from_process_env else value

    if settings.database_url:
        app_db = ExternalPostgresDatabase(url=secret("DATABASE_URL", settings.database_url))
    else:
        app_db = EmbeddedPostgresDatabase(data_dir=str(settings.embedded_postgres_dir))

    timeout = {"statement_timeout_seconds": settings.readonly_statement_timeout_seconds}
    if settings.readonly_database_url:
        readonly_db = ReadOnlyUrlDatabase(url=secret("READONLY_DATABASE_URL", settings.readonly_database_url), **timeout)
    elif settings.readonly_secret_id:
        readonly_db = SecretsManagerReadOnlyDatabase(
            secret_id=settings.readonly_secret_id, secretsmanager=SecretsManagerResource(**aws), **timeout
        )
    else:
        readonly_db = ProvisionedReadOnlyDatabase(primary=app_db, role=settings.readonly_role, **timeout)

    kind, location, prefix = parse_artifacts_uri(settings.artifacts_uri)
    if kind == "s3":
        artifacts = S3ArtifactStore(bucket=location, prefix=prefix, s3=S3Resource(**aws))
    else:
        artifacts = LocalArtifactStore(root=str(Path(location).expanduser().resolve()))

    # the serving container's settings, which the model packages name too
    serving = {"instance_type": settings.sagemaker_instance_type, "py_version": settings.sagemaker_py_version,
               "inference_framework_version": settings.sagemaker_inference_framework_version,
               "inference_image": settings.sagemaker_inference_image}
    sagemaker_settings = {
        **aws, **serving,
        "artifacts": artifacts,
        "work_dir": str(settings.sagemaker_work_dir),
        "role_arn": settings.sagemaker_role_arn,
        "training_instance_count": settings.sagemaker_training_instance_count,
        "transform_instance_count": settings.sagemaker_transform_instance_count,
        "framework_version": settings.sagemaker_framework_version,
        "training_image": settings.sagemaker_training_image,
    }
    if settings.sagemaker_backend == "aws":
        sagemaker = AwsSageMakerJobs(**sagemaker_settings, max_wait_seconds=settings.sagemaker_max_wait_seconds)
    else:
        sagemaker = LocalSageMakerJobs(**sagemaker_settings)
    if settings.source_database_url:
        source_db = SqlSourceDatabase(source_url=secret("SOURCE_DATABASE_URL", settings.source_database_url))
    else:  # demo classicmodels in the embedded server, even when the application database is external
        embedded = app_db if isinstance(app_db, EmbeddedPostgresDatabase) else EmbeddedPostgresDatabase(
            data_dir=str(settings.embedded_postgres_dir))
        source_db = EmbeddedClassicModels(primary=embedded)

    ratings_etl_engine = RatingsEtlEngine(
        engine=settings.etl_engine, spark_master=settings.spark_master, spark_driver_memory=settings.spark_driver_memory,
        spark_jdbc_jars=settings.spark_jdbc_jars, glue_job_name=settings.glue_etl_job_name,
        glue_worker_type=settings.glue_worker_type, glue_workers=settings.glue_workers,
        glue_source_secret_id=settings.glue_source_secret_id, pipes_bucket=location if kind == "s3" else None,
        pipes_prefix=f"{prefix.strip('/')}/{PIPES_PREFIX}".lstrip("/") if kind == "s3" else PIPES_PREFIX, **aws)

    if settings.stream_backend == "kinesis":
        events = KinesisEventStream(stream_name=settings.kinesis_stream_name, max_record_bytes=settings.max_event_bytes,
                                    **aws)
    else:
        events = LocalEventStream(root=str(settings.local_stream_dir), max_record_bytes=settings.max_event_bytes)

    registry_settings = {"env": settings.environment, "version_policy": settings.model_version_policy}
    if settings.registry_backend == "sagemaker":
        registry = SageMakerModelRegistry(**registry_settings, **aws, **serving,
                                          events_queue_url=settings.registry_events_queue_url)
    else:
        registry = LocalModelRegistry(db=app_db, **registry_settings)
    if settings.notifier_backend == "sns":
        notifier = SnsNotifier(topic_arn=settings.sns_topic_arn, **aws)
    else:
        notifier = LocalNotifier(path=str(settings.data_dir / "notifications.jsonl"),
                                 webhook_url=secret("NOTIFY_WEBHOOK_URL", settings.notify_webhook_url)
                                 if settings.notify_webhook_url else None)

    return {
        "app_db": app_db,
        "readonly_db": readonly_db,
        "artifacts": artifacts,
        "sagemaker": sagemaker,
        "datasets": ReferenceDatasets(root=str(settings.datasets_dir)),
        "source_db": source_db,
        "ratings_etl_engine": ratings_etl_engine,
        # a load keeps trying to swap for longer than a read-only query may hold the tables
        "pgvector": PgVectorStore(db=app_db, retention=settings.embeddings_retention,
                                  swap_wait_seconds=settings.readonly_statement_timeout_seconds + 300,
                                  in_memory_max_items=settings.item_index_max_items),
        "events": events,
        "registry": registry,
        "notifier": notifier,
        "tracking": TrackingStore(db=app_db),
    }


@contextmanager
def open_resources(settings: PlatformSettings | None = None) -> Iterator[object]:
    """The resources initialised for use outside a Dagster run (CLI, notebooks): credentials resolved, nested
    resources wired. Attributes are the resource keys: `with open_resources() as r: r.readonly_db.query(...)`.
    """
    import dagster as dg

    with dg.build_resources(build_resources(settings)) as resources:
        yield resources
