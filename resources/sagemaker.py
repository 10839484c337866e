"""SageMaker training and batch transform, run locally (default) or as real SageMaker jobs.

Both backends take the same script-mode source folder and entry point:

- ``local`` runs the training script in a subprocess under SageMaker's script-mode contract
  (``SM_MODEL_DIR``, ``SM_CHANNEL_<NAME>``, ``SM_OUTPUT_DATA_DIR``, ``SM_HPS`` and ``--name value``
  hyperparameters, ``/opt/ml``-style folders under the job directory), packs ``model.tar.gz`` exactly where
  SageMaker would put it, and runs inference scripts under the Batch Transform contract
  (see `resources.sagemaker_runtime`). It is SageMaker local mode without Docker.
- ``aws`` uploads the source folder, creates the training job / model / transform job with boto3, waits,
  and turns Failed and Stopped jobs into errors carrying SageMaker's failure reason. The sagemaker SDK is
  imported lazily, only to look up the PyTorch framework image when none is configured.

Every job leaves a record (name, status, times, hyperparameters, channels, metrics, tags, model URI) that
`list_training_jobs` returns, for the local backend from its own job folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from resources.artifacts import ArtifactStore, join_key, scratch_dir

RUNTIME_SCRIPT = Path(__file__).with_name("sagemaker_runtime.py")
TERMINAL_STATUSES = ("Completed", "Failed", "Stopped")
_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class SageMakerJobError(RuntimeError):
    """A training or transform job did not complete; the message names the job and SageMaker's reason."""


@dataclass(frozen=True)
class MetricDefinition:
    """A metric SageMaker scrapes from the job's log (the same regex works for the local backend)."""

    name: str
    regex: str


@dataclass
class TrainingJob:
    name: str
    status: str
    backend: str
    model_data_uri: str | None
    hyperparameters: dict[str, str]
    input_channels: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    started_at: str | None
    ended_at: str | None
    failure_reason: str | None = None
    model_dir: str | None = None  # model.tar.gz extracted on this machine (set after a successful train())
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("model_dir")
        return record


@dataclass
class TransformJob:
    name: str
    status: str
    backend: str
    model_data_uri: str
    input_uri: str
    output_prefix: str
    output_uri: str
    started_at: str | None
    ended_at: str | None
    output_keys: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def validate_job_name(name: str) -> str:
    if not _JOB_NAME.match(name):
        raise ValueError(
            f"invalid SageMaker job name {name!r}: 1-63 letters, digits and hyphens, starting with a letter or digit"
        )
    return name


def failure_message(kind: str, description: Mapping[str, Any]) -> str:
    """A readable account of a job that ended Failed or Stopped, from a Describe*Job response."""
    name = description.get(f"{kind}JobName", "?")
    status = description.get(f"{kind}JobStatus", "?")
    reason = description.get("FailureReason") or (
        "stopped before completing" if status == "Stopped" else "no reason given"
    )
    return f"SageMaker {kind.lower()} job {name} ended {status}: {reason}"


