"""The ML ops workflow's Dagster definitions (`mlops_assets.defs`)."""


import dagster as dg

from mlops_assets.alerts import check_failure_alert_sensor, freshness_alert_sensor, run_failure_alert_sensor
from mlops_assets.approval import model_approval_job
from mlops_assets.notifications import model_registry, model_registry_sensor
from mlops_assets.sagemaker_pipeline import credit_sagemaker_pipeline_job
from mlops_assets.tracking import (
    training_jobs_sensor,
    training_runs,
    training_runs_automation_sensor,
    training_runs_job,
)

defs = dg.Definitions(
    assets=[model_registry, training_runs],
    jobs=[model_approval_job, training_runs_job, credit_sagemaker_pipeline_job],
    sensors=[model_registry_sensor, training_jobs_sensor, run_failure_alert_sensor, check_failure_alert_sensor,
             freshness_alert_sensor, training_runs_automation_sensor],
)
