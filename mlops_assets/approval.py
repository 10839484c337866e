"""Approving or rejecting a model package version, with a reason (also `mldp registry approve|reject`)."""

from typing import Literal

import dagster as dg

from resources.model_registry import APPROVED, REJECTED, ModelRegistry


class ApprovalConfig(dg.Config):
    group: str  # e.g. credit-dev-models
    version: int
    decision: Literal["approve", "reject"]
    reason: str


@dg.op
def decide_model_package(context: dg.OpExecutionContext, config: ApprovalConfig, registry: ModelRegistry) -> None:
    status = APPROVED if config.decision == "approve" else REJECTED
    package = registry.set_status(config.group, config.version, status, config.reason)
    context.log.info(f"{package.arn} is now {package.status}: {config.reason}")
    context.log_event(dg.AssetObservation(asset_key="model_registry", metadata={
        "model_package": package.arn, "group": package.group, "version": package.version, "status": package.status,
        "reason": config.reason, "model_version": package.model_version}))


@dg.job(description="Approve or reject a model package version (config: group, version, decision, reason).")
def model_approval_job():
    decide_model_package()
