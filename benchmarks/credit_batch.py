"""Benchmark: a credit scoring batch of N customers through the project's own assets.

Generates N customers (default 1,000,000) into the embedded PostgreSQL, trains the scorecard, then
materialises eligible_customers -> credit_scores -> limit_decisions -> customer_updates (with their checks)
and prints one JSON line: seconds per stage, customers/s end to end, write-back rows/s, peak RSS, and the
reference's write-back (one UPDATE statement per customer) measured on a sample in the same run.

    .venv/bin/python benchmarks/credit_batch.py [--customers 1000000] [--baseline-sample 5000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import peak_rss_mb, scratch_folder, settings_for  # noqa: E402

import dagster as dg  # noqa: E402
from psycopg import sql  # noqa: E402

import credit_assets as credit  # noqa: E402
from credit_assets import customer_store, population  # noqa: E402
from credit_assets.batches import DECISIONS_FILE, batch_key  # noqa: E402
from resources.artifacts import LocalArtifactStore  # noqa: E402
from resources.datasets import ReferenceDatasets  # noqa: E402
from resources.drift import MONITORING_CHECKS  # noqa: E402
from resources.model_registry import LocalModelRegistry  # noqa: E402
from resources.postgres import EmbeddedPostgresDatabase  # noqa: E402
from resources.readonly import ProvisionedReadOnlyDatabase  # noqa: E402
from resources.sagemaker import LocalSageMakerJobs  # noqa: E402

STAGES = ["eligible_customers", "credit_scores", "limit_decisions", "customer_updates"]


def step_seconds(instance, run_id) -> dict[str, float]:
    """Wall seconds of each step, from the run's STEP_START / STEP_SUCCESS event records."""
    starts, seconds = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            seconds[event.step_key] = round(record.timestamp - starts[event.step_key], 3)
    return seconds


def per_row_update_baseline(app_db, decisions) -> float:
    """The reference's write-back: one UPDATE per customer, committed at the end; returns rows/s."""
    statement = sql.SQL(
        "UPDATE customers SET current_score = %s, limit_increase_decision = %s, new_limit = %s, "
        "decision_reason = %s, updated_at = now() WHERE customer_id = %s"
    )
    with app_db.connect() as conn:
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for row in decisions.itertuples(index=False):
                cur.execute(statement, (int(row.new_score), row.decision, int(row.new_limit), row.reason,
                                        int(row.customer_id)))
        return len(decisions) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--baseline-sample", type=int, default=5_000)
    parser.add_argument("--work-dir", help="keep data here instead of a temporary folder")
    args = parser.parse_args()

    with scratch_folder("credit", Path(args.work_dir) if args.work_dir else None) as work:
        settings = settings_for(work)
        app_db = EmbeddedPostgresDatabase(data_dir=str(settings.embedded_postgres_dir), database="bench_credit")
        artifacts = LocalArtifactStore(root=str(work / "artifacts"))
        resources = {
            "app_db": app_db,
            "readonly_db": ProvisionedReadOnlyDatabase(primary=app_db),
            "artifacts": artifacts,
            "sagemaker": LocalSageMakerJobs(artifacts=artifacts, work_dir=str(work / "sagemaker")),
            "datasets": ReferenceDatasets(root=str(settings.datasets_dir)),
            # the model just trained scores (it is registered; approval is not what is measured here)
            "registry": LocalModelRegistry(db=app_db, version_policy="newest"),
        }
        assets = [credit.bank_customers, credit.credit_training_data, credit.credit_model, credit.eligible_customers,
                  credit.credit_scores, credit.limit_decisions, credit.customer_updates, credit.decisions_follow_policy,
                  credit.each_eligible_customer_decided_once, credit.counts_reconcile]
        started = time.perf_counter()
        frame = population.customers(args.customers, seed=2026)
        generate_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with app_db.connect() as conn:
            customer_store.load_customers(conn, frame, replace=True)
        load_seconds = time.perf_counter() - started
        del frame

        started = time.perf_counter()
        trained = dg.materialize(assets, resources=resources, selection=dg.AssetSelection.assets(
            credit.credit_training_data, credit.credit_model))
        assert trained.success
        train_seconds = time.perf_counter() - started

        instance = dg.DagsterInstance.ephemeral()
        started = time.perf_counter()
        result = dg.materialize(assets, resources=resources, instance=instance, selection=dg.AssetSelection.assets(
            *[getattr(credit, stage) for stage in STAGES]))
        end_to_end = time.perf_counter() - started
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        # the integrity checks must pass; a drift finding is monitoring (generated customers drift from real data)
        checks_passed = all(e.passed for e in evaluations if e.check_name not in MONITORING_CHECKS)
        drift_found = sorted(e.check_name for e in evaluations if e.check_name in MONITORING_CHECKS and not e.passed)
        seconds = step_seconds(instance, result.run_id)
        stage_seconds = {stage: seconds[stage] for stage in STAGES}
        check_seconds = round(sum(v for k, v in seconds.items() if k not in STAGES), 3)
        updates = result.asset_materializations_for_node("customer_updates")[-1].metadata
        eligible = result.asset_materializations_for_node("eligible_customers")[-1].metadata["eligible"].value
        writeback_rows_per_second = updates["rows_per_second"].value

        batch = updates["batch_id"].value
        decisions = artifacts.read_parquet(batch_key(batch, DECISIONS_FILE)).head(args.baseline_sample)
        baseline_rows_per_second = per_row_update_baseline(app_db, decisions)
        peak_self, peak_children = peak_rss_mb(), peak_rss_mb(resource.RUSAGE_CHILDREN)
        line = {
            "benchmark": "credit_batch",
            "customers": args.customers,
            "eligible": eligible,
            "generate_seconds": round(generate_seconds, 2),
            "load_seconds": round(load_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "stage_seconds": stage_seconds,
            "check_seconds": check_seconds,
            "end_to_end_seconds": round(end_to_end, 2),
            "customers_per_second": round(args.customers / end_to_end),
            "writeback_rows_per_second": writeback_rows_per_second,
            "baseline_per_row_update_rows_per_second": round(baseline_rows_per_second),
            "baseline_sample": len(decisions),
            "writeback_speedup": round(writeback_rows_per_second / baseline_rows_per_second, 1),
            "peak_rss_mb": peak_self,
            "peak_rss_children_mb": peak_children,
            "checks_passed": checks_passed,
            "drift_found": drift_found,
            "targets_met": {
                "writeback_rows_per_second>=100000": writeback_rows_per_second >= 100_000,
                "end_to_end_seconds<60": end_to_end < 60,
                "peak_rss_mb<2048": max(peak_self, peak_children) < 2048,
            },
        }
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
