"""The SageMaker jobs interface: script-mode training and Batch Transform, and what both backends share.

A training job takes a script-mode source folder (uploaded as `sourcedir.tar.gz`, as the SDK does) and
leaves `model.tar.gz` at `<output prefix>/<job>/output/`; a transform job takes a `model.tar.gz` that
carries its own `code/inference.py` (`containers.check_model_archive`) and writes `<file>.out` for every
input file. Every training job leaves a record (`TrainingJob`) that `list_training_jobs` returns.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg

from resources.artifacts import ArtifactStore, join_key, scratch_dir
from resources.aws_clients import JOB_TIMEOUTS, aws_client
from resources.sagemaker import containers
from resources.sagemaker.images import pytorch_image
from resources.settings import DEFAULTS

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
    instance_count: int = 1
    output_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TransformRequest:
    """What one Batch Transform job is asked to do (names as in CreateTransformJob)."""

    job_name: str
    model_data_key: str
    input_prefix: str
    output_prefix: str
    input_keys: list[str]
    content_type: str
    accept: str
    split_type: str
    batch_strategy: str
    max_payload_mb: int
    entry_point: str
    tags: dict[str, str]


def now() -> str:
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
    """tar.gz the contents of `directory` (entries relative to it), as SageMaker packs model.tar.gz; a symlink
    is stored as the file it points to."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", dereference=True) as tar:
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


def shown_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """Hyperparameters as a job record shows them: text as is, other values as JSON (`3`, `0.5`, `true`)."""
    return {name: value if isinstance(value, str) else json.dumps(value) for name, value in hyperparameters.items()}


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


