"""Credit-limit-increase batch scoring as software-defined assets.

Reference: the batch-scoring SageMaker pipeline (Query -> Inference -> Evaluate -> Update, four processing
steps passing JSON files). Here each step is an asset with lineage, metadata and checks:

    bank_customers -> eligible_customers -> credit_scores -> limit_decisions -> customer_updates
    credit_training_data -> credit_model ----------^

A scoring batch is identified by the run that selected its eligible customers (`batch_id`); its files
live under `credit/batches/<batch_id>/` and each step reads the batch its own run selected
(`credit_assets.batches`), so concurrent runs never mix batches. The write-back is idempotent per batch.
"""


import dataclasses
import json
import typing
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pydantic

from credit_assets import customer_store, drift, scoring, training_data
from credit_assets.batches import (
    DECISIONS_FILE,
    ELIGIBLE_FILE,
    EVALUATIONS_FILE,
    RESULTS_FILE,
    SCORES_FILE,
    SKIPPED_FILE,
    batch_key,
    batch_step,
    read_step_file,
    write_batch_file,
)
from credit_assets.model_code import scorecard
from credit_assets.policy import APPROVED, LimitPolicy, decide_limits
from resources.artifacts import ArtifactStore, join_key
from resources import freshness
from resources.datasets import ReferenceDatasets
from resources.metadata import artifact_link, count_table, markdown_mapping, markdown_table, metrics_table, tidy
from resources.model_registry import ModelRegistry
from resources.model_versions import new_version, publish_version, read_manifest, read_verified, sha256_hex
from resources.postgres import PostgresDatabase
from resources.readonly import ReadOnlyDatabase
from resources.sagemaker import MetricDefinition, SageMakerJobs
from resources.tracking import opt_in_tags

GROUP = "credit"
# Scoring runs queue one after the other (deploy/dagster.*.yaml limits each pool to one run), so batches are
# decided in the order they were selected. Correctness does not depend on it: every batch has files of its
# own, and runs started outside the queue each write back their own decisions.
SCORING_POOL = "credit_batch"
MODEL_CODE_DIR = Path(__file__).with_name("model_code")
TRAINING_DATA_PREFIX = "credit/training_data"
TRAINING_DATA_POINTER = "credit/training_data/current.json"
MODEL_PREFIX = "credit/models"
MODEL_BUNDLE_FILES = [scorecard.MODEL_FILE, scorecard.PREPROCESSING_FILE, scorecard.SCORECARD_FILE, scorecard.METRICS_FILE,
                      scorecard.POINTS_CSV_FILE, scorecard.POINTS_MARKDOWN_FILE]
TRANSFORM_PART_ROWS = 250_000
METRIC_DEFINITIONS = [
    MetricDefinition("validation:auc", r"metric validation:auc=([0-9.eE+-]+)"),
    MetricDefinition("validation:gini", r"metric validation:gini=([0-9.eE+-]+)"),
    MetricDefinition("train:auc", r"metric train:auc=([0-9.eE+-]+)"),
]


bank_customers = dg.AssetSpec(
    "bank_customers",
    group_name=GROUP,
    kinds={"postgres"},
    description=(
        "The bank's customers table in the application database (the source of a scoring batch). Demo data: "
        "`mldp seed-customers`."
    ),
)


# --- training --------------------------------------------------------------------------------------------


