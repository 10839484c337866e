"""The local SageMaker backend: the jobs run on this machine, under the contracts of the SageMaker containers.

SageMaker local mode without Docker. Training: the source folder is uploaded as `sourcedir.tar.gz` and
unpacked into `<job>/code` as the training toolkit does, the channels are copied to
`<job>/input/data/<channel>`, `<job>/input/config/*.json` are written as SageMaker writes them, and the
entry point runs with the toolkit's `SM_*` environment and arguments (`containers.training_environment`);
`<job>/model` is packed to `model.tar.gz` where SageMaker puts it. Batch Transform: the model archive is
checked and unpacked, and its own `code/inference.py` serves the requests (`resources.sagemaker.runtime`),
one process per configured instance, each with its share of the input files.

Differences from the containers, on purpose: requirements.txt is not installed (the platform's environment
already has numpy, pandas and torch), and only one training instance is run.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from resources.artifacts import join_key
from resources.sagemaker import containers
from resources.sagemaker.jobs import (
    SageMakerJobError,
    SageMakerJobs,
    TrainingJob,
    TransformJob,
    TransformRequest,
    failure_message,
    now,
    pack_directory,
    scrape_metrics,
    shown_hyperparameters,
    unpack_archive,
)

RUNTIME_SCRIPT = Path(__file__).with_name("runtime.py")
# the platform's own packages do not exist inside a SageMaker container, so model code may not import them
PLATFORM_PACKAGES = ("credit_assets", "recsys_assets", "mlops_assets", "resources", "platform_cli", "definitions")


# what a job's process inherits from this one: what the OS and the numeric libraries need, never credentials or
# the platform's settings (a SageMaker container has none of them either)
INHERITED = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def container_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a job's process: the inherited basics, then the job's own variables."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith("LC_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_logged(command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path,
               log: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run `command`, streaming its output to `log` and to `log_path`; (exit code, output lines)."""
    lines: list[str] = []
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                lines.append(line.rstrip("\n"))
                log(line.rstrip("\n"))
            code = process.wait()
        finally:  # an interrupted run does not leave its job running
            if process.poll() is None:
                process.kill()
                process.wait()
    return code, lines


