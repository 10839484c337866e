"""Credit-limit-increase batch scoring: training the scorecard and scoring, deciding and writing back."""

from __future__ import annotations

import dagster as dg

from credit_assets.assets import (
    CreditScoresConfig,
    credit_model,
    credit_scores,
    credit_training_data,
    customer_updates,
    customers,
    eligible_customers,
    limit_decisions,
)
from credit_assets.checks import counts_reconcile, decisions_follow_policy, each_eligible_customer_decided_once

credit_training_job = dg.define_asset_job(
    "credit_training_job",
    selection=dg.AssetSelection.assets(credit_training_data, credit_model),
    description="Train the credit scorecard and publish a new model version.",
)
credit_scoring_job = dg.define_asset_job(
    "credit_scoring_job",
    selection=dg.AssetSelection.assets(eligible_customers, credit_scores, limit_decisions, customer_updates),
    description="Score eligible customers with the registry's model, decide limits and write them back.",
)


def credit_scoring_run_config(model_version: str) -> dg.RunConfig:
    """Run config that pins the scoring to one model version (checked against the version policy)."""
    return dg.RunConfig({"credit_scores": CreditScoresConfig(model_version=model_version)})
credit_pipeline_job = dg.define_asset_job(
    "credit_pipeline_job",
    selection=dg.AssetSelection.groups("credit"),
    description="The whole credit pipeline: training data, model, scoring batch and write-back.",
)

defs = dg.Definitions(
    assets=[customers, credit_training_data, credit_model, eligible_customers, credit_scores, limit_decisions,
            customer_updates],
    asset_checks=[decisions_follow_policy, each_eligible_customer_decided_once, counts_reconcile],
    jobs=[credit_training_job, credit_scoring_job, credit_pipeline_job],
)