@dg.asset(group_name=GROUP, kinds={"pandas", "csv"})
def credit_training_data(context: dg.AssetExecutionContext, datasets: ReferenceDatasets,
                         artifacts: ArtifactStore) -> dg.MaterializeResult:
    """Labelled loan applications for the scorecard: the public bank case-study data set when present
    (`DATASETS_DIR/credit/BankCaseStudyData.csv`), else a generated population with the same columns.

    Stored content-addressed (`credit/training_data/<fingerprint>/applications.csv`) so every model
    records exactly which data trained it.
    """
    frame, source = training_data.training_frame(datasets.credit_applications())
    payload = frame.to_csv(index=False).encode()
    fingerprint = sha256_hex(payload)
    prefix = join_key(TRAINING_DATA_PREFIX, fingerprint[:16])
    uri = artifacts.write_bytes(join_key(prefix, "applications.csv"), payload)
    artifacts.write_json(TRAINING_DATA_POINTER, {"prefix": prefix, "fingerprint": fingerprint, "source": source,
                                                 "rows": len(frame)})
    labels = frame[scorecard.LABEL].value_counts().to_dict()
    splits = frame[scorecard.SPLIT].value_counts().to_dict()
    context.log.info(f"{len(frame):,} applications from {source}")
    return dg.MaterializeResult(
        metadata=tidy({
            "source": source,
            "rows": len(frame),
            "decline_rate": float((frame[scorecard.LABEL] == scorecard.POSITIVE_LABEL).mean()),
            "labels": count_table({str(k): int(v) for k, v in labels.items()}, "label", "applications"),
            "splits": count_table({str(k): int(v) for k, v in splits.items()}, "split", "applications"),
            "fingerprint": fingerprint,
            "uri": artifact_link(uri),
        })
    )


class CreditModelConfig(dg.Config):
    """Hyperparameters of the scorecard (its binning and fit) and its scaling (PDO 20, score 600 at odds 30 by
    default); `credit_assets/model_code/scorecard.py` says what each means."""

    pdo: float = scorecard.DEFAULT_PDO
    target_score: float = scorecard.DEFAULT_TARGET_SCORE
    target_odds: float = scorecard.DEFAULT_TARGET_ODDS
    l2: float = scorecard.DEFAULT_L2
    max_iter: int = scorecard.DEFAULT_MAX_ITER
    seed: int = scorecard.DEFAULT_SEED
    prebins: int = scorecard.DEFAULT_PREBINS
    min_bin_share: float = scorecard.DEFAULT_MIN_BIN_SHARE
    min_special_share: float = scorecard.DEFAULT_MIN_SPECIAL_SHARE
    special_z: float = scorecard.DEFAULT_SPECIAL_Z


TRACKING_TAGS = opt_in_tags(  # opt the training job in to the tracking sync (mlops_assets.tracking)
    project_name="credit-limit-increase", project_user="credit-risk-analytics",
    project_description="Credit-limit-increase batch scoring: scorecard on bank applications",
    model_name="credit-scorecard", model_type="torch-points-scorecard")


@dg.asset(group_name=GROUP, deps=[credit_training_data], kinds={"torch", "sagemaker"},
          freshness_policy=freshness.training_cadence())
