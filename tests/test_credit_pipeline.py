"""The credit pipeline end to end on the embedded PostgreSQL: training, scoring, decisions, write-back,
idempotency, checks, and what users see on bad input (nothing half-written)."""

import json

import dagster as dg
import pandas as pd
import pytest

import credit_assets as credit
from credit_assets import customer_store, population
from credit_assets.assets import DECISIONS_KEY, ELIGIBLE_KEY, MODEL_PREFIX, SCORES_KEY, batch_prefix
from credit_assets.policy import LimitPolicy, policy_violations
from resources.artifacts import LocalArtifactStore
from resources.datasets import ReferenceDatasets
from resources.model_registry import LocalModelRegistry
from resources.model_versions import list_versions
from resources.postgres import DatabaseUnavailableError
from resources.readonly import ProvisionedReadOnlyDatabase, ReadOnlyUrlDatabase
from resources.sagemaker import SageMakerResource

ALL = [credit.customers, credit.credit_training_data, credit.credit_model, credit.eligible_customers,
       credit.credit_scores, credit.limit_decisions, credit.customer_updates, credit.decisions_follow_policy,
       credit.each_eligible_customer_decided_once, credit.counts_reconcile]
SCORING = dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores, credit.limit_decisions,
                                   credit.customer_updates)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("credit")


def make_resources(app_db, workdir, datasets_dir, readonly=None, policy="newest"):
    artifacts = LocalArtifactStore(root=str(workdir / "artifacts"))
    return {
        "registry": LocalModelRegistry(db=app_db, version_policy=policy),
        "app_db": app_db,
        "readonly_db": readonly or ProvisionedReadOnlyDatabase(primary=app_db, role="credit_ro"),
        "artifacts": artifacts,
        "sagemaker": SageMakerResource(artifacts=artifacts, work_dir=str(workdir / "sagemaker")),
        "datasets": ReferenceDatasets(root=str(datasets_dir)),
    }


@pytest.fixture(scope="module")
def resources(app_db, workdir, datasets_dir):
    return make_resources(app_db, workdir, datasets_dir)


@pytest.fixture(scope="module")
def trained(resources):
    """Train once for the module (through the local SageMaker backend)."""
    result = dg.materialize(ALL, resources=resources,
                            selection=dg.AssetSelection.assets(credit.credit_training_data, credit.credit_model))
    assert result.success
    return result


def seed(app_db, frame):
    with app_db.connect() as conn:
        customer_store.load_customers(conn, frame, replace=True)


def run_scoring(resources, run_config=None, raise_on_error=True, selection=SCORING):
    return dg.materialize(ALL, resources=resources, selection=selection, run_config=run_config,
                          raise_on_error=raise_on_error)


SCORING_CHECKS = {"decisions_follow_policy", "each_eligible_customer_decided_once", "counts_reconcile"}


def assert_checks_passed(result, expected=SCORING_CHECKS):
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == set(expected) and all(evaluations.values()), evaluations


def metadata(result, asset):
    events = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in events[-1].metadata.items()}


def customers_table(app_db) -> pd.DataFrame:
    with app_db.connect() as conn:
        cur = conn.execute("SELECT * FROM customers ORDER BY customer_id")
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def audit_rows(app_db, batch_id=None) -> pd.DataFrame:
    with app_db.connect() as conn:
        cur = conn.execute(
            "SELECT * FROM credit_limit_audit WHERE %(b)s::uuid IS NULL OR batch_id = %(b)s::uuid ORDER BY customer_id",
            {"b": batch_id})
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def failure_message(result) -> str:
    """The step failure's message with the messages of its causes (what the user reads in the UI)."""
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    messages = []
    while error is not None:
        messages.append(f"{error.cls_name}: {error.message}")
        error = error.cause
    return "\n".join(messages)


def test_model_is_trained_and_versioned(trained, resources, datasets_dir):
    meta = metadata(trained, "credit_model")
    artifacts = resources["artifacts"]
    [version] = list_versions(artifacts, MODEL_PREFIX)
    assert meta["model_version"] == version
    manifest = artifacts.read_json(f"{MODEL_PREFIX}/{version}/manifest.json")
    assert set(manifest["files"]) == {"model.pt", "preprocessing.json", "scorecard.json", "metrics.json", "model.tar.gz"}
    assert manifest["training_data"]["fingerprint"] == metadata(trained, "credit_training_data")["fingerprint"]
    if (datasets_dir / "credit" / "BankCaseStudyData.csv").exists():
        # the real bank data: a scorecard this simple reaches a Gini around 0.85 on Validation
        assert metadata(trained, "credit_training_data")["rows"] == 24_859
        assert 0.88 < meta["validation_auc"] < 0.97
        assert meta["validation_gini"] == pytest.approx(2 * meta["validation_auc"] - 1)
    else:
        assert meta["validation_auc"] > 0.85
    preprocessing = artifacts.read_json(f"{MODEL_PREFIX}/{version}/preprocessing.json")
    assert preprocessing["format"] == 1  # JSON, never pickle


