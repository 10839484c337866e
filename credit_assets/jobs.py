"""Jobs of the credit workflow."""

import dagster as dg

from credit_assets.assets import (
    CreditScoresConfig,
    credit_model,
    credit_scores,
    credit_training_data,
    customer_updates,
    eligible_customers,
    limit_decisions,
)

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