def credit_model(context: dg.AssetExecutionContext, config: CreditModelConfig, sagemaker: SageMakerJobs,
                 artifacts: ArtifactStore, registry: ModelRegistry) -> dg.MaterializeResult:
    """The credit scorecard: binned characteristics (monotone value bins, special values, missing) and a
    torch logistic regression with one weight per attribute, scaled to points per attribute.

    Trained as a SageMaker script-mode job (`credit_assets/model_code/train.py`; locally by default) and
    published as a version under `credit/models/<version>/`: state_dict weights, bins and scaling as JSON,
    the points per attribute for people (`points.md`, `points.csv`), the SageMaker `model.tar.gz`, and a
    manifest with checksums, metrics and the training-data fingerprint. Registered in the model registry as
    PendingManualApproval.
    """
    data = artifacts.read_json(TRAINING_DATA_POINTER)
    version = new_version(context.run.run_id)
    hyperparameters = config.model_dump()
    job = sagemaker.train(
        job_name=f"credit-model-{version}",
        source_dir=MODEL_CODE_DIR,
        entry_point="train.py",
        channels={"train": data["prefix"]},
        hyperparameters=hyperparameters,
        output_prefix="sagemaker/training",
        tags={**TRACKING_TAGS, "model_version": version, "dagster_run_id": context.run.run_id},
        metric_definitions=METRIC_DEFINITIONS,
        log=context.log.debug,
    )
    model_dir = Path(job.model_dir)
    metrics = json.loads((model_dir / scorecard.METRICS_FILE).read_text())
    files = {name: model_dir / name for name in MODEL_BUNDLE_FILES}
    model_key = artifacts.key_from_uri(job.model_data_uri)
    sagemaker.check_model_archive(model_key)  # only a model the serving container can load is published
    files["model.tar.gz"] = artifacts.read_bytes(model_key)
    manifest = publish_version(
        artifacts,
        MODEL_PREFIX,
        version,
        files,
        {
            "model": "credit-scorecard",
            "framework": "torch",
            "training_job": job.name,
            "training_backend": job.backend,
            "training_data": {"uri": artifacts.uri(data["prefix"]), "fingerprint": data["fingerprint"],
                              "source": data["source"], "rows": data["rows"]},
            "hyperparameters": hyperparameters,
            "metrics": metrics,
            "sagemaker_model_data_uri": job.model_data_uri,
        },
    )
    package = registry.register(
        "credit", model_version=version, model_data_url=artifacts.uri(join_key(MODEL_PREFIX, version, "model.tar.gz")),
        metrics={k: metrics[k] for k in ("validation_auc", "validation_gini", "development_auc")},
        data_fingerprint=data["fingerprint"], description=f"credit scorecard {version}, trained by {job.name}",
    )
    distribution = metrics["validation_score_distribution"]
    return dg.MaterializeResult(
        metadata=tidy({
            "model_version": version,
            "model_package": package.arn,
            # the status it was registered with; each later change is an observation with its approval_status
            "registered_as": package.status,
            "validation_auc": metrics["validation_auc"],
            "validation_gini": metrics["validation_gini"],
            "development_auc": metrics["development_auc"],
            "validation_rows": metrics["validation_rows"],
            "metrics": dg.MetadataValue.md(metrics_table(metrics)),
            "score_distribution": dg.MetadataValue.md(markdown_mapping(distribution, "statistic", "score")),
            "training_job": job.name,
            "training_data_fingerprint": data["fingerprint"],
            "model_uri": artifact_link(artifacts.uri(join_key(MODEL_PREFIX, version)), folder=True),
            "points_table": artifact_link(artifacts.uri(join_key(MODEL_PREFIX, version, scorecard.POINTS_MARKDOWN_FILE))),
            "files": len(manifest["files"]),
        })
    )


# --- scoring batch ---------------------------------------------------------------------------------------


class EligibilityConfig(dg.Config):
    """Which customers get a limit review (defaults as the reference: score >= 600, limit < 10,000), and the
    plausible range of each numeric column, e.g. `{"gross_annual_income": [0, 5000000]}` (see
    `customer_store.PLAUSIBLE_RANGES` for the defaults); rows outside are skipped with their reason."""

    min_current_score: int = 600
    max_current_limit: int = 10_000
    customers_table: str = "customers"
    plausible_ranges: dict[str, list[float]] = {}


@dg.asset(group_name=GROUP, deps=[bank_customers], kinds={"postgres", "pandas"}, pool=SCORING_POOL)
def eligible_customers(context: dg.AssetExecutionContext, config: EligibilityConfig, readonly_db: ReadOnlyDatabase,
                       artifacts: ArtifactStore) -> dg.MaterializeResult:
    """Customers up for a credit-limit review, read through the read-only role / replica.

    Undecided customers with `current_score >= min_current_score` and `current_limit <
    max_current_limit`. Rows with a missing, infinite or implausible value (a NULL or negative limit, an
    income at the integer limit, ...) are skipped and counted by reason. The run that materialises this asset
    starts a new scoring batch (`batch_id`, the run's id).
    """
    ranges = customer_store.plausible_ranges(config.plausible_ranges)
    table = config.customers_table
    columns = readonly_db.query(*customer_store.columns_query(table))
    customer_store.check_customers_columns(set(columns["column_name"]) if not columns.empty else set(), table)
    statement, params = customer_store.eligible_query(table, config.min_current_score, config.max_current_limit)
    frame = readonly_db.query(statement, params)
    valid, skipped_counts, skipped = customer_store.split_implausible_rows(frame, ranges)
    batch_id = run_id = context.run.run_id
    uri = write_batch_file(artifacts, batch_id, ELIGIBLE_FILE, valid, run_id=run_id, selected=str(len(frame)),
                           skipped=json.dumps(skipped_counts), filter=config.model_dump_json())
    if not skipped.empty:
        write_batch_file(artifacts, batch_id, SKIPPED_FILE, skipped, run_id=run_id)
    context.log.info(f"batch {batch_id}: {len(valid):,} eligible customers, {len(skipped):,} skipped")
    return dg.MaterializeResult(
        metadata={
            "batch_id": batch_id,
            "eligible": len(valid),
            "selected_rows": len(frame),
            "skipped": sum(skipped_counts.values()),
            "skipped_reasons": count_table(skipped_counts),
            "filter": dg.MetadataValue.md(markdown_mapping(
                {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in config.model_dump().items()},
                "setting", "value")),
            "read_from": readonly_db.describe(),
            "preview": dg.MetadataValue.md(markdown_table(valid[["customer_id", "current_score", "current_limit"]])),
            "uri": artifact_link(uri),
        }
    )