def test_batch_scores_decides_writes_back_and_is_idempotent(trained, resources, app_db):
    seed(app_db, population.customers(3_000, seed=5))
    before = customers_table(app_db)
    result = run_scoring(resources)
    assert_checks_passed(result)
    eligible = metadata(result, "eligible_customers")
    updates = metadata(result, "customer_updates")
    batch = updates["batch_id"]
    expected = before[(before.current_score >= 600) & (before.current_limit < 10_000)]
    assert eligible["eligible"] == len(expected) == updates["updated"]
    assert metadata(result, "credit_scores")["scored"] == len(expected)

    after = customers_table(app_db).set_index("customer_id")
    audit = audit_rows(app_db, batch).set_index("customer_id")
    assert sorted(audit.index) == sorted(expected.customer_id)
    decided = after.loc[audit.index]
    assert (decided.limit_increase_decision == audit.decision).all()
    assert (decided.new_limit == audit.new_limit).all() and (decided.current_score == audit.new_score).all()
    assert (audit.old_limit == before.set_index("customer_id").loc[audit.index].current_limit).all()
    assert (audit.dagster_run_id.astype(str) == result.run_id).all()
    # the policy holds on what reached the database
    check = audit.reset_index().rename(columns={"old_limit": "current_limit"})
    assert policy_violations(check, LimitPolicy()).empty
    untouched = after.drop(index=audit.index)
    assert untouched.limit_increase_decision.isna().all()

    artifacts = resources["artifacts"]
    results = artifacts.read_json(f"{batch_prefix(batch)}/results.json")
    assert (results["updated"], results["status"]) == (len(expected), "Succeeded")
    evaluations = artifacts.read_json(f"{batch_prefix(batch)}/evaluations.json")
    assert evaluations["approved"] + evaluations["declined"] == len(expected)
    assert evaluations["approved"] == int((audit.decision == "APPROVED").sum())

    # re-running the write-back of the same batch changes nothing and adds no audit rows
    rerun = run_scoring(resources, selection=dg.AssetSelection.assets(credit.customer_updates))
    again = metadata(rerun, "customer_updates")
    assert (again["updated"], again["already_applied"], again["conflicts"]) == (0, len(expected), 0)
    assert len(audit_rows(app_db)) == len(expected)
    assert customers_table(app_db).set_index("customer_id").equals(after)
    assert_checks_passed(rerun, SCORING_CHECKS - {"decisions_follow_policy"})

    # a new batch finds nobody left to review
    fresh = run_scoring(resources)
    assert metadata(fresh, "eligible_customers")["eligible"] == 0
    assert metadata(fresh, "customer_updates")["updated"] == 0


def test_eligibility_filter_is_configurable(trained, resources, app_db):
    seed(app_db, population.customers(1_000, seed=8))
    before = customers_table(app_db)
    config = dg.RunConfig({"eligible_customers": credit.assets.EligibilityConfig(min_current_score=650,
                                                                                  max_current_limit=4_000)})
    result = run_scoring(resources, run_config=config)
    expected = before[(before.current_score >= 650) & (before.current_limit < 4_000)]
    assert metadata(result, "eligible_customers")["eligible"] == len(expected) > 0


def test_null_negative_limits_and_unknown_categories_are_skipped_and_counted(trained, resources, app_db):
    frame = population.customers(400, seed=9)
    frame["current_score"] = 640
    frame["current_limit"] = 3_000
    frame["current_limit"] = frame["current_limit"].astype("Int64")
    frame.loc[0, "current_limit"] = pd.NA
    frame.loc[1, "current_limit"] = -500
    frame.loc[2, "residential_status"] = "Q"
    frame.loc[3, "cheque_card_flag"] = "maybe"
    frame.loc[4, "loan_payment_frequency"] = None  # missing is a value the model knows
    seed(app_db, frame)
    result = run_scoring(resources)
    assert metadata(result, "eligible_customers")["skipped"] == {"current_limit is NULL": 1, "current_limit is negative": 1}
    assert metadata(result, "credit_scores")["skipped"] == {"unknown Residential_Status value": 1,
                                                            "unknown Cheque_Card_Flag value": 1}
    assert metadata(result, "customer_updates")["updated"] == 396
    table = customers_table(app_db).set_index("customer_id")
    first = frame.customer_id.iloc[0]
    assert table.loc[first:first + 3].limit_increase_decision.isna().all()
    assert table.loc[first + 4].limit_increase_decision in ("APPROVED", "DECLINED")
    assert_checks_passed(result)


