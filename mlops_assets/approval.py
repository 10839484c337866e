"""Approving or rejecting a model package version, with a reason (also `mldp registry approve|reject`).

`model_registry_sensor` records the change on `model_registry` and tells people, whichever way it was made.
"""

from typing import Literal

import dagster as dg

from resources.model_registry import APPROVED, PENDING, REJECTED, ModelRegistry, RegistryError


class ApprovalConfig(dg.Config):
    """Which version of which group, and why. The Launchpad's "Scaffold missing config" fills `group`,
    `version` and `reason`; `decision` defaults to approve."""

    group: str  # e.g. credit-dev-models
    version: int
    reason: str
    decision: Literal["approve", "reject"] = "approve"


def waiting_versions(registry: ModelRegistry) -> str:
    """The versions waiting for a decision, for an error message that tells what to fill in."""
    waiting = [f"{p.group} version {p.version}" for pipeline in ("credit", "recsys")
               for p in registry.packages(registry.group_for(pipeline)) if p.status == PENDING]
    return ", ".join(waiting[:10]) if waiting else "none"


@dg.op(description="Set one model package version to Approved or Rejected, with the reason.")
def decide_model_package(context: dg.OpExecutionContext, config: ApprovalConfig, registry: ModelRegistry) -> None:
    groups = {registry.group_for(pipeline) for pipeline in ("credit", "recsys")}
    if config.group not in groups:
        raise RegistryError(f"config group {config.group!r} is not a model package group of this environment; use "
                            f"{' or '.join(sorted(groups))} (waiting for a decision: {waiting_versions(registry)})")
    if not config.reason.strip():
        raise RegistryError("config reason is empty: say why the version is approved or rejected (it is kept in the "
                            "registry and sent with the notification)")
    status = APPROVED if config.decision == "approve" else REJECTED
    try:
        package = registry.set_status(config.group, config.version, status, config.reason)
    except RegistryError as exc:
        raise RegistryError(f"{exc} (waiting for a decision: {waiting_versions(registry)})") from None
    context.log.info(f"{package.arn} is now {package.status}: {config.reason}")


@dg.job(description="Approve or reject a model package version (config: group, version, reason, decision). The "
                    "model registry sensor then notifies and puts an approved version to work.")
def model_approval_job():
    decide_model_package()