class CreditScoresConfig(dg.Config):
    """Which model version under `credit/models/` scores; empty: the model registry's choice (the newest
    Approved version, or the newest registered one with MODEL_VERSION_POLICY=newest). A version named here
    must pass the same policy (Approved; or not Rejected under `newest`)."""

    model_version: str = ""


# the model files come from credit_model, the choice of version from the registry
@dg.asset(group_name=GROUP, deps=[eligible_customers, credit_model, "model_registry"], kinds={"torch", "sagemaker"},
          pool=SCORING_POOL, check_specs=[dg.AssetCheckSpec(
              "score_drift", asset="credit_scores",
              description="Population stability index of each feature and of the score, between the model's training "
                          "data (the applications it scores at the batch's minimum current score or above) and the "
                          "customers this batch scored: WARN from DRIFT_PSI_WARN (0.1), ERROR from DRIFT_PSI_ERROR "
                          "(0.25). The indices are also plotted on this asset's metadata.")])
def credit_scores(context: dg.AssetExecutionContext, config: CreditScoresConfig, sagemaker: SageMakerJobs,
                  artifacts: ArtifactStore, registry: ModelRegistry) -> dg.MaterializeResult:
    """New scorecard points and decline probability for each eligible customer of the run's batch, from the
    newest Approved model in the registry (the newest registered one with MODEL_VERSION_POLICY=newest), or
    the version the run config names (the approval sensor pins the version it approved).

    Batch inference through SageMaker Batch Transform, served by the `code/inference.py` inside the model's
    `model.tar.gz` (run locally by default).
    Customers with a category value the model never saw are skipped and counted per column.
    """
    upstream = batch_step(context, "eligible_customers")
    eligible, eligible_meta = read_step_file(artifacts, upstream, ELIGIBLE_FILE)
    batch_id, run_id = upstream.batch_id, context.run.run_id
    package = registry.resolve("credit", config.model_version)
    manifest = read_manifest(artifacts, MODEL_PREFIX, package.model_version if package else config.model_version)
    version = manifest["version"]
    preprocessing = json.loads(read_verified(artifacts, MODEL_PREFIX, manifest, scorecard.PREPROCESSING_FILE))
    read_verified(artifacts, MODEL_PREFIX, manifest, "model.tar.gz")  # fail here, clearly, if it is corrupt

    scorable, skipped_counts = scoring.scorable_customers(eligible, preprocessing)
    job_name = None
    scored = scoring.read_transform_output([])
    if not scorable.empty:
        job_name = f"credit-score-{new_version(run_id)}"
        # the transform's files are this run's own: a concurrent run scoring the same batch writes elsewhere
        input_prefix = batch_key(batch_id, f"transform/{job_name}/input")
        output_prefix = batch_key(batch_id, f"transform/{job_name}/output")
        for name, data in scoring.transform_input(scorable, TRANSFORM_PART_ROWS):
            artifacts.write_bytes(join_key(input_prefix, name), data)
        job = sagemaker.batch_transform(
            job_name=job_name, model_data_key=join_key(MODEL_PREFIX, version, "model.tar.gz"),
            input_prefix=input_prefix, output_prefix=output_prefix,
            tags={"project": "credit-limit-increase", "batch_id": batch_id, "model_version": version},
            log=context.log.debug,
        )
        scored = scoring.read_transform_output(
            [(artifacts.uri(k), artifacts.read_bytes(k)) for k in job.output_keys if k.endswith(".out")])
    scores = scoring.attach_scores(scorable, scored)
    psi, drift_check, validation_counts = drift.score_drift(
        artifacts, MODEL_PREFIX, version, drift.selection(eligible_meta.get("filter")),
        eligible[eligible["customer_id"].isin(scores["customer_id"])], scores["new_score"])
    uri = write_batch_file(artifacts, batch_id, SCORES_FILE, scores, run_id=run_id, model_version=version,
                           skipped=json.dumps(skipped_counts), transform_job=job_name or "",
                           eligible_run_id=upstream.run_id,
                           validation_score_counts=json.dumps(validation_counts) if validation_counts is not None else "")
    distribution = scorecard.score_distribution(scores["new_score"].to_numpy()) if len(scores) else {}
    return dg.MaterializeResult(
        metadata=tidy({
            "batch_id": batch_id,
            "model_version": version,
            "model_package": f"{package.arn} ({package.status})" if package else "not registered",
            "scored": len(scores),
            "skipped": sum(skipped_counts.values()),
            "skipped_unseen_values": count_table(skipped_counts, "column", "customers"),
            "transform_job": job_name or "(nothing to score)",
            "score_distribution": dg.MetadataValue.md(markdown_mapping(distribution, "statistic", "score")),
            "mean_decline_probability": float(scores["probability"].mean()) if len(scores) else 0.0,
            **psi,
            "uri": artifact_link(uri),
        }),
        check_results=[drift_check],
    )