def test_missing_table_or_column_is_named_and_nothing_is_written(trained, resources, app_db):
    artifacts = resources["artifacts"]
    seed(app_db, population.customers(50, seed=1))
    with app_db.connect(autocommit=True) as conn:
        conn.execute("ALTER TABLE customers DROP COLUMN bureau_score")
    stamp = artifacts.read_bytes(ELIGIBLE_KEY) if artifacts.exists(ELIGIBLE_KEY) else None
    result = run_scoring(resources, raise_on_error=False)
    assert not result.success
    assert "table customers is missing column(s): bureau_score" in failure_message(result)
    assert (artifacts.read_bytes(ELIGIBLE_KEY) if artifacts.exists(ELIGIBLE_KEY) else None) == stamp
    with app_db.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE customers")
    result = run_scoring(resources, raise_on_error=False)
    assert "table customers does not exist" in failure_message(result)


def test_unreachable_database(trained, resources):
    broken = {**resources, "readonly_db": ReadOnlyUrlDatabase(url="postgresql://ro:pw@127.0.0.1:1/bank?connect_timeout=2")}
    result = run_scoring(broken, raise_on_error=False)
    message = failure_message(result)
    assert "cannot connect to PostgreSQL postgresql://ro@127.0.0.1:1/bank" in message and ":pw@" not in message
    assert DatabaseUnavailableError.__name__ in message


def test_corrupt_and_missing_model_artifacts(trained, resources, app_db, workdir, datasets_dir):
    artifacts = resources["artifacts"]
    seed(app_db, population.customers(200, seed=2))
    [version] = list_versions(artifacts, MODEL_PREFIX)[-1:]
    key = f"{MODEL_PREFIX}/{version}/preprocessing.json"
    good = artifacts.read_bytes(key)
    artifacts.write_bytes(key, good[: len(good) // 2])
    try:
        result = run_scoring(resources, raise_on_error=False)
        assert f"model artifact {artifacts.uri(key)} is corrupt" in failure_message(result)
    finally:
        artifacts.write_bytes(key, good)
    assert customers_table(app_db).limit_increase_decision.isna().all()

    # the registry names a version whose files are not in this artifact store
    empty = make_resources(app_db, workdir / "no-model", datasets_dir)
    empty["artifacts"].write_parquet(ELIGIBLE_KEY, pd.DataFrame({"customer_id": []}), metadata={"batch_id": "b"})
    result = dg.materialize(ALL, resources=empty, selection=dg.AssetSelection.assets(credit.credit_scores),
                            raise_on_error=False)
    assert "is missing or incomplete: no file://" in failure_message(result)
    # no model registered at all (another environment's registry)
    empty["registry"] = LocalModelRegistry(db=app_db, env="staging", version_policy="newest")
    result = dg.materialize(ALL, resources=empty, selection=dg.AssetSelection.assets(credit.credit_scores),
                            raise_on_error=False)
    assert "no usable model in credit-staging-models" in failure_message(result)


def test_changed_customers_are_conflicts_not_overwritten(trained, resources, app_db):
    seed(app_db, population.customers(300, seed=3))
    upto_decisions = dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores, credit.limit_decisions)
    run_scoring(resources, selection=upto_decisions)
    decisions = resources["artifacts"].read_parquet(DECISIONS_KEY)
    changed = int(decisions.customer_id.iloc[0])
    with app_db.connect(autocommit=True) as conn:  # the bank changes a limit meanwhile
        conn.execute("UPDATE customers SET current_limit = current_limit + 1 WHERE customer_id = %s", (changed,))
    result = run_scoring(resources, selection=dg.AssetSelection.assets(credit.customer_updates))
    meta = metadata(result, "customer_updates")
    assert (meta["updated"], meta["conflicts"], meta["status"]) == (len(decisions) - 1, 1, "SucceededWithConflicts")
    row = customers_table(app_db).set_index("customer_id").loc[changed]
    assert pd.isna(row.limit_increase_decision)
    assert changed not in set(audit_rows(app_db, meta["batch_id"]).customer_id)
    assert_checks_passed(result, SCORING_CHECKS - {"decisions_follow_policy"})


def test_a_failing_write_back_leaves_nothing_half_written(trained, resources, app_db):
    seed(app_db, population.customers(300, seed=4))
    upto_decisions = dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores, credit.limit_decisions)
    run_scoring(resources, selection=upto_decisions)
    artifacts = resources["artifacts"]
    decisions = artifacts.read_parquet(DECISIONS_KEY)
    meta = artifacts.parquet_metadata(DECISIONS_KEY)
    broken = pd.concat([decisions, decisions.tail(1)], ignore_index=True)  # one customer twice: staging refuses it
    artifacts.write_parquet(DECISIONS_KEY, broken, metadata=meta)
    audit_before = len(audit_rows(app_db))
    result = run_scoring(resources, selection=dg.AssetSelection.assets(credit.customer_updates), raise_on_error=False)
    assert not result.success
    assert "decides 1 customer(s) more than once" in failure_message(result)
    assert customers_table(app_db).limit_increase_decision.isna().all()
    assert len(audit_rows(app_db)) == audit_before

    # a failure inside the database: the audit insert is refused (no model version) after the UPDATE ran
    # in the same statement; the customers keep their old values
    import psycopg

    with app_db.connect() as conn, pytest.raises(psycopg.errors.NotNullViolation):
        customer_store.apply_decisions(conn, decisions, batch_id=meta["batch_id"], model_version=None, run_id=meta["batch_id"])
    assert customers_table(app_db).limit_increase_decision.isna().all()
    assert len(audit_rows(app_db)) == audit_before


