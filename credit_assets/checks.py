"""Asset checks of the credit scoring batch: policy, exactly-once decisions, reconciled counts (the drift
checks are computed by their assets: `credit_assets.drift`).

Each check looks at the batch its own run worked on (`credit_assets.batches.batch_step`): the files that
run's steps wrote, and the audit rows written under that run's id, so a run that wrote back another
batch's decisions fails them.
"""


import json
from dataclasses import dataclass

import dagster as dg
import pandas as pd
from psycopg import sql

from credit_assets.assets import customer_updates, limit_decisions
from credit_assets.batches import (
    DECISIONS_FILE,
    ELIGIBLE_FILE,
    SCORES_FILE,
    BatchMismatchError,
    BatchStep,
    batch_step,
    read_batch_file,
    read_step_file,
    skipped_total,
)
from credit_assets.customer_store import AUDIT_TABLE
from credit_assets.policy import LimitPolicy, policy_violations
from resources.artifacts import ArtifactStore
from resources.metadata import markdown_table
from resources.postgres import PostgresDatabase


def mixed_batch(exc: BatchMismatchError) -> dg.AssetCheckResult:
    """A check cannot vouch for a batch whose files another run rewrote: it fails, saying which file."""
    return dg.AssetCheckResult(passed=False, description=str(exc), metadata={"batch_files": str(exc)})


@dg.asset_check(asset=limit_decisions, blocking=True)
def decisions_follow_policy(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStore) -> dg.AssetCheckResult:
    """Every decision obeys the policy it was made under: percentages by limit band, the cap, an unchanged
    limit when declined, and the reference's reason text. Blocks the write-back when it fails."""
    try:
        decisions, meta = read_step_file(artifacts, batch_step(context, "limit_decisions"), DECISIONS_FILE)
    except BatchMismatchError as exc:
        return mixed_batch(exc)
    policy = LimitPolicy(**json.loads(meta["policy"]))
    violations = policy_violations(decisions, policy)
    return dg.AssetCheckResult(
        passed=violations.empty,
        metadata={
            "decisions_checked": len(decisions),
            "violations": len(violations),
            "examples": dg.MetadataValue.md(markdown_table(violations) if len(violations) else "none"),
        },
    )


@dataclass(frozen=True)
class WrittenBatch:
    """A write-back and the batch files it came from (customer ids and each file's metadata)."""

    step: BatchStep
    eligible: pd.Series
    scored: pd.Series
    decisions: pd.DataFrame
    meta: dict[str, dict[str, str]]


def written_batch(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStore) -> WrittenBatch:
    """The write-back this check's run made (or the latest), with the decisions, scores and eligible files of
    exactly that chain of runs (each file refused if another run has rewritten it)."""
    step = batch_step(context, "customer_updates")
    decisions, decisions_meta = read_batch_file(
        artifacts, step.batch_id, step.value("decisions_run_id"), DECISIONS_FILE,
        columns=["customer_id", "decision", "new_limit", "new_score"])
    scored, scores_meta = read_batch_file(artifacts, step.batch_id, decisions_meta["scores_run_id"], SCORES_FILE,
                                          columns=["customer_id"])
    eligible, eligible_meta = read_batch_file(artifacts, step.batch_id, scores_meta["eligible_run_id"], ELIGIBLE_FILE,
                                              columns=["customer_id"])
    return WrittenBatch(step, eligible["customer_id"], scored["customer_id"], decisions,
                        {"eligible": eligible_meta, "scores": scores_meta, "decisions": decisions_meta})