def evaluation_summary(decisions: pd.DataFrame, batch_id: str, model_version: str, policy: dict) -> dict:
    """The reference's evaluations.json: what the batch decided, in numbers."""
    approved = decisions["decision"] == APPROVED
    increase = (decisions["new_limit"] - decisions["current_limit"])[approved]
    return {
        "batch_id": batch_id,
        "model_version": model_version,
        "customers_scored": int(len(decisions)),
        "approved": int(approved.sum()),
        "declined": int((~approved).sum()),
        "approval_rate": float(approved.mean()) if len(decisions) else 0.0,
        "total_limit_increase": int(increase.sum()),
        "mean_new_score": float(decisions["new_score"].mean()) if len(decisions) else None,
        "score_distribution": scorecard.score_distribution(decisions["new_score"].to_numpy(dtype=np.int64)),
        "policy": policy,
    }


# The limit-increase rule's thresholds as run config: LimitPolicy's fields, defaults and descriptions
LimitPolicyConfig = pydantic.create_model(
    "LimitPolicyConfig", __base__=dg.Config, __module__=__name__, __doc__=LimitPolicy.__doc__,
    **{spec.name: (typing.get_type_hints(LimitPolicy)[spec.name],
                   pydantic.Field(spec.default, description=spec.metadata.get("description")))
       for spec in dataclasses.fields(LimitPolicy)})


@dg.asset(group_name=GROUP, deps=[credit_scores], kinds={"pandas"}, pool=SCORING_POOL, check_specs=[dg.AssetCheckSpec(
    "approval_rate_drift", asset="limit_decisions",
    description="The batch's approval rate against the share of the model's Validation applications (those it "
                "scores at the batch's minimum current score or above) at the policy's approval score or above: WARN "
                "from a difference of DRIFT_APPROVAL_RATE_WARN (0.10), ERROR from DRIFT_APPROVAL_RATE_ERROR (0.20).")])