class LocalSageMakerJobs(SageMakerJobs):
    """SageMaker jobs run on this machine (`SAGEMAKER_BACKEND=local`, the default)."""

    backend: ClassVar[str] = "local"

    # --- training --------------------------------------------------------------------------------------

    def _train(self, *, job_name, source_uri, entry_point, channels, hyperparameters, output_prefix, tags,
               metric_definitions, log) -> TrainingJob:
        if self.training_instance_count != 1:
            raise SageMakerJobError(
                f"the local SageMaker backend runs one training instance, not {self.training_instance_count} "
                "(SAGEMAKER_TRAINING_INSTANCE_COUNT applies to SAGEMAKER_BACKEND=aws and the pipeline export)")
        base = self._local_job_dir("training", job_name)  # the job's /opt/ml
        if (base / "job.json").exists():
            raise SageMakerJobError(f"a training job named {job_name} already exists (job names are unique)")
        if base.exists():
            shutil.rmtree(base)  # a previous attempt that never recorded itself
        code_dir, model_dir, output_data = base / "code", base / "model", base / "output" / "data"
        for folder in (model_dir, output_data, base / "output" / "intermediate"):
            folder.mkdir(parents=True)
        source = self.artifacts.download_file(self.artifacts.key_from_uri(source_uri), base / "sourcedir.tar.gz")
        unpack_archive(source, code_dir)
        source.unlink()
        for channel, prefix in channels.items():
            if not self.artifacts.download_prefix(prefix, base / "input" / "data" / channel):
                raise FileNotFoundError(f"training channel {channel!r}: no files under {self.artifacts.uri(prefix)}")
        encoded = {**containers.encode_hyperparameters(hyperparameters),
                   **containers.framework_hyperparameters(entry_point, source_uri, self.region_name)}
        containers.write_training_config(base, encoded_hyperparameters=encoded, channels=channels,
                                         instance_type=self.instance_type)
        env = container_environment({**containers.training_environment(base, job_name=job_name),
                                     "TRAINING_JOB_NAME": job_name,
                                     "SAGEMAKER_TRAINING_MODULE": containers.PYTORCH_TRAINING_MODULE,
                                     # set by the PyTorch container's framework module before the script runs
                                     "SM_DLC_TORCH_VERSION": importlib.metadata.version("torch")})
        command = [sys.executable, str(RUNTIME_SCRIPT), "--forbid-modules", ",".join(PLATFORM_PACKAGES), "train",
                   "--code-dir", str(code_dir), "--entry-point", entry_point, "--",
                   *containers.command_arguments(hyperparameters)]
        started = now()
        log(f"local SageMaker training job {job_name}: {entry_point} in {base}")
        try:
            code, lines = run_logged(command, env=env, cwd=code_dir, log_path=base / "training.log", log=log)
        finally:
            shutil.rmtree(base / "input" / "data", ignore_errors=True)  # the channels' copies
        job = TrainingJob(
            name=job_name, status="Completed" if code == 0 else "Failed", backend="local", model_data_uri=None,
            hyperparameters=shown_hyperparameters(hyperparameters),
            input_channels={c: self.artifacts.uri(p) for c, p in channels.items()},
            metrics=scrape_metrics(lines, metric_definitions), tags=tags, started_at=started, ended_at=now(),
            extra={"source_uri": source_uri, "entry_point": entry_point},
        )
        if code != 0:
            failure_file = base / "output" / "failure"
            reason = failure_file.read_text().strip() if failure_file.exists() else "\n".join(lines[-15:])
            job.failure_reason = f"AlgorithmError: {entry_point} exited with code {code}: {reason}"
            (base / "job.json").write_text(json.dumps(job.to_record(), indent=2))
            raise SageMakerJobError(failure_message("Training", {
                "TrainingJobName": job_name, "TrainingJobStatus": "Failed", "FailureReason": job.failure_reason}))
        archive = pack_directory(model_dir, base / "output" / "model.tar.gz")
        job.model_data_uri = self.artifacts.upload_file(join_key(output_prefix, job_name, "output", "model.tar.gz"),
                                                        archive)
        if any(output_data.iterdir()):
            output_archive = pack_directory(output_data, base / "output" / "output.tar.gz")
            self.artifacts.upload_file(join_key(output_prefix, job_name, "output", "output.tar.gz"), output_archive)
        (base / "job.json").write_text(json.dumps(job.to_record(), indent=2))
        job.model_dir = str(model_dir)
        return job

    # --- batch transform -------------------------------------------------------------------------------

    def _transform(self, request: TransformRequest, log) -> TransformJob:
        job_dir = self._local_job_dir("transform", request.job_name)
        if job_dir.exists():
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        model_dir, input_dir, output_dir = job_dir / "model", job_dir / "input", job_dir / "output"
        started = now()
        try:
            archive = self.check_model(request.model_data_key, request.entry_point, into=job_dir)
            unpack_archive(archive, model_dir)
            archive.unlink()
            self.artifacts.download_prefix(request.input_prefix, input_dir)
            self.artifacts.delete_prefix(request.output_prefix + "/")  # as on AWS: no earlier output survives
            output_dir.mkdir()
            files = sorted(p.relative_to(input_dir).as_posix() for p in input_dir.rglob("*") if p.is_file())
            # SageMaker hands each instance whole input objects; the platform's inputs come in parts for this
            shares = [share for share in (files[i::self.transform_instance_count]
                                          for i in range(self.transform_instance_count)) if share]
            log(f"local SageMaker batch transform {request.job_name}: {self.artifacts.uri(request.model_data_key)} "
                f"over {len(files)} file(s) on {len(shares)} instance(s)")
            self._serve(request, shares, model_dir, input_dir, output_dir, job_dir, log)
            self.artifacts.upload_dir(output_dir, request.output_prefix)
        finally:
            # the job folder keeps its log only: inputs may hold customer data, outputs now live in the store
            for leftover in job_dir.iterdir():
                if leftover.name == "transform.log":
                    continue
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
        return TransformJob(
            name=request.job_name, status="Completed", backend="local",
            model_data_uri=self.artifacts.uri(request.model_data_key), input_uri=self.artifacts.uri(request.input_prefix),
            output_prefix=request.output_prefix, output_uri=self.artifacts.uri(request.output_prefix),
            started_at=started, ended_at=now(), instance_count=len(shares),
        )

    def _serve(self, request: TransformRequest, shares: list[list[str]], model_dir: Path, input_dir: Path,
               output_dir: Path, job_dir: Path, log: Callable[[str], None]) -> None:
        """One serving process per instance, all at once; fails with the first failing instance's reason."""
        env = container_environment(containers.inference_environment(request.entry_point, self.region_name))
        processes: list[tuple[str, subprocess.Popen, Path]] = []
        try:
            for number, share in enumerate(shares, start=1):
                host = f"algo-{number}"
                files_list = job_dir / f"{host}.files.json"
                files_list.write_text(json.dumps(share))
                command = [
                    sys.executable, str(RUNTIME_SCRIPT), "--forbid-modules", ",".join(PLATFORM_PACKAGES), "transform",
                    "--model-dir", str(model_dir), "--entry-point", request.entry_point, "--input-dir", str(input_dir),
                    "--files", str(files_list), "--output-dir", str(output_dir), "--content-type", request.content_type,
                    "--accept", request.accept, "--split-type", request.split_type,
                    "--batch-strategy", request.batch_strategy, "--max-payload-mb", str(request.max_payload_mb),
                ]
                instance_log = job_dir / f"{host}.log"
                with open(instance_log, "w") as sink:
                    process = subprocess.Popen(command, cwd=job_dir, env=env, stdout=sink, stderr=subprocess.STDOUT)
                processes.append((host, process, instance_log))
            codes = {host: process.wait() for host, process, _log in processes}
        finally:
            for _host, process, _log in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        failures: list[str] = []
        with open(job_dir / "transform.log", "w") as combined:
            for host, _process, instance_log in processes:
                lines = instance_log.read_text(errors="replace").splitlines()
                for line in lines:
                    combined.write(f"[{host}] {line}\n")
                    log(f"[{host}] {line}")
                if codes[host] != 0:
                    failures.append("\n".join(lines[-10:]))
        if failures:
            raise SageMakerJobError(failure_message("Transform", {
                "TransformJobName": request.job_name, "TransformJobStatus": "Failed",
                "FailureReason": "ClientError: " + failures[0]}))

    # --- job records -----------------------------------------------------------------------------------

    def list_training_jobs(self, *, status: str | None = "Completed", max_results: int = 100,
                           problems: list[str] | None = None) -> list[TrainingJob]:
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

    def training_job_names(self, *, status: str | None = "Completed", max_results: int = 100) -> list[str]:
        return [job.name for job in self.list_training_jobs(status=status, max_results=max_results)]

    def describe_training_jobs(self, names, problems: list[str] | None = None) -> list[TrainingJob]:
        jobs = []
        for name in names:
            record = self._local_job_dir("training", name) / "job.json"
            try:
                if not record.exists():
                    raise SageMakerJobError(f"no local training job named {name}")
                jobs.append(TrainingJob(**json.loads(record.read_text())))
            except (SageMakerJobError, json.JSONDecodeError, TypeError) as exc:
                if problems is not None:
                    problems.append(f"training job {name}: {exc}")
        return jobs