def test_policy_check_blocks_the_write_back(trained, resources, app_db):
    seed(app_db, population.customers(300, seed=6))
    run_scoring(resources, selection=dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores,
                                                               credit.limit_decisions))
    artifacts = resources["artifacts"]
    decisions = artifacts.read_parquet(DECISIONS_KEY)
    meta = artifacts.parquet_metadata(DECISIONS_KEY)
    decisions.loc[decisions.index[0], "new_limit"] = 99_999  # above the cap
    artifacts.write_parquet(DECISIONS_KEY, decisions, metadata=meta)
    result = run_scoring(
        resources, raise_on_error=False,
        selection=dg.AssetSelection.checks(credit.decisions_follow_policy) | dg.AssetSelection.assets(credit.customer_updates),
    )
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "decisions_follow_policy"]
    assert not check.passed and check.metadata["violations"].value == 1
    assert not result.asset_materializations_for_node("customer_updates")
    assert customers_table(app_db).limit_increase_decision.isna().all()


def test_scoring_uses_the_newest_approved_model_and_says_which(trained, resources, app_db):
    registry = LocalModelRegistry(db=app_db, version_policy="approved")
    strict = {**resources, "registry": registry}
    seed(app_db, population.customers(150, seed=12))
    [package] = registry.packages("credit-dev-models")[:1]
    if package.status == "Approved":  # another test may have approved it: start from a pending one
        registry.set_status(package.group, package.version, "PendingManualApproval", "back to review")
    result = run_scoring(strict, raise_on_error=False)
    assert "no Approved model in credit-dev-models (newest: version" in failure_message(result)
    assert "mldp registry approve credit-dev-models" in failure_message(result)
    registry.approve(package.group, package.version, "validation Gini above 0.8")
    result = run_scoring(strict)
    meta = metadata(result, "credit_scores")
    assert meta["model_version"] == package.model_version
    assert meta["model_package"] == f"{package.arn} (Approved)"


def test_audit_trail_is_append_only(trained, resources, app_db):
    seed(app_db, population.customers(200, seed=7))
    run_scoring(resources)
    import psycopg

    with app_db.connect() as conn:
        for statement in ("UPDATE credit_limit_audit SET new_limit = 0", "DELETE FROM credit_limit_audit",
                          "TRUNCATE credit_limit_audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
            conn.rollback()


def test_counts_reconcile_detects_a_mismatch(trained, resources, app_db):
    seed(app_db, population.customers(200, seed=10))
    run_scoring(resources)
    artifacts = resources["artifacts"]
    scores = artifacts.read_parquet(SCORES_KEY)
    artifacts.write_parquet(SCORES_KEY, scores.iloc[1:], metadata=artifacts.parquet_metadata(SCORES_KEY))
    result = dg.materialize(ALL, resources=resources, selection=dg.AssetSelection.checks(credit.counts_reconcile))
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert json.loads(json.dumps(check.metadata["broken"].value))["eligible = scored + skipped at scoring"]


def test_a_batch_is_not_written_back_again_with_other_decisions(trained, resources, app_db):
    seed(app_db, population.customers(300, seed=11))
    run_scoring(resources)
    before, audit_before = customers_table(app_db), audit_rows(app_db)
    # the same batch decided again under a looser policy: a new batch is needed, not a silent "already applied"
    looser = dg.RunConfig({"limit_decisions": credit.assets.LimitPolicyConfig(approve_min_score=600)})
    result = run_scoring(resources, run_config=looser, raise_on_error=False,
                         selection=dg.AssetSelection.assets(credit.limit_decisions, credit.customer_updates))
    assert not result.success
    assert "was already written back with other decisions" in failure_message(result)
    assert customers_table(app_db).equals(before)
    assert len(audit_rows(app_db)) == len(audit_before)