@dg.asset_check(asset=customer_updates)
def each_eligible_customer_decided_once(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStore,
                                        app_db: PostgresDatabase) -> dg.AssetCheckResult:
    """Each eligible customer of the batch has exactly one decision (unless skipped at scoring); each applied
    decision exactly one audit row; and the audit rows written under the write-back's run id are exactly
    that run's decisions: the batch it selected, the decision and limit it made."""
    try:
        batch = written_batch(context, artifacts)
    except BatchMismatchError as exc:
        return mixed_batch(exc)
    step, decided = batch.step, batch.decisions
    with app_db.connect() as conn:
        cur = conn.execute(
            sql.SQL("SELECT batch_id::text, customer_id, decision, new_limit, new_score, dagster_run_id::text FROM {} "
                    "WHERE batch_id = %(batch)s::uuid OR dagster_run_id = %(run)s::uuid").format(sql.Identifier(AUDIT_TABLE)),
            {"batch": step.batch_id, "run": step.run_id})
        audit = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])
    in_batch = audit[audit["batch_id"] == step.batch_id]
    by_run = audit[audit["dagster_run_id"] == step.run_id]
    compared = by_run.merge(decided, on="customer_id", how="left", suffixes=("", "_decided"), indicator=True)
    differing = compared[(compared["_merge"] == "both") & (
        (compared["decision"] != compared["decision_decided"]) | (compared["new_limit"] != compared["new_limit_decided"])
        | (compared["new_score"] != compared["new_score_decided"]))]
    problems = {
        "duplicate_decisions": int(decided["customer_id"].duplicated().sum()),
        "decisions_for_ineligible_customers": int((~decided["customer_id"].isin(batch.eligible)).sum()),
        "eligible_without_decision_unexplained":
            int((~batch.eligible.isin(decided["customer_id"])).sum()) - skipped_total(batch.meta["scores"]),
        "duplicate_audit_rows": int(in_batch["customer_id"].duplicated().sum()),
        "audit_rows_without_decision": int((~in_batch["customer_id"].isin(decided["customer_id"])).sum()),
        "audit_rows_vs_applied": len(in_batch) - (step.value("updated") + step.value("already_applied")),
        "run_audit_rows_of_another_batch": int((by_run["batch_id"] != step.batch_id).sum()),
        "run_audit_rows_unlike_its_decisions": len(differing) + int((compared["_merge"] == "left_only").sum()),
        "run_audit_rows_vs_updated": len(by_run) - step.value("updated"),
    }
    return dg.AssetCheckResult(
        passed=not any(problems.values()),
        metadata={"batch_id": step.batch_id, "write_back_run_id": step.run_id, "eligible": len(batch.eligible),
                  "decisions": len(decided), "audit_rows": len(in_batch), **problems},
    )


@dg.asset_check(asset=customer_updates)
def counts_reconcile(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStore) -> dg.AssetCheckResult:
    """Selected = eligible + skipped; eligible = scored + skipped at scoring; scored = decided;
    decided = updated + already applied + conflicts + missing; one batch id throughout (each file is
    read as the run that wrote it for this batch, or the check fails naming the file)."""
    try:
        batch = written_batch(context, artifacts)
    except BatchMismatchError as exc:
        return mixed_batch(exc)
    step = batch.step
    written_back = sum(step.value(name) for name in ("updated", "already_applied", "conflicts", "missing_customers"))
    equations = {
        "selected = eligible + skipped": (int(batch.meta["eligible"]["selected"]),
                                          len(batch.eligible) + skipped_total(batch.meta["eligible"])),
        "eligible = scored + skipped at scoring": (len(batch.eligible),
                                                   len(batch.scored) + skipped_total(batch.meta["scores"])),
        "scored = decided": (len(batch.scored), len(batch.decisions)),
        "decided = written back": (len(batch.decisions), written_back),
    }
    broken = [f"{name}: {left} != {right}" for name, (left, right) in equations.items() if left != right]
    return dg.AssetCheckResult(
        passed=not broken,
        description="; ".join(broken) if broken else None,
        metadata={
            "batch_id": step.batch_id,
            "selected": int(batch.meta["eligible"]["selected"]),
            "eligible": len(batch.eligible),
            "skipped_at_selection": skipped_total(batch.meta["eligible"]),
            "scored": len(batch.scored),
            "skipped_at_scoring": skipped_total(batch.meta["scores"]),
            "decided": len(batch.decisions),
            "written_back": written_back,
            "broken": dg.MetadataValue.md("\n".join(f"- {line}" for line in broken) if broken else "none"),
        },
    )