def limit_decisions(context: dg.AssetExecutionContext, config: LimitPolicyConfig,
                    artifacts: ArtifactStore) -> dg.MaterializeResult:
    """APPROVED / DECLINED with the new limit and the reason, per scored customer of the run's batch (the
    reference's rule)."""
    upstream = batch_step(context, "credit_scores")
    scores, meta = read_step_file(artifacts, upstream, SCORES_FILE)
    batch_id, version = upstream.batch_id, meta["model_version"]
    policy = LimitPolicy(**config.model_dump())
    decisions = decide_limits(scores, policy)
    uri = write_batch_file(artifacts, batch_id, DECISIONS_FILE, decisions, run_id=context.run.run_id,
                           model_version=version, policy=json.dumps(policy.as_dict()), scores_run_id=upstream.run_id)
    summary = evaluation_summary(decisions, batch_id, version, policy.as_dict())
    counts = json.loads(meta["validation_score_counts"]) if meta.get("validation_score_counts") else None
    rates, drift_check = drift.approval_rate_drift(counts, decisions, policy.approve_min_score,
                                                   decisions["decision"] == APPROVED)
    return dg.MaterializeResult(
        metadata=tidy({
            "batch_id": batch_id,
            "decisions": summary["customers_scored"],
            "approved": summary["approved"],
            "declined": summary["declined"],
            "approval_rate": summary["approval_rate"],
            **rates,
            "total_limit_increase": summary["total_limit_increase"],
            "policy": dg.MetadataValue.md(markdown_mapping(policy.as_dict(), "setting", "value")),
            "preview": dg.MetadataValue.md(markdown_table(
                decisions[["customer_id", "new_score", "current_limit", "new_limit", "decision", "reason"]])),
            "uri": artifact_link(uri),
        }),
        check_results=[drift_check],
    )


class WriteBackConfig(dg.Config):
    customers_table: str = "customers"


@dg.asset(group_name=GROUP, deps=[limit_decisions], kinds={"postgres"}, pool=SCORING_POOL)
def customer_updates(context: dg.AssetExecutionContext, config: WriteBackConfig, app_db: PostgresDatabase,
                     artifacts: ArtifactStore) -> dg.MaterializeResult:
    """The batch's decisions written to the customers table on the primary, with an append-only audit row
    per applied decision, in one transaction; idempotent per batch. Only the decisions file that this run's
    `limit_decisions` wrote (or, run alone, the latest one) is written back. Also writes the reference's
    `evaluations.json` and `results.json` under `credit/batches/<batch_id>/`.
    """
    upstream = batch_step(context, "limit_decisions")
    decisions, meta = read_step_file(artifacts, upstream, DECISIONS_FILE)
    batch_id, version, run_id = upstream.batch_id, meta["model_version"], context.run.run_id
    started = datetime.now(timezone.utc)
    with app_db.connect() as conn:
        result = customer_store.apply_decisions(conn, decisions, batch_id=batch_id, model_version=version,
                                                run_id=run_id, table=config.customers_table)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    status = "Succeeded" if result.conflicts == 0 and result.missing_customers == 0 else "SucceededWithConflicts"
    evaluations = evaluation_summary(decisions, batch_id, version, json.loads(meta["policy"]))
    evaluations_uri = artifacts.write_json(batch_key(batch_id, EVALUATIONS_FILE), evaluations)
    results = {**result.as_dict(), "status": status, "time": datetime.now(timezone.utc).isoformat(),
               "dagster_run_id": run_id, "decisions_run_id": upstream.run_id, "model_version": version}
    results_uri = artifacts.write_json(batch_key(batch_id, RESULTS_FILE), results)
    context.log.info(f"batch {batch_id}: {result.updated:,} customers updated, {result.already_applied:,} already "
                     f"applied, {result.conflicts:,} changed since selection")
    return dg.MaterializeResult(
        metadata=tidy({
            "batch_id": batch_id,
            "decisions_run_id": upstream.run_id,
            "model_version": version,
            "decisions": result.decisions,
            "approved": evaluations["approved"],
            "declined": evaluations["declined"],
            "approval_rate": evaluations["approval_rate"],
            "updated": result.updated,
            "already_applied": result.already_applied,
            "conflicts": result.conflicts,
            "missing_customers": result.missing_customers,
            "status": status,
            "write_seconds": round(seconds, 3),
            "rows_per_second": round(len(decisions) / seconds) if seconds > 0 else 0,
            "written_to": app_db.describe(),
            "evaluations": artifact_link(evaluations_uri),
            "results": artifact_link(results_uri),
        })
    )
