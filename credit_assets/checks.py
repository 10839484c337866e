"""Asset checks of the credit scoring batch: policy, exactly-once decisions, reconciled counts."""


import json

import dagster as dg
import pandas as pd
from psycopg import sql

from credit_assets.assets import (
    DECISIONS_KEY,
    ELIGIBLE_KEY,
    SCORES_KEY,
    batch_prefix,
    customer_updates,
    limit_decisions,
)
from credit_assets.customer_store import AUDIT_TABLE
from credit_assets.policy import LimitPolicy, policy_violations
from resources.artifacts import ArtifactStore, join_key
from resources.metadata import markdown_table
from resources.postgres import PostgresDatabase


@dg.asset_check(asset=limit_decisions, blocking=True)
def decisions_follow_policy(artifacts: ArtifactStore) -> dg.AssetCheckResult:
    """Every decision obeys the policy it was made under: percentages by limit band, the cap, an unchanged
    limit when declined, and the reference's reason text. Blocks the write-back when it fails."""
    decisions = artifacts.read_parquet(DECISIONS_KEY)
    policy = LimitPolicy(**json.loads(artifacts.parquet_metadata(DECISIONS_KEY)["policy"]))
    violations = policy_violations(decisions, policy)
    return dg.AssetCheckResult(
        passed=violations.empty,
        metadata={
            "decisions_checked": len(decisions),
            "violations": len(violations),
            "examples": dg.MetadataValue.md(markdown_table(violations) if len(violations) else "none"),
        },
    )


def _batch_files(artifacts: ArtifactStore) -> dict[str, dict[str, str]]:
    return {key: artifacts.parquet_metadata(key) for key in (ELIGIBLE_KEY, SCORES_KEY, DECISIONS_KEY)}


@dg.asset_check(asset=customer_updates)
def each_eligible_customer_decided_once(artifacts: ArtifactStore, app_db: PostgresDatabase) -> dg.AssetCheckResult:
    """Each eligible customer of the batch has exactly one decision (unless skipped at scoring), and each
    applied decision exactly one audit row."""
    meta = _batch_files(artifacts)
    batch_id = meta[DECISIONS_KEY]["batch_id"]
    eligible = artifacts.read_parquet(ELIGIBLE_KEY, columns=["customer_id"])["customer_id"]
    decided = artifacts.read_parquet(DECISIONS_KEY, columns=["customer_id"])["customer_id"]
    skipped_scoring = sum(json.loads(meta[SCORES_KEY]["skipped"]).values())
    results = artifacts.read_json(join_key(batch_prefix(batch_id), "results.json"))
    with app_db.connect() as conn:
        audited = pd.Series(
            [row[0] for row in conn.execute(
                sql.SQL("SELECT customer_id FROM {} WHERE batch_id = %s::uuid").format(sql.Identifier(AUDIT_TABLE)),
                (batch_id,),
            )],
            dtype="int64",
        )
    problems = {
        "duplicate_decisions": int(decided.duplicated().sum()),
        "decisions_for_ineligible_customers": int((~decided.isin(eligible)).sum()),
        "eligible_without_decision_unexplained": int((~eligible.isin(decided)).sum()) - skipped_scoring,
        "duplicate_audit_rows": int(audited.duplicated().sum()),
        "audit_rows_without_decision": int((~audited.isin(decided)).sum()),
        "audit_rows_vs_applied": len(audited) - (results["updated"] + results["already_applied"]),
    }
    return dg.AssetCheckResult(
        passed=not any(problems.values()),
        metadata={"batch_id": batch_id, "eligible": len(eligible), "decisions": len(decided),
                  "audit_rows": len(audited), **problems},
    )


@dg.asset_check(asset=customer_updates)
def counts_reconcile(artifacts: ArtifactStore) -> dg.AssetCheckResult:
    """Selected = eligible + skipped; eligible = scored + skipped at scoring; scored = decided;
    decided = updated + already applied + conflicts + missing; one batch id throughout."""
    meta = _batch_files(artifacts)
    batch_ids = {key: m["batch_id"] for key, m in meta.items()}
    batch_id = meta[DECISIONS_KEY]["batch_id"]
    results = artifacts.read_json(join_key(batch_prefix(batch_id), "results.json"))
    rows = {key: artifacts.read_parquet_table(key, columns=["customer_id"]).num_rows for key in meta}
    selected = int(meta[ELIGIBLE_KEY]["selected"])
    skipped_eligibility = sum(json.loads(meta[ELIGIBLE_KEY]["skipped"]).values())
    skipped_scoring = sum(json.loads(meta[SCORES_KEY]["skipped"]).values())
    equations = {
        "selected = eligible + skipped": (selected, rows[ELIGIBLE_KEY] + skipped_eligibility),
        "eligible = scored + skipped at scoring": (rows[ELIGIBLE_KEY], rows[SCORES_KEY] + skipped_scoring),
        "scored = decided": (rows[SCORES_KEY], rows[DECISIONS_KEY]),
        "decided = written back": (
            rows[DECISIONS_KEY],
            results["updated"] + results["already_applied"] + results["conflicts"] + results["missing_customers"],
        ),
    }
    broken = {name: f"{left} != {right}" for name, (left, right) in equations.items() if left != right}
    same_batch = len(set(batch_ids.values()) | {results["batch_id"]}) == 1
    if not same_batch:
        broken["batch ids"] = json.dumps({**batch_ids, "results.json": results["batch_id"]})
    return dg.AssetCheckResult(
        passed=not broken,
        metadata={
            "batch_id": batch_id,
            "counts": dg.MetadataValue.json({name: left for name, (left, _right) in equations.items()}),
            "broken": dg.MetadataValue.json(broken),
        },
    )
