"""ML ops: the model registry with approval notifications, training-run tracking sync, and the credit
pipeline exported to SageMaker Pipelines."""

import dagster as dg

from mlops_assets.approval import model_approval_job
from mlops_assets.notifications import model_registry_sensor
from mlops_assets.sagemaker_pipeline import credit_sagemaker_pipeline_job
from mlops_assets.tracking import GROUP, training_jobs_sensor, training_runs, training_runs_job

model_registry = dg.AssetSpec(
    "model_registry", group_name=GROUP, kinds={"sagemaker"},
    description="Model package groups {pipeline}-{env}-models: every trained model, PendingManualApproval until "
                "approved or rejected (approvals appear here as observations).",
)

defs = dg.Definitions(
    assets=[model_registry, training_runs],
    jobs=[model_approval_job, training_runs_job, credit_sagemaker_pipeline_job],
    sensors=[model_registry_sensor, training_jobs_sensor],
)