class SageMakerJobs(dg.ConfigurableResource, ABC):
    """Script-mode training and Batch Transform (`SAGEMAKER_BACKEND`: `LocalSageMakerJobs` runs them on this
    machine under the containers' contract, `AwsSageMakerJobs` as SageMaker jobs)."""

    artifacts: ArtifactStore
    work_dir: str = ".data/sagemaker"
    # defaults: the settings' (resources.settings.PlatformSettings), written there once
    region_name: str = DEFAULTS["aws_region"]
    endpoint_url: str | None = None  # an AWS-compatible endpoint for the AWS calls (jobs, pipeline upserts)
    role_arn: str | None = None
    instance_type: str = DEFAULTS["sagemaker_instance_type"]
    training_instance_count: int = DEFAULTS["sagemaker_training_instance_count"]
    transform_instance_count: int = DEFAULTS["sagemaker_transform_instance_count"]
    framework_version: str = DEFAULTS["sagemaker_framework_version"]
    inference_framework_version: str = DEFAULTS["sagemaker_inference_framework_version"]
    py_version: str = DEFAULTS["sagemaker_py_version"]
    training_image: str | None = None
    inference_image: str | None = None

    backend: ClassVar[str]  # "local" or "aws", as SAGEMAKER_BACKEND names it

    def client(self):
        """A boto3 SageMaker client for this resource's region and endpoint (the jobs of the aws backend, and
        the pipeline upserts of either)."""
        return aws_client("sagemaker", region_name=self.region_name, endpoint_url=self.endpoint_url, **JOB_TIMEOUTS)

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
        """Run a training job; `channels` map channel names to artifact-store prefixes; hyperparameters are
        JSON values, sent JSON-encoded as the SDK sends them.

        The model lands at `<output_prefix>/<job_name>/output/model.tar.gz` (SageMaker's layout) and is also
        extracted locally (`TrainingJob.model_dir`) for the caller to publish.
        """
        validate_job_name(job_name)
        if not (Path(source_dir) / entry_point).is_file():
            raise FileNotFoundError(f"training entry point {Path(source_dir) / entry_point} does not exist")
        for name, value in hyperparameters.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise ValueError(f"hyperparameter {name!r} is not a JSON value: {value!r}") from None
        source_uri = self.upload_source(join_key("sagemaker", "code", job_name, "sourcedir.tar.gz"), Path(source_dir))
        return self._train(
            job_name=job_name, source_uri=source_uri, entry_point=entry_point, channels=dict(channels),
            hyperparameters=dict(hyperparameters), output_prefix=output_prefix, tags=dict(tags or {}),
            metric_definitions=list(metric_definitions), log=log or (lambda line: None),
        )

    def batch_transform(
        self,
        *,
        job_name: str,
        model_data_key: str,
        input_prefix: str,
        output_prefix: str,
        content_type: str = "text/csv",
        accept: str = "text/csv",
        split_type: str = "Line",
        batch_strategy: str = "MultiRecord",
        max_payload_mb: int = containers.DEFAULT_MAX_PAYLOAD_MB,
        entry_point: str = containers.DEFAULT_INFERENCE_ENTRY_POINT,
        tags: Mapping[str, str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> TransformJob:
        """Batch Transform over every file under `input_prefix` with the model archive at `model_data_key`
        (which must carry `code/<entry_point>`); outputs are `<file>.out` under `output_prefix`. With
        `transform_instance_count` > 1 the instances share the input files."""
        validate_job_name(job_name)
        containers.check_transform_settings(split_type=split_type, batch_strategy=batch_strategy,
                                            max_payload_mb=max_payload_mb)
        input_prefix, output_prefix = input_prefix.rstrip("/"), output_prefix.rstrip("/")
        inputs = [info.key for info in self.artifacts.list(input_prefix + "/")]
        if not inputs:
            raise FileNotFoundError(f"batch transform {job_name}: no input files under {self.artifacts.uri(input_prefix)}")
        request = TransformRequest(
            job_name=job_name, model_data_key=model_data_key, input_prefix=input_prefix, output_prefix=output_prefix,
            input_keys=inputs, content_type=content_type, accept=accept, split_type=split_type,
            batch_strategy=batch_strategy, max_payload_mb=max_payload_mb, entry_point=entry_point, tags=dict(tags or {}),
        )
        job = self._transform(request, log or (lambda line: None))
        produced = {info.key for info in self.artifacts.list(output_prefix + "/")}
        source_root = len(input_prefix) + 1
        missing = [key for key in inputs if join_key(output_prefix, key[source_root:] + ".out") not in produced]
        if missing:
            raise SageMakerJobError(
                f"batch transform job {job_name} completed but wrote no output for {len(missing)} input file(s), "
                f"e.g. {self.artifacts.uri(missing[0])} (expected {self.artifacts.uri(output_prefix)}/<file>.out)"
            )
        job.output_keys = sorted(produced)
        return job

    def check_model(self, model_data_key: str, entry_point: str, into: Path) -> Path:
        """Download the model archive into `into` and check the serving container can use it; the copy's path."""
        archive = self.artifacts.download_file(model_data_key, Path(into) / "model.tar.gz")
        containers.check_model_archive(archive, entry_point, name=self.artifacts.uri(model_data_key))
        return archive

    def check_model_archive(self, model_data_key: str,
                            entry_point: str = containers.DEFAULT_INFERENCE_ENTRY_POINT) -> None:
        """Check the serving container can use the model archive (else ModelArchiveError), keeping no copy."""
        folder = scratch_dir("model-archive")
        try:
            self.check_model(model_data_key, entry_point, into=folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @abstractmethod
    def list_training_jobs(self, *, status: str | None = "Completed", max_results: int = 100,
                           problems: list[str] | None = None) -> list[TrainingJob]:
        """Training jobs, newest first, with tags; jobs whose record cannot be read are left out and described
        in `problems`."""

    @abstractmethod
    def training_job_names(self, *, status: str | None = "Completed", max_results: int = 100) -> list[str]:
        """The names `list_training_jobs` would give, newest first, without describing each job."""

    @abstractmethod
    def describe_training_jobs(self, names: Sequence[str], problems: list[str] | None = None) -> list[TrainingJob]:
        """These training jobs, with tags; jobs that cannot be read are left out and described in `problems`."""

    def describe_training_job(self, job_name: str) -> TrainingJob:
        problems: list[str] = []
        jobs = self.describe_training_jobs([job_name], problems)
        if not jobs:
            raise SageMakerJobError(problems[0] if problems else f"no training job named {job_name}")
        return jobs[0]

    def image_uri(self, scope: str) -> str:
        """The PyTorch framework image for 'training' or 'inference' (configured, or looked up by the SDK)."""
        configured = self.training_image if scope == "training" else self.inference_image
        return configured or pytorch_image(
            scope, region=self.region_name, py_version=self.py_version, instance_type=self.instance_type,
            version=self.framework_version if scope == "training" else self.inference_framework_version)

    def upload_source(self, key: str, source_dir: Path) -> str:
        """Pack a script-mode source folder as `sourcedir.tar.gz` at `key` in the artifact store; its URI."""
        staging = scratch_dir("sourcedir")
        try:
            archive = pack_directory(source_dir, staging / "sourcedir.tar.gz")
            return self.artifacts.upload_file(key, archive)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- what each backend does ------------------------------------------------------------------------

    @abstractmethod
    def _train(self, *, job_name: str, source_uri: str, entry_point: str, channels: dict[str, str],
               hyperparameters: dict[str, Any], output_prefix: str, tags: dict[str, str],
               metric_definitions: list[MetricDefinition], log: Callable[[str], None]) -> TrainingJob: ...

    @abstractmethod
    def _transform(self, request: TransformRequest, log: Callable[[str], None]) -> TransformJob: ...

    def _local_job_dir(self, kind: str, job_name: str) -> Path:
        return Path(self.work_dir) / kind / job_name
