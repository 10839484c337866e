"""The credit workflow's Dagster definitions (`credit_assets.defs`)."""

import dagster as dg

from credit_assets.assets import (
    credit_model,
    credit_scores,
    credit_training_data,
    customer_updates,
    bank_customers,
    eligible_customers,
    limit_decisions,
)
from credit_assets.checks import counts_reconcile, decisions_follow_policy, each_eligible_customer_decided_once
from credit_assets.jobs import credit_pipeline_job, credit_scoring_job, credit_training_job
from credit_assets.schedules import credit_retraining_schedule, credit_scoring_schedule

defs = dg.Definitions(
    assets=[bank_customers, credit_training_data, credit_model, eligible_customers, credit_scores, limit_decisions,
            customer_updates],
    asset_checks=[decisions_follow_policy, each_eligible_customer_decided_once, counts_reconcile],
    jobs=[credit_training_job, credit_scoring_job, credit_pipeline_job],
    schedules=[credit_scoring_schedule, credit_retraining_schedule],
)
