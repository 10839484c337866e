"""SageMaker training and Batch Transform, run locally (default) or as real SageMaker jobs.

- `jobs`: the interface (`SageMakerJobs`) and the job records both backends return.
- `local`: `LocalSageMakerJobs`, the jobs on this machine under the SageMaker containers' contracts.
- `aws`: `AwsSageMakerJobs`, real SageMaker jobs through boto3.
- `containers`: the contracts themselves (training environment, model archive layout, transform settings).
- `runtime`: what runs inside the local backend's "container" (a subprocess per job or instance).
"""

from resources.sagemaker.aws import AwsSageMakerJobs
from resources.sagemaker.containers import ModelArchiveError, TransformSettingsError
from resources.sagemaker.jobs import (
    MetricDefinition,
    SageMakerJobError,
    SageMakerJobs,
    TrainingJob,
    TransformJob,
    failure_message,
    pack_directory,
    unpack_archive,
)
from resources.sagemaker.local import LocalSageMakerJobs

__all__ = [
    "AwsSageMakerJobs",
    "LocalSageMakerJobs",
    "MetricDefinition",
    "ModelArchiveError",
    "SageMakerJobError",
    "SageMakerJobs",
    "TrainingJob",
    "TransformJob",
    "TransformSettingsError",
    "failure_message",
    "pack_directory",
    "unpack_archive",
]
