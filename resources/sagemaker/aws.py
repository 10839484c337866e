"""The aws SageMaker backend: real SageMaker training and Batch Transform jobs, created with boto3.

The source folder is uploaded as `sourcedir.tar.gz` and named by the `sagemaker_program` /
`sagemaker_submit_directory` hyperparameters (JSON-encoded, as the SDK sends them); transform jobs use a
model whose `model.tar.gz` carries `code/inference.py`, named by `SAGEMAKER_PROGRAM` with
`SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code` (`containers.inference_environment`). The archive is
checked before anything is created, so a model the container could not serve fails here, not after the
instances started. Failed and Stopped jobs become errors carrying SageMaker's failure reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from resources.settings import DEFAULTS
from resources.sagemaker import containers
from resources.sagemaker.jobs import (
    TERMINAL_STATUSES,
    SageMakerJobError,
    SageMakerJobs,
    TrainingJob,
    TransformJob,
    TransformRequest,
    failure_message,
    unpack_archive,
)


def _unquote(value: str) -> str:
    """SageMaker framework hyperparameters are JSON-encoded strings; show them plain."""
    try:
        decoded = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return value
    return decoded if isinstance(decoded, str) else value


class AwsSageMakerJobs(SageMakerJobs):
    """SageMaker jobs in the AWS account (`SAGEMAKER_BACKEND=aws`); needs `SAGEMAKER_ROLE_ARN`."""

    backend: ClassVar[str] = "aws"
    max_wait_seconds: int = DEFAULTS["sagemaker_max_wait_seconds"]
    poll_seconds: float = 15.0
    max_runtime_seconds: int = 24 * 3600
    volume_size_gb: int = 30

    def _require_role(self) -> str:
        if not self.role_arn:
            raise SageMakerJobError("the aws SageMaker backend needs an execution role (SAGEMAKER_ROLE_ARN)")
        return self.role_arn

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

    # --- training --------------------------------------------------------------------------------------

    def training_request(self, *, job_name: str, source_uri: str, entry_point: str, channels: Mapping[str, str],
                         hyperparameters: Mapping[str, Any], output_prefix: str, tags: Mapping[str, str],
                         metric_definitions: Sequence) -> dict[str, Any]:
        """The CreateTrainingJob request (checked against botocore's shapes by the tests)."""
        return {
            "TrainingJobName": job_name,
            "AlgorithmSpecification": {
                "TrainingImage": self.image_uri("training"),
                "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": m.name, "Regex": m.regex} for m in metric_definitions],
            },
            "RoleArn": self._require_role(),
            "HyperParameters": {**containers.encode_hyperparameters(hyperparameters),
                                **containers.framework_hyperparameters(entry_point, source_uri, self.region_name)},
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
            "ResourceConfig": {"InstanceType": self.instance_type, "InstanceCount": self.training_instance_count,
                               "VolumeSizeInGB": self.volume_size_gb},
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_seconds},
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }

    def _train(self, *, job_name, source_uri, entry_point, channels, hyperparameters, output_prefix, tags,
               metric_definitions, log) -> TrainingJob:
        request = self.training_request(job_name=job_name, source_uri=source_uri, entry_point=entry_point,
                                        channels=channels, hyperparameters=hyperparameters,
                                        output_prefix=output_prefix, tags=tags, metric_definitions=metric_definitions)
        client = self.client()
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

    # --- batch transform -------------------------------------------------------------------------------

    def model_request(self, name: str, model_data_key: str, entry_point: str, tags: Mapping[str, str]) -> dict:
        """The CreateModel request of a transform's model (the archive carries its code)."""
        return {
            "ModelName": name,
            "PrimaryContainer": {
                "Image": self.image_uri("inference"),
                "ModelDataUrl": self.artifacts.uri(model_data_key),
                "Environment": containers.inference_environment(entry_point, self.region_name),
            },
            "ExecutionRoleArn": self._require_role(),
            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        }

    def transform_request(self, request: TransformRequest) -> dict:
        """The CreateTransformJob request (checked against botocore's shapes by the tests)."""
        return {
            "TransformJobName": request.job_name,
            "ModelName": request.job_name,
            "BatchStrategy": request.batch_strategy,
            "MaxPayloadInMB": request.max_payload_mb,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                "S3Uri": self.artifacts.uri(request.input_prefix)}},
                "ContentType": request.content_type,
                "SplitType": request.split_type,
                "CompressionType": "None",
            },
            "TransformOutput": {"S3OutputPath": self.artifacts.uri(request.output_prefix), "Accept": request.accept,
                                "AssembleWith": "Line" if request.split_type == "Line" else "None"},
            "TransformResources": {"InstanceType": self.instance_type, "InstanceCount": self.transform_instance_count},
            "Tags": [{"Key": k, "Value": v} for k, v in request.tags.items()],
        }

    def _transform(self, request: TransformRequest, log) -> TransformJob:
        self._require_role()
        # a model the container cannot serve fails here, before SageMaker starts instances for it
        self.check_model_archive(request.model_data_key, request.entry_point)
        client = self.client()
        client.create_model(**self.model_request(request.job_name, request.model_data_key, request.entry_point,
                                                 request.tags))
        self.artifacts.delete_prefix(request.output_prefix + "/")
        log(f"creating SageMaker batch transform job {request.job_name} on {self.transform_instance_count} instance(s)")
        try:
            client.create_transform_job(**self.transform_request(request))
            description = self._wait("Transform",
                                     lambda: client.describe_transform_job(TransformJobName=request.job_name))
        finally:
            client.delete_model(ModelName=request.job_name)  # the model existed only for this transform
        return TransformJob(
            name=request.job_name, status=description["TransformJobStatus"], backend="aws",
            model_data_uri=self.artifacts.uri(request.model_data_key), input_uri=self.artifacts.uri(request.input_prefix),
            output_prefix=request.output_prefix, output_uri=self.artifacts.uri(request.output_prefix),
            started_at=str(description.get("TransformStartTime") or ""),
            ended_at=str(description.get("TransformEndTime") or ""), instance_count=self.transform_instance_count,
        )

    # --- job records -----------------------------------------------------------------------------------

    def list_training_jobs(self, *, status: str | None = "Completed", max_results: int = 100,
                           problems: list[str] | None = None) -> list[TrainingJob]:
        return self.describe_training_jobs(self.training_job_names(status=status, max_results=max_results), problems)

    def training_job_names(self, *, status: str | None = "Completed", max_results: int = 100) -> list[str]:
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
        # newest first whatever order the server kept (some SageMaker-compatible servers ignore SortOrder)
        summaries.sort(key=lambda s: (str(s.get("CreationTime", "")), s.get("TrainingJobName", "")), reverse=True)
        return [summary["TrainingJobName"] for summary in summaries[:max_results]]

    def describe_training_jobs(self, names: Sequence[str], problems: list[str] | None = None) -> list[TrainingJob]:
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