def pack_directory(directory: Path, archive: Path) -> Path:
    """tar.gz the contents of `directory` (entries relative to it), as SageMaker packs model.tar.gz."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(Path(directory).rglob("*")):
            if "__pycache__" in path.parts:
                continue
            tar.add(path, arcname=path.relative_to(directory).as_posix(), recursive=False)
    return archive


def unpack_archive(archive: Path, directory: Path) -> Path:
    """Extract a model.tar.gz safely (no absolute paths, links or '..')."""
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(directory, filter="data")
    return directory


class SageMakerResource(dg.ConfigurableResource):
    """Script-mode training and batch transform; ``backend`` is ``local`` or ``aws`` (``SAGEMAKER_BACKEND``)."""

    artifacts: ArtifactStore
    backend: str = "local"
    work_dir: str = ".data/sagemaker"
    region_name: str = "us-east-1"
    endpoint_url: str | None = None
    role_arn: str | None = None
    instance_type: str = "ml.m5.xlarge"
    framework_version: str = "2.8.0"
    inference_framework_version: str = "2.6.0"
    py_version: str = "py312"
    training_image: str | None = None
    inference_image: str | None = None
    max_wait_seconds: int = 3600
    poll_seconds: float = 15.0
    max_runtime_seconds: int = 24 * 3600

    # --- public API ----------------------------------------------------------------------------------

    def train(
        self,
        *,
        job_name: str,
        source_dir: Path,
        entry_point: str,
        channels: Mapping[str, str],
        hyperparameters: Mapping[str, Any],
        output_prefix: str,
        tags: Mapping[str, str] | None = None,
        metric_definitions: Sequence[MetricDefinition] = (),
        log: Callable[[str], None] | None = None,
    ) -> TrainingJob:
        """Run a training job; `channels` map channel names to artifact-store prefixes.

        The model lands at ``<output_prefix>/<job_name>/output/model.tar.gz`` (SageMaker's layout) and is also
        extracted locally (``TrainingJob.model_dir``) for the caller to publish.
        """
        validate_job_name(job_name)
        if not (Path(source_dir) / entry_point).is_file():
            raise FileNotFoundError(f"training entry point {Path(source_dir) / entry_point} does not exist")
        runner = self._train_local if self.backend == "local" else self._train_aws
        return runner(
            job_name=job_name,
            source_dir=Path(source_dir),
            entry_point=entry_point,
            channels=dict(channels),
            hyperparameters={k: str(v) for k, v in hyperparameters.items()},
            output_prefix=output_prefix,
            tags=dict(tags or {}),
            metric_definitions=list(metric_definitions),
            log=log or (lambda line: None),
        )

    def batch_transform(
        self,
        *,
        job_name: str,
        source_dir: Path,
        entry_point: str,
        model_data_key: str,
        input_prefix: str,
        output_prefix: str,
        content_type: str = "text/csv",
        accept: str = "text/csv",
        max_payload_mb: int = 6,
        tags: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> TransformJob:
        """Run a batch transform over every file under `input_prefix`; outputs are ``<file>.out`` under `output_prefix`."""
        validate_job_name(job_name)
        if not (Path(source_dir) / entry_point).is_file():
            raise FileNotFoundError(f"inference entry point {Path(source_dir) / entry_point} does not exist")
        inputs = [info.key for info in self.artifacts.list(input_prefix.rstrip("/") + "/")]
        if not inputs:
            raise FileNotFoundError(f"batch transform {job_name}: no input files under {self.artifacts.uri(input_prefix)}")
        runner = self._transform_local if self.backend == "local" else self._transform_aws
        job = runner(
            job_name=job_name,
            source_dir=Path(source_dir),
            entry_point=entry_point,
            model_data_key=model_data_key,
            input_prefix=input_prefix.rstrip("/"),
            output_prefix=output_prefix.rstrip("/"),
            content_type=content_type,
            accept=accept,
            max_payload_mb=max_payload_mb,
            tags=dict(tags or {}),
            log=log or (lambda line: None),
        )
        produced = {info.key for info in self.artifacts.list(job.output_prefix + "/")}
        source_root = len(input_prefix.rstrip("/")) + 1
        missing = [key for key in inputs if join_key(job.output_prefix, key[source_root:] + ".out") not in produced]
        if missing:
            raise SageMakerJobError(
                f"batch transform job {job_name} completed but wrote no output for {len(missing)} input file(s), "
                f"e.g. {self.artifacts.uri(missing[0])} (expected {self.artifacts.uri(job.output_prefix)}/<file>.out)"
            )
        job.output_keys = sorted(produced)
        return job

    def list_training_jobs(self, *, status: str | None = "Completed", max_results: int = 100,
                           problems: list[str] | None = None) -> list[TrainingJob]:
        """Training jobs, newest first, with tags (local: this machine's job records; aws: ListTrainingJobs).

        Jobs whose record cannot be read are left out and described in `problems`.
        """
        if self.backend == "local":
            return self._list_local(status, max_results, problems)
        return self._describe_aws(self._training_job_names_aws(status, max_results), problems)

    def training_job_names(self, *, status: str | None = "Completed", max_results: int = 100) -> list[str]:
        """The names `list_training_jobs` would give, newest first, without describing each job (on AWS, one
        listing call instead of two calls per job)."""
        if self.backend == "local":
            return [job.name for job in self._list_local(status, max_results, None)]
        return self._training_job_names_aws(status, max_results)

    def describe_training_jobs(self, names: Sequence[str], problems: list[str] | None = None) -> list[TrainingJob]:
        """These training jobs, with tags; jobs that cannot be read are left out and described in `problems`."""
        if self.backend != "local":
            return self._describe_aws(names, problems)
        jobs = []
        for name in names:
            try:
                jobs.append(self.describe_training_job(name))
            except (SageMakerJobError, json.JSONDecodeError, TypeError) as exc:
                if problems is not None:
                    problems.append(f"training job {name}: {exc}")
        return jobs

    def describe_training_job(self, job_name: str) -> TrainingJob:
        if self.backend == "local":
            record = self._local_job_dir("training", job_name) / "job.json"
            if not record.exists():
                raise SageMakerJobError(f"no local training job named {job_name}")
            return TrainingJob(**json.loads(record.read_text()))
        problems: list[str] = []
        jobs = self._describe_aws([job_name], problems)
        if not jobs:
            raise SageMakerJobError(problems[0])
        return jobs[0]

    # --- local backend -------------------------------------------------------------------------------

    def _local_job_dir(self, kind: str, job_name: str) -> Path:
        return Path(self.work_dir) / kind / job_name

    def _run_logged(self, command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path,
                    log: Callable[[str], None]) -> tuple[int, list[str]]:
        lines: list[str] = []
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                lines.append(line.rstrip("\n"))
                log(line.rstrip("\n"))
            code = process.wait()
        return code, lines

    def _train_local(self, *, job_name, source_dir, entry_point, channels, hyperparameters, output_prefix,
                     tags, metric_definitions, log) -> TrainingJob:
        job_dir = self._local_job_dir("training", job_name)
        if (job_dir / "job.json").exists():
            raise SageMakerJobError(f"a training job named {job_name} already exists (job names are unique)")
        if job_dir.exists():
            shutil.rmtree(job_dir)  # a previous attempt that never recorded itself
        code_dir, model_dir = job_dir / "code", job_dir / "model"
        output_data = job_dir / "output" / "data"
        config_dir = job_dir / "input" / "config"
        for folder in (model_dir, output_data, config_dir):
            folder.mkdir(parents=True)
        shutil.copytree(source_dir, code_dir, ignore=shutil.ignore_patterns("__pycache__"))
        channel_dirs = {}
        for channel, prefix in channels.items():
            channel_dir = job_dir / "input" / "data" / channel
            files = self.artifacts.download_prefix(prefix, channel_dir)
            if not files:
                raise FileNotFoundError(f"training channel {channel!r}: no files under {self.artifacts.uri(prefix)}")
            channel_dirs[channel] = channel_dir
        (config_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=2))
        (config_dir / "inputdataconfig.json").write_text(
            json.dumps({name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in channels})
        )
        env = {
            **os.environ,
            "SM_MODEL_DIR": str(model_dir),
            "SM_OUTPUT_DATA_DIR": str(output_data),
            "SM_OUTPUT_DIR": str(job_dir / "output"),
            "SM_INPUT_DIR": str(job_dir / "input"),
            "SM_INPUT_CONFIG_DIR": str(config_dir),
            "SM_CHANNELS": json.dumps(sorted(channels)),
            "SM_HPS": json.dumps(hyperparameters),
            "SM_CURRENT_HOST": "algo-1",
            "SM_HOSTS": json.dumps(["algo-1"]),
            "SM_NUM_CPUS": str(os.cpu_count() or 1),
            "SM_NUM_GPUS": "0",
            "SM_USER_ENTRY_POINT": entry_point,
            "SM_MODULE_DIR": str(code_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(code_dir), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        for channel, channel_dir in channel_dirs.items():
            env[f"SM_CHANNEL_{channel.upper()}"] = str(channel_dir)
        for name, value in hyperparameters.items():
            env[f"SM_HP_{name.upper()}"] = value
        args = [item for name, value in hyperparameters.items() for item in (f"--{name}", value)]
        started = _now()
        log(f"local SageMaker training job {job_name}: {entry_point} in {job_dir}")
        try:
            code, lines = self._run_logged([sys.executable, entry_point, *args], env=env, cwd=code_dir,
                                           log_path=job_dir / "training.log", log=log)
        finally:
            shutil.rmtree(job_dir / "input" / "data", ignore_errors=True)  # the channels' copies
        metrics = scrape_metrics(lines, metric_definitions)
        job = TrainingJob(
            name=job_name, status="Completed" if code == 0 else "Failed", backend="local", model_data_uri=None,
            hyperparameters=hyperparameters, input_channels={c: self.artifacts.uri(p) for c, p in channels.items()},
            metrics=metrics, tags=tags, started_at=started, ended_at=_now(),
        )
        if code != 0:
            failure_file = job_dir / "output" / "failure"
            reason = failure_file.read_text().strip() if failure_file.exists() else "\n".join(lines[-15:])
            job.failure_reason = f"AlgorithmError: {entry_point} exited with code {code}: {reason}"
            (job_dir / "job.json").write_text(json.dumps(job.to_record(), indent=2))
            raise SageMakerJobError(failure_message("Training", {
                "TrainingJobName": job_name, "TrainingJobStatus": "Failed", "FailureReason": job.failure_reason}))
        archive = pack_directory(model_dir, job_dir / "output" / "model.tar.gz")
        model_key = join_key(output_prefix, job_name, "output", "model.tar.gz")
        job.model_data_uri = self.artifacts.upload_file(model_key, archive)
        if any(output_data.iterdir()):
            output_archive = pack_directory(output_data, job_dir / "output" / "output.tar.gz")
            self.artifacts.upload_file(join_key(output_prefix, job_name, "output", "output.tar.gz"), output_archive)
        (job_dir / "job.json").write_text(json.dumps(job.to_record(), indent=2))
        job.model_dir = str(model_dir)
        return job

    def _transform_local(self, *, job_name, source_dir, entry_point, model_data_key, input_prefix, output_prefix,
                         content_type, accept, max_payload_mb, tags, log) -> TransformJob:
        job_dir = self._local_job_dir("transform", job_name)
        if job_dir.exists():
            shutil.rmtree(job_dir)
        code_dir, model_dir = job_dir / "code", job_dir / "model"
        input_dir, output_dir = job_dir / "input", job_dir / "output"
        shutil.copytree(source_dir, code_dir, ignore=shutil.ignore_patterns("__pycache__"))
        archive = self.artifacts.download_file(model_data_key, job_dir / "model.tar.gz")
        unpack_archive(archive, model_dir)
        self.artifacts.download_prefix(input_prefix, input_dir)
        output_dir.mkdir(parents=True)
        started = _now()
        command = [
            sys.executable, str(RUNTIME_SCRIPT), "--code-dir", str(code_dir), "--entry-point", entry_point,
            "--model-dir", str(model_dir), "--input-dir", str(input_dir), "--output-dir", str(output_dir),
            "--content-type", content_type, "--accept", accept, "--max-payload-mb", str(max_payload_mb),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SAGEMAKER_PROGRAM": entry_point}
        log(f"local SageMaker batch transform {job_name}: {entry_point} over {self.artifacts.uri(input_prefix)}")
        try:
            code, lines = self._run_logged(command, env=env, cwd=job_dir, log_path=job_dir / "transform.log", log=log)
            if code != 0:
                raise SageMakerJobError(failure_message("Transform", {
                    "TransformJobName": job_name, "TransformJobStatus": "Failed",
                    "FailureReason": "ClientError: " + "\n".join(lines[-10:])}))
            self.artifacts.delete_prefix(output_prefix + "/")
            self.artifacts.upload_dir(output_dir, output_prefix)
        finally:
            # the job folder keeps its log only: inputs may hold customer data, outputs now live in the store
            for leftover in (input_dir, output_dir, model_dir, job_dir / "model.tar.gz"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        return TransformJob(
            name=job_name, status="Completed", backend="local", model_data_uri=self.artifacts.uri(model_data_key),
            input_uri=self.artifacts.uri(input_prefix), output_prefix=output_prefix,
            output_uri=self.artifacts.uri(output_prefix), started_at=started, ended_at=_now(),
        )

    def _list_local(self, status: str | None, max_results: int, problems: list[str] | None) -> list[TrainingJob]:
        root = Path(self.work_dir) / "training"
        jobs = []
        for record in root.glob("*/job.json") if root.exists() else ():
            try:
                job = TrainingJob(**json.loads(record.read_text()))
            except (json.JSONDecodeError, TypeError) as exc:
                if problems is not None:
                    problems.append(f"training job record {record} is unreadable: {exc}")
                continue
            if status is None or job.status == status:
                jobs.append(job)
        jobs.sort(key=lambda j: (j.ended_at or "", j.name), reverse=True)
        return jobs[:max_results]

    # --- aws backend ---------------------------------------------------------------------------------

    def client(self):
        """A boto3 SageMaker client for this resource's region and endpoint."""
        import boto3

        return boto3.client("sagemaker", region_name=self.region_name, endpoint_url=self.endpoint_url or None)

    def _require_role(self) -> str:
        if not self.role_arn:
            raise SageMakerJobError("the aws SageMaker backend needs an execution role (SAGEMAKER_ROLE_ARN)")
        return self.role_arn

    def image_uri(self, scope: str) -> str:
        """The PyTorch framework image for 'training' or 'inference' (configured, or looked up by the SDK)."""
        configured = self.training_image if scope == "training" else self.inference_image
        if configured:
            return configured
        from sagemaker.core import image_uris  # slow import, only on the aws path

        return image_uris.retrieve(
            framework="pytorch",
            region=self.region_name,
            version=self.framework_version if scope == "training" else self.inference_framework_version,
            py_version=self.py_version,
            instance_type=self.instance_type,
            image_scope=scope,
        )

    def upload_source(self, key: str, source_dir: Path) -> str:
        """Pack a script-mode source folder as ``sourcedir.tar.gz`` at `key` in the artifact store; its URI."""
        staging = scratch_dir("sourcedir")
        try:
            archive = pack_directory(source_dir, staging / "sourcedir.tar.gz")
            return self.artifacts.upload_file(key, archive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _upload_job_source(self, job_name: str, source_dir: Path) -> str:
        return self.upload_source(join_key("sagemaker", "code", job_name, "sourcedir.tar.gz"), source_dir)

    def upsert_pipeline(self, name: str, definition: dict, description: str) -> str:
        """Create the SageMaker Pipeline `name` with `definition`, or update it when it exists (as the
        reference's CI/CD does); returns 'created' or 'updated'."""
        from botocore.exceptions import ClientError

        role = self._require_role()
        client = self.client()
        body = json.dumps(definition)
        try:
            client.describe_pipeline(PipelineName=name)
        except ClientError as exc:
            # SageMaker answers ResourceNotFound; some implementations a ValidationException saying so
            error = exc.response.get("Error", {})
            if error.get("Code") != "ResourceNotFound" and "could not find" not in error.get("Message", "").lower():
                raise
            client.create_pipeline(PipelineName=name, PipelineDefinition=body, RoleArn=role,
                                   PipelineDescription=description[:3072])
            return "created"
        client.update_pipeline(PipelineName=name, PipelineDefinition=body, RoleArn=role,
                               PipelineDescription=description[:3072])
        return "updated"

    def _wait(self, kind: str, describe: Callable[[], dict]) -> dict:
        deadline = time.monotonic() + self.max_wait_seconds
        while True:
            description = describe()
            status = description[f"{kind}JobStatus"]
            if status in TERMINAL_STATUSES:
                if status != "Completed":
                    raise SageMakerJobError(failure_message(kind, description))
                return description
            if time.monotonic() >= deadline:
                raise SageMakerJobError(
                    f"SageMaker {kind.lower()} job {description.get(f'{kind}JobName')} is still {status} after "
                    f"{self.max_wait_seconds}s (SAGEMAKER_MAX_WAIT_SECONDS); it keeps running in SageMaker"
                )
            time.sleep(self.poll_seconds)

    def _train_aws(self, *, job_name, source_dir, entry_point, channels, hyperparameters, output_prefix, tags,
                   metric_definitions, log) -> TrainingJob:
        client = self.client()
        role = self._require_role()
        source_uri = self._upload_job_source(job_name, source_dir)
        framework_hps = {
            "sagemaker_program": json.dumps(entry_point),
            "sagemaker_submit_directory": json.dumps(source_uri),
            "sagemaker_region": json.dumps(self.region_name),
            "sagemaker_container_log_level": "20",
        }
        request = {
            "TrainingJobName": job_name,
            "AlgorithmSpecification": {
                "TrainingImage": self.image_uri("training"),
                "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": m.name, "Regex": m.regex} for m in metric_definitions],
            },
            "RoleArn": role,
            "HyperParameters": {**{k: json.dumps(v) for k, v in hyperparameters.items()}, **framework_hps},
            "InputDataConfig": [
                {
                    "ChannelName": channel,
                    "DataSource": {"S3DataSource": {
                        "S3DataType": "S3Prefix", "S3Uri": self.artifacts.uri(prefix),
                        "S3DataDistributionType": "FullyReplicated"}},
                    "CompressionType": "None",
                    "RecordWrapperType": "None",
                    "InputMode": "File",
                }
                for channel, prefix in channels.items()
            ],
            "OutputDataConfig": {"S3OutputPath": self.artifacts.uri(output_prefix)},
            "ResourceConfig": {"InstanceType": self.instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_seconds},
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }
        log(f"creating SageMaker training job {job_name} ({request['AlgorithmSpecification']['TrainingImage']})")
        client.create_training_job(**request)
        description = self._wait("Training", lambda: client.describe_training_job(TrainingJobName=job_name))
        job = self._job_from_description(description, tags=tags)
        model_key = self.artifacts.key_from_uri(job.model_data_uri)
        job_dir = self._local_job_dir("training", job_name)
        archive = self.artifacts.download_file(model_key, job_dir / "model.tar.gz")
        job.model_dir = str(unpack_archive(archive, job_dir / "model"))
        archive.unlink()
        return job

    def _job_from_description(self, d: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> TrainingJob:
        hps = {k: _unquote(v) for k, v in (d.get("HyperParameters") or {}).items() if not k.startswith("sagemaker_")}
        channels = {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in d.get("InputDataConfig", []) if "S3DataSource" in c.get("DataSource", {})
        }
        def iso(value):
            return value.isoformat() if hasattr(value, "isoformat") else value
        return TrainingJob(
            name=d["TrainingJobName"], status=d["TrainingJobStatus"], backend="aws",
            model_data_uri=(d.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
            hyperparameters=hps, input_channels=channels,
            metrics={m["MetricName"]: float(m["Value"]) for m in d.get("FinalMetricDataList", [])},
            tags=dict(tags or {}), started_at=iso(d.get("TrainingStartTime")), ended_at=iso(d.get("TrainingEndTime")),
            failure_reason=d.get("FailureReason"),
            extra={"arn": d.get("TrainingJobArn"), "input_data_config": d.get("InputDataConfig", []),
                   "image": (d.get("AlgorithmSpecification") or {}).get("TrainingImage")},
        )

    def _transform_aws(self, *, job_name, source_dir, entry_point, model_data_key, input_prefix, output_prefix,
                       content_type, accept, max_payload_mb, tags, log) -> TransformJob:
        client = self.client()
        role = self._require_role()
        source_uri = self._upload_job_source(job_name, source_dir)
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        client.create_model(
            ModelName=job_name,
            PrimaryContainer={
                "Image": self.image_uri("inference"),
                "ModelDataUrl": self.artifacts.uri(model_data_key),
                "Environment": {
                    "SAGEMAKER_PROGRAM": entry_point,
                    "SAGEMAKER_SUBMIT_DIRECTORY": source_uri,
                    "SAGEMAKER_REGION": self.region_name,
                    "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                },
            },
            ExecutionRoleArn=role,
            Tags=tag_list,
        )
        self.artifacts.delete_prefix(output_prefix + "/")
        log(f"creating SageMaker batch transform job {job_name}")
        try:
            return self._run_transform_aws(client, job_name, model_data_key, input_prefix, output_prefix,
                                           content_type, accept, max_payload_mb, tag_list)
        finally:
            client.delete_model(ModelName=job_name)  # the model existed only for this transform

    def _run_transform_aws(self, client, job_name, model_data_key, input_prefix, output_prefix, content_type,
                           accept, max_payload_mb, tag_list) -> TransformJob:
        client.create_transform_job(
            TransformJobName=job_name,
            ModelName=job_name,
            BatchStrategy="MultiRecord",
            MaxPayloadInMB=max_payload_mb,
            TransformInput={
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": self.artifacts.uri(input_prefix)}},
                "ContentType": content_type,
                "SplitType": "Line",
                "CompressionType": "None",
            },
            TransformOutput={"S3OutputPath": self.artifacts.uri(output_prefix), "Accept": accept, "AssembleWith": "Line"},
            TransformResources={"InstanceType": self.instance_type, "InstanceCount": 1},
            Tags=tag_list,
        )
        description = self._wait("Transform", lambda: client.describe_transform_job(TransformJobName=job_name))
        return TransformJob(
            name=job_name, status=description["TransformJobStatus"], backend="aws",
            model_data_uri=self.artifacts.uri(model_data_key), input_uri=self.artifacts.uri(input_prefix),
            output_prefix=output_prefix, output_uri=self.artifacts.uri(output_prefix),
            started_at=str(description.get("TransformStartTime") or ""), ended_at=str(description.get("TransformEndTime") or ""),
        )

    def _training_job_names_aws(self, status: str | None, max_results: int) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"SortBy": "CreationTime", "SortOrder": "Descending",
                                  "PaginationConfig": {"MaxItems": max_results, "PageSize": 100}}
        if status:
            kwargs["StatusEquals"] = status
        try:
            pages = self.client().get_paginator("list_training_jobs").paginate(**kwargs)
            summaries = [summary for page in pages for summary in page.get("TrainingJobSummaries", [])]
        except (ClientError, BotoCoreError) as exc:
            raise SageMakerJobError(f"cannot list SageMaker training jobs: {exc}") from None
        # newest first whatever order the server kept (some S3/SageMaker-compatible servers ignore SortOrder)
        summaries.sort(key=lambda s: (str(s.get("CreationTime", "")), s.get("TrainingJobName", "")), reverse=True)
        return [summary["TrainingJobName"] for summary in summaries[:max_results]]

    def _describe_aws(self, names: Sequence[str], problems: list[str] | None) -> list[TrainingJob]:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        jobs = []
        for name in names:
            try:  # one job that cannot be read (deleted meanwhile, incomplete) does not hide the others
                description = client.describe_training_job(TrainingJobName=name)
                tags = client.list_tags(ResourceArn=description["TrainingJobArn"]).get("Tags", [])
                jobs.append(self._job_from_description(description, tags={t["Key"]: t["Value"] for t in tags}))
            except KeyError as exc:
                problem = f"training job {name} lacks {exc.args[0]} in its description"
            except (TypeError, ValueError) as exc:
                problem = f"training job {name} has an unreadable field in its description: {exc}"
            except (ClientError, BotoCoreError) as exc:
                problem = f"training job {name} could not be described: {exc}"
            else:
                continue
            if problems is not None:
                problems.append(problem)
        return jobs


def _unquote(value: str) -> str:
    """SageMaker framework hyperparameters are JSON-encoded strings; show them plain."""
    try:
        decoded = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value
    return decoded if isinstance(decoded, str) else value


def scrape_metrics(lines: Sequence[str], definitions: Sequence[MetricDefinition]) -> dict[str, float]:
    """Final value of each metric in the log, found by its regex's first group (as SageMaker does)."""
    metrics: dict[str, float] = {}
    patterns = [(d.name, re.compile(d.regex)) for d in definitions]
    for line in lines:
        for name, pattern in patterns:
            match = pattern.search(line)
            if match:
                try:
                    metrics[name] = float(match.group(1))
                except (IndexError, ValueError):
                    continue
    return metrics
