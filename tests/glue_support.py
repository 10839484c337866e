"""AWS Glue played locally, for the `glue` engine's tests: moto's Glue keeps the jobs and runs (moto never
runs a job: its runs succeed at once), and this runner executes the job's script from its S3 script location
with local Spark, as Glue would run it, the way dagster-aws's own tests fake Glue.

What stands in for Glue's environment: its Spark (with an S3 file system) is local Spark that stages on disk
and uploads (`--stage-locally`), its JDBC drivers are Debian's (MariaDB's for its MySQL Connector/J), and `--JOB_NAME` / `--JOB_RUN_ID` and the
job's DefaultArguments are passed as Glue passes them. A run's state is the process's (`get_job_run` answers once it has ended): SUCCEEDED
or FAILED with the last lines the script wrote to stderr as `ErrorMessage` (Glue reports the exception)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from resources.settings import SPARK_JDBC_JARS


class LocalGlue:
    """A boto3 Glue client for `PipesGlueClient`: moto for the bookkeeping, a local process for the run."""

    def __init__(self, glue, s3, endpoint_url: str, workdir: Path) -> None:
        self.glue, self.s3, self.endpoint_url, self.workdir = glue, s3, endpoint_url, Path(workdir)
        self.runs: dict[str, tuple[subprocess.Popen, Path]] = {}

    @property
    def meta(self):
        return self.glue.meta

    @property
    def exceptions(self):
        return self.glue.exceptions

    def get_job(self, **kwargs):
        return self.glue.get_job(**kwargs)

    def start_job_run(self, JobName: str, Arguments: dict | None = None, **kwargs):
        job = self.glue.get_job(JobName=JobName)["Job"]
        run_id = self.glue.start_job_run(JobName=JobName, Arguments=Arguments or {}, **kwargs)["JobRunId"]
        with open(self.workdir / "started.jsonl", "a") as record:  # what Glue was asked, for the tests
            record.write(json.dumps({"JobName": JobName, "Arguments": dict(Arguments or {}), **kwargs}) + "\n")
        bucket, _, key = job["Command"]["ScriptLocation"].removeprefix("s3://").partition("/")
        script = self.workdir / f"{run_id}.py"
        self.s3.download_file(bucket, key, str(script))
        arguments = {**job.get("DefaultArguments", {}), **(Arguments or {}), "--JOB_NAME": JobName, "--JOB_RUN_ID": run_id}
        arguments.pop("--additional-python-modules", None)  # installed here already
        # Glue's own MySQL driver (Connector/J) is not in Debian: MariaDB's, which reads MySQL too, stands in
        command = [sys.executable, str(script), *[part for pair in arguments.items() for part in pair],
                   "--master", "local[2]", "--jars", SPARK_JDBC_JARS, "--mysql-driver", "org.mariadb.jdbc.Driver",
                   "--stage-locally"]
        log = self.workdir / f"{run_id}.log"
        with open(log, "wb") as output:  # a file, not a pipe: Spark writes more than a pipe holds
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                       env={**os.environ, "AWS_ENDPOINT_URL": self.endpoint_url,
                                            "SPARK_LOCAL_IP": "127.0.0.1"})
        self.runs[run_id] = (process, log)
        return {"JobRunId": run_id}

    def get_job_run(self, JobName: str, RunId: str, **kwargs):
        answer = self.glue.get_job_run(JobName=JobName, RunId=RunId, **kwargs)
        process, log = self.runs[RunId]
        try:  # answered when the run ends (PipesGlueClient otherwise polls every 5 s); Pipes' messages flow meanwhile
            code = process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            code = None
        run = answer["JobRun"]
        run["JobRunState"] = "RUNNING" if code is None else "SUCCEEDED" if code == 0 else "FAILED"
        if code:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            failed = [line for line in lines if line.startswith("ratings ETL failed:")]
            run["ErrorMessage"] = (failed or lines[-1:] or [f"exit code {code}"])[-1]
        return answer

    def batch_stop_job_run(self, JobName: str, JobRunIds: list[str]):
        for run_id in JobRunIds:
            self.runs[run_id][0].terminate()
        return {"SuccessfulSubmissions": [{"JobName": JobName, "JobRunId": r} for r in JobRunIds], "Errors": []}


def create_job(glue, s3, bucket: str, prefix: str, name: str = "mldp-ratings-etl") -> str:
    """The job as the deploy template creates it; returns its script location."""
    location = f"s3://{bucket}/{prefix.strip('/')}/glue/ratings_etl_spark.py"
    glue.create_job(Name=name, Role="arn:aws:iam::123456789012:role/mldp-glue-etl", GlueVersion="5.0",
                    Command={"Name": "glueetl", "ScriptLocation": location, "PythonVersion": "3"},
                    DefaultArguments={"--additional-python-modules": "dagster-pipes==1.13.27"},
                    WorkerType="G.1X", NumberOfWorkers=2)
    return location


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="local-glue-"))


def started_runs(workdir: Path) -> list[dict]:
    path = Path(workdir) / "started.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
