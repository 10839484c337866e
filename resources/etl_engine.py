"""Where the ratings ETL runs (`ETL_ENGINE`): in the Dagster process (`inprocess`, the default), in local Spark
(`spark`), or as an AWS Glue job (`glue`). The Spark and Glue engines run the same script,
`recsys_assets/ratings_etl_spark.py`, and talk to Dagster through Pipes: logs, and the counts and timings of
what the job staged, reported by the job itself.

- `spark`: `dg.PipesSubprocessClient` runs the script with this Python (PySpark from the `spark` extra, Java
  and Debian's JDBC drivers: `scripts/install_spark_runtime.sh`), `SPARK_MASTER` (local[2]).
- `glue`: the script is uploaded to the Glue job's script location (the job, `GLUE_ETL_JOB_NAME`, is created
  by the deploy template) and run with dagster-aws's `PipesGlueClient`, the Pipes context and messages
  passing through the artifacts bucket (`pipes/`). `GLUE_WORKER_TYPE` and `GLUE_WORKERS` size the run.

A failed job raises `EtlJobFailed` with the job's own message (Spark's or Glue's), for the step's failure.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not exported by `dagster`

from resources.artifacts import ArtifactStore, LocalArtifactStore
from resources.aws_clients import JOB_TIMEOUTS, aws_client
from resources.settings import DEFAULTS

JOB_SCRIPT = Path(__file__).resolve().parents[1] / "recsys_assets" / "ratings_etl_spark.py"
PIPES_PREFIX = "pipes/"  # under the artifacts prefix
PIPES_MESSAGES = "messages/"  # under the Pipes prefix: the job's message chunks


class EtlJobFailed(dg.Failure):
    """The Spark or Glue job failed; the description carries its message."""


class RatingsEtlEngine(dg.ConfigurableResource):
    """The engine and its settings (see the module's docstring)."""

    # defaults: the settings' (resources.settings.PlatformSettings), written there once
    engine: str = DEFAULTS["etl_engine"]
    spark_master: str = DEFAULTS["spark_master"]
    spark_driver_memory: str = DEFAULTS["spark_driver_memory"]
    spark_jdbc_jars: str = DEFAULTS["spark_jdbc_jars"]
    glue_job_name: str = DEFAULTS["glue_etl_job_name"]
    glue_worker_type: str = DEFAULTS["glue_worker_type"]
    glue_workers: int = DEFAULTS["glue_workers"]
    glue_source_secret_id: str | None = None
    pipes_bucket: str | None = None  # the artifacts bucket (glue)
    pipes_prefix: str = PIPES_PREFIX  # under it: Pipes' context objects and message chunks (glue)
    region_name: str = DEFAULTS["aws_region"]
    endpoint_url: str | None = None

    def run_job(self, context: dg.AssetExecutionContext, artifacts: ArtifactStore, staged: str, contract: dict,
                source_url) -> dict[str, Any]:
        """The Spark or Glue job reading the source at `source_url` (a SQLAlchemy URL) and staging its output
        under `staged` in `artifacts`; returns what it reported. On failure the staged files are removed."""
        jdbc, user, password = jdbc_source(source_url)
        arguments = {"--contract": json.dumps(contract), "--source-url": jdbc}
        try:
            if self.engine == "glue":
                if self.glue_source_secret_id:
                    arguments["--source-secret-id"] = self.glue_source_secret_id
                return self.run_glue(context, {**arguments, "--output": artifacts.uri(staged)})
            if isinstance(artifacts, LocalArtifactStore):
                output = [str(artifacts.local_path(staged))]
            else:  # Spark here has no S3 file system: it stages locally and uploads
                output = [artifacts.uri(staged), "--stage-locally"]
            command = [part for pair in arguments.items() for part in pair] + ["--output", *output]
            # credentials in the job's environment, never its arguments (which logs and consoles show)
            return self.run_spark(context, command, {"ETL_SOURCE_USER": user, "ETL_SOURCE_PASSWORD": password})
        except BaseException:
            artifacts.delete_prefix(staged.rstrip("/") + "/")
            raise

    def spark_missing(self) -> str | None:
        """Why the spark engine cannot run here (PySpark or a JDBC driver absent), or None."""
        missing = [jar for jar in self.spark_jdbc_jars.split(",") if jar and not Path(jar).is_file()]
        if missing:
            return (f"ETL_ENGINE=spark: JDBC driver(s) missing: {', '.join(missing)} (install them with "
                    "scripts/install_spark_runtime.sh, or set SPARK_JDBC_JARS)")
        if importlib.util.find_spec("pyspark") is None:
            return ("ETL_ENGINE=spark needs PySpark: pip install -e '.[spark]' (scripts/install_spark_runtime.sh "
                    "installs it with Java and the drivers)")
        return None

    def run_spark(self, context: dg.AssetExecutionContext, arguments: list[str], env: dict[str, str]) -> dict[str, Any]:
        """The job in a local Spark (a subprocess of this step); returns the metadata it reported."""
        reason = self.spark_missing()
        if reason:
            raise EtlJobFailed(description=reason)
        with tempfile.TemporaryDirectory(prefix="ratings-etl-") as work:
            error_file = Path(work) / "error.txt"
            cores = re.fullmatch(r"local\[(\d+)\]", self.spark_master)
            command = [sys.executable, str(JOB_SCRIPT), *arguments, "--master", self.spark_master,
                       "--driver-memory", self.spark_driver_memory, "--jars", self.spark_jdbc_jars,
                       "--read-partitions", cores.group(1) if cores else "2",
                       "--mysql-driver", "org.mariadb.jdbc.Driver"]  # Debian's (libmariadb-java)
            client = dg.PipesSubprocessClient(env={"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable})
            try:
                completed = client.run(context=context, command=command, env=env,
                                       extras={"error_file": str(error_file)})
            except DagsterPipesExecutionError as exc:
                reason = error_file.read_text().strip() if error_file.exists() else str(exc)
                raise EtlJobFailed(description=f"the Spark job failed: {reason}") from None
        return _reported(completed)

    def run_glue(self, context: dg.AssetExecutionContext, arguments: dict[str, str]) -> dict[str, Any]:
        """The job as a Glue job run, through Pipes; returns the metadata it reported (and Glue's run id)."""
        from dagster_aws.pipes import PipesGlueClient, PipesS3ContextInjector

        if not self.pipes_bucket:
            raise EtlJobFailed(description="ETL_ENGINE=glue needs ARTIFACTS_URI=s3://bucket/prefix")
        glue, s3 = self.glue_client(), self.s3_client()
        self.upload_script(glue, s3)
        # a new client per run: the S3 message reader counts its chunks across runs
        client = PipesGlueClient(
            client=glue,
            context_injector=PipesS3ContextInjector(bucket=self.pipes_bucket, client=s3, key_prefix=self.pipes_prefix),
            message_reader=_prefixed_message_reader(self.pipes_bucket, s3, self.pipes_prefix),
            forward_termination=True,
        )
        # ratings read over as many JDBC connections as the workers have cores (4 per G.1X worker)
        arguments = {**arguments, "--read-partitions": str(4 * self.glue_workers)}
        parameters = {"JobName": self.glue_job_name, "Arguments": dict(arguments),
                      "WorkerType": self.glue_worker_type, "NumberOfWorkers": self.glue_workers}
        try:
            completed = client.run(context=context, start_job_run_params=parameters)
        except RuntimeError as exc:  # "Glue job ... completed with status FAILED: <Glue's message>"
            raise EtlJobFailed(description=f"the Glue job failed: {exc}") from None
        return _reported(completed)

    def upload_script(self, glue, s3) -> str:
        """The job's script, as this code has it, to where the Glue job runs it from."""
        try:
            job = glue.get_job(JobName=self.glue_job_name)["Job"]
        except glue.exceptions.EntityNotFoundException:
            raise EtlJobFailed(description=f"no Glue job {self.glue_job_name!r} (GLUE_ETL_JOB_NAME): the deploy "
                                           "template creates it (deploy/cloudformation/platform.yaml)") from None
        location = job["Command"]["ScriptLocation"]
        bucket, _, key = location.removeprefix("s3://").partition("/")
        s3.upload_file(str(JOB_SCRIPT), bucket, key)
        return location

    def glue_client(self):
        return aws_client("glue", region_name=self.region_name, endpoint_url=self.endpoint_url, **JOB_TIMEOUTS)

    def s3_client(self):
        return aws_client("s3", region_name=self.region_name, endpoint_url=self.endpoint_url, **JOB_TIMEOUTS)


def _prefixed_message_reader(bucket: str, s3, prefix: str):
    """dagster-aws's S3 message reader with its chunks under `prefix` (it puts them at the bucket's root), so
    the job's role may write there only; the chunks are deleted once read."""
    import random
    import string
    from contextlib import contextmanager

    from dagster_aws.pipes import PipesS3MessageReader

    class PrefixedS3MessageReader(PipesS3MessageReader):
        @contextmanager
        def get_params(self):
            with super().get_params() as params:
                key_prefix = f"{prefix}{PIPES_MESSAGES}{''.join(random.choices(string.ascii_letters, k=30))}"
                try:
                    yield {**params, "key_prefix": key_prefix}
                finally:
                    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{key_prefix}/").get("Contents") or []
                    if listed:
                        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})

    return PrefixedS3MessageReader(bucket=bucket, client=s3, interval=1)


def _reported(completed) -> dict[str, Any]:
    """The metadata the job reported with its materialisation, as plain values."""
    result = completed.get_materialize_result()
    values = {key: getattr(value, "value", value) for key, value in (result.metadata or {}).items()}
    if "rows" not in values:
        raise EtlJobFailed(description="the ETL job ended without reporting what it staged (no Pipes messages "
                                       "arrived): see the step's logs")
    values["rating_histogram"] = json.loads(values.pop("rating_histogram_json"))
    return values


def jdbc_source(url) -> tuple[str, str, str]:
    """(JDBC URL without credentials, user, password) for the source's SQLAlchemy URL. MySQL and MariaDB
    are read with MariaDB's driver under `jdbc:mysql:` (Spark then quotes names as MySQL does)."""
    backend = url.get_backend_name()
    kinds = {"mysql": "mysql", "mariadb": "mysql", "postgresql": "postgresql"}
    if backend not in kinds:
        raise EtlJobFailed(description=f"the Spark and Glue engines read MySQL, MariaDB or PostgreSQL sources, not "
                                       f"{backend} (SOURCE_DATABASE_URL)")
    if not url.host or url.host.startswith("/"):
        raise EtlJobFailed(description="the Spark and Glue engines read the source over JDBC, which needs a host "
                                       "and port: set SOURCE_DATABASE_URL (the demo's embedded server listens on a "
                                       "socket only; use ETL_ENGINE=inprocess with it)")
    carried = {"charset"}  # harmless to leave behind: JDBC reads text as UTF-8
    dropped = sorted(set(url.query) - carried)
    if dropped:
        raise EtlJobFailed(description=f"SOURCE_DATABASE_URL's parameter(s) {', '.join(dropped)} cannot be carried to "
                                       "the Spark and Glue engines' JDBC connection (TLS, schema and timeouts would be "
                                       "lost): remove them, or use ETL_ENGINE=inprocess")
    port = url.port or (3306 if kinds[backend] == "mysql" else 5432)
    return f"jdbc:{kinds[backend]}://{url.host}:{port}/{url.database or ''}", url.username or "", url.password or ""
