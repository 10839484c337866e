"""The credit pipeline end to end on the embedded PostgreSQL: training, scoring, decisions, write-back,
idempotency, checks, and what users see on bad input (nothing half-written)."""

import io
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import pandas as pd
import pytest

import credit_assets as credit
from credit_assets import customer_store, population
from credit_assets.assets import MODEL_PREFIX
from credit_assets.batches import DECISIONS_FILE, SCORES_FILE, batch_key, batch_prefix
from credit_assets.policy import LimitPolicy, policy_violations
from resources.artifacts import LocalArtifactStore, schema_metadata
from resources.datasets import ReferenceDatasets
from resources.model_registry import LocalModelRegistry
from resources.model_versions import list_versions
from resources.postgres import DatabaseUnavailableError
from resources.readonly import ProvisionedReadOnlyDatabase, ReadOnlyUrlDatabase
from resources.sagemaker import LocalSageMakerJobs

ALL = [credit.bank_customers, credit.credit_training_data, credit.credit_model, credit.eligible_customers,
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
        "sagemaker": LocalSageMakerJobs(artifacts=artifacts, work_dir=str(workdir / "sagemaker")),
        "datasets": ReferenceDatasets(root=str(datasets_dir)),
    }


@pytest.fixture(scope="module")
def instance():
    """One Dagster instance for the module, as in a deployment: a step finds its batch in its event log."""
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture(scope="module")
def resources(app_db, workdir, datasets_dir, instance):
    return make_resources(app_db, workdir, datasets_dir)


@pytest.fixture(scope="module")
def trained(resources, instance):
    """Train once for the module (through the local SageMaker backend)."""
    result = dg.materialize(ALL, resources=resources, instance=instance,
                            selection=dg.AssetSelection.assets(credit.credit_training_data, credit.credit_model))
    assert result.success
    return result


def seed(app_db, frame):
    with app_db.connect() as conn:
        customer_store.load_customers(conn, frame, replace=True)


@pytest.fixture
def run_scoring(instance):
    """Materialise (the scoring batch by default) in the module's Dagster instance."""

    def run(resources, run_config=None, raise_on_error=True, selection=SCORING):
        return dg.materialize(ALL, resources=resources, selection=selection, run_config=run_config,
                              raise_on_error=raise_on_error, instance=instance)

    return run


def tamper(artifacts, batch_id: str, name: str, change) -> None:
    """Rewrite a batch file in place, keeping its batch and run stamps (a corrupted file, not another run's)."""
    key = batch_key(batch_id, name)
    table = artifacts.read_parquet_table(key)
    artifacts.write_parquet(key, change(table.to_pandas()), metadata=schema_metadata(table.schema))


SCORING_CHECKS = {"decisions_follow_policy", "each_eligible_customer_decided_once", "counts_reconcile"}
DRIFT_CHECKS = {"score_drift", "approval_rate_drift"}  # pass or fail with the data: see the drift test


def assert_checks_passed(result, expected=SCORING_CHECKS):
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    integrity = {name: passed for name, passed in evaluations.items() if name not in DRIFT_CHECKS}
    assert set(integrity) == set(expected) and all(integrity.values()), evaluations


def metadata(result, asset):
    events = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in events[-1].metadata.items()}


def skipped_rows(result, asset) -> dict[str, int]:
    """The skipped rows by reason, read back from the table the UI shows (and checked against the total)."""
    meta = metadata(result, asset)
    table = meta["skipped_reasons" if asset == "eligible_customers" else "skipped_unseen_values"]
    counts = {} if table == "none" else {
        cells[0]: int(cells[1]) for line in table.splitlines()[2:]
        if (cells := [c.strip() for c in line.strip("|").split("|")]) and len(cells) == 2}
    assert meta["skipped"] == sum(counts.values())
    return counts


def customers_table(app_db) -> pd.DataFrame:
    with app_db.connect() as conn:
        cur = conn.execute("SELECT * FROM customers ORDER BY customer_id")
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def audit_rows(app_db, batch_id=None) -> pd.DataFrame:
    with app_db.connect() as conn:
        customer_store.ensure_audit_table(conn)  # a test run on its own has not created it yet
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


def test_model_is_trained_and_versioned(trained, resources, run_scoring, datasets_dir):
    meta = metadata(trained, "credit_model")
    artifacts = resources["artifacts"]
    [version] = list_versions(artifacts, MODEL_PREFIX)
    assert meta["model_version"] == version
    manifest = artifacts.read_json(f"{MODEL_PREFIX}/{version}/manifest.json")
    assert set(manifest["files"]) == {"model.pt", "preprocessing.json", "scorecard.json", "metrics.json", "points.csv",
                                      "points.md", "model.tar.gz"}
    assert manifest["training_data"]["fingerprint"] == metadata(trained, "credit_training_data")["fingerprint"]
    if (datasets_dir / "credit" / "BankCaseStudyData.csv").exists():
        # the real bank data (benchmarks/scorecard_quality.py measures the scorecard against gradient boosting)
        assert metadata(trained, "credit_training_data")["rows"] == 24_859
        assert 0.88 < meta["validation_auc"] < 0.97
        # both are shown rounded to 4 decimals
        assert meta["validation_gini"] == pytest.approx(2 * meta["validation_auc"] - 1, abs=3e-4)
    else:
        assert meta["validation_auc"] > 0.85
    preprocessing = artifacts.read_json(f"{MODEL_PREFIX}/{version}/preprocessing.json")
    assert preprocessing["format"] == 2  # JSON, never pickle
    # the points per attribute, for people, are published with the version and linked from the asset
    points = artifacts.read_text(f"{MODEL_PREFIX}/{version}/points.md")
    assert all(f"## {name}" in points for name in preprocessing["categorical"])
    assert meta["points_table"].endswith("points.md")


def test_batch_scores_decides_writes_back_and_is_idempotent(trained, resources, run_scoring, app_db):
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
    # the write-back's page shows the decisions in numbers and links the reference's files
    assert (updates["approved"], updates["declined"]) == (evaluations["approved"], evaluations["declined"])
    assert updates["evaluations"] == str(artifacts.local_path(f"{batch_prefix(batch)}/evaluations.json"))
    assert updates["results"] == str(artifacts.local_path(f"{batch_prefix(batch)}/results.json"))
    assert all(isinstance(v, (int, str)) or v == round(v, 4) for v in updates.values() if not isinstance(v, bool))

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


def test_eligibility_filter_is_configurable(trained, resources, run_scoring, app_db):
    seed(app_db, population.customers(1_000, seed=8))
    before = customers_table(app_db)
    config = dg.RunConfig({"eligible_customers": credit.assets.EligibilityConfig(min_current_score=650,
                                                                                  max_current_limit=4_000)})
    result = run_scoring(resources, run_config=config)
    expected = before[(before.current_score >= 650) & (before.current_limit < 4_000)]
    assert metadata(result, "eligible_customers")["eligible"] == len(expected) > 0


def test_null_negative_limits_and_unknown_categories_are_skipped_and_counted(trained, resources, run_scoring, app_db):
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
    assert skipped_rows(result, "eligible_customers") == {"current_limit is NULL": 1, "current_limit is negative": 1}
    assert skipped_rows(result, "credit_scores") == {"unknown Residential_Status value": 1,
                                                            "unknown Cheque_Card_Flag value": 1}
    assert metadata(result, "customer_updates")["updated"] == 396
    table = customers_table(app_db).set_index("customer_id")
    first = frame.customer_id.iloc[0]
    assert table.loc[first:first + 3].limit_increase_decision.isna().all()
    assert table.loc[first + 4].limit_increase_decision in ("APPROVED", "DECLINED")
    assert_checks_passed(result)


def test_missing_table_or_column_is_named_and_nothing_is_written(trained, resources, run_scoring, app_db):
    artifacts = resources["artifacts"]
    seed(app_db, population.customers(50, seed=1))
    with app_db.connect(autocommit=True) as conn:
        conn.execute("ALTER TABLE customers DROP COLUMN bureau_score")
    batches = artifacts.list("credit/batches/")
    result = run_scoring(resources, raise_on_error=False)
    assert not result.success
    assert "table customers is missing column(s): bureau_score" in failure_message(result)
    assert artifacts.list("credit/batches/") == batches
    with app_db.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE customers")
    result = run_scoring(resources, raise_on_error=False)
    assert "table customers does not exist" in failure_message(result)


def test_unreachable_database(trained, resources, run_scoring):
    broken = {**resources, "readonly_db": ReadOnlyUrlDatabase(url="postgresql://ro:pw@127.0.0.1:1/bank?connect_timeout=2")}
    result = run_scoring(broken, raise_on_error=False)
    message = failure_message(result)
    assert "cannot connect to PostgreSQL postgresql://ro@127.0.0.1:1/bank" in message and ":pw@" not in message
    assert DatabaseUnavailableError.__name__ in message


def test_corrupt_and_missing_model_artifacts(trained, resources, run_scoring, app_db, workdir, datasets_dir):
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
    upto_scores = dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores)
    result = run_scoring(empty, selection=upto_scores, raise_on_error=False)
    assert "is missing or incomplete: no file://" in failure_message(result)
    # no model registered at all (another environment's registry)
    empty["registry"] = LocalModelRegistry(db=app_db, env="staging", version_policy="newest")
    result = run_scoring(empty, selection=upto_scores, raise_on_error=False)
    assert "no usable model in credit-staging-models" in failure_message(result)


def test_changed_customers_are_conflicts_not_overwritten(trained, resources, run_scoring, app_db):
    seed(app_db, population.customers(300, seed=3))
    upto_decisions = dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores, credit.limit_decisions)
    batch = metadata(run_scoring(resources, selection=upto_decisions), "limit_decisions")["batch_id"]
    decisions = resources["artifacts"].read_parquet(batch_key(batch, DECISIONS_FILE))
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


def test_a_failing_write_back_leaves_nothing_half_written(trained, resources, run_scoring, app_db):
    seed(app_db, population.customers(300, seed=4))
    upto_decisions = dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores, credit.limit_decisions)
    batch = metadata(run_scoring(resources, selection=upto_decisions), "limit_decisions")["batch_id"]
    artifacts = resources["artifacts"]
    decisions = artifacts.read_parquet(batch_key(batch, DECISIONS_FILE))
    # one customer twice: staging refuses it
    tamper(artifacts, batch, DECISIONS_FILE, lambda frame: pd.concat([frame, frame.tail(1)], ignore_index=True))
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
        customer_store.apply_decisions(conn, decisions, batch_id=batch, model_version=None, run_id=batch)
    assert customers_table(app_db).limit_increase_decision.isna().all()
    assert len(audit_rows(app_db)) == audit_before


def test_policy_check_blocks_the_write_back(trained, resources, run_scoring, app_db):
    seed(app_db, population.customers(300, seed=6))
    decided = run_scoring(resources, selection=dg.AssetSelection.assets(credit.eligible_customers,
                                                                         credit.credit_scores, credit.limit_decisions))
    artifacts = resources["artifacts"]

    def above_the_cap(frame):
        frame.loc[frame.index[0], "new_limit"] = 99_999
        return frame

    tamper(artifacts, metadata(decided, "limit_decisions")["batch_id"], DECISIONS_FILE, above_the_cap)
    result = run_scoring(
        resources, raise_on_error=False,
        selection=dg.AssetSelection.checks(credit.decisions_follow_policy) | dg.AssetSelection.assets(credit.customer_updates),
    )
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "decisions_follow_policy"]
    assert not check.passed and check.metadata["violations"].value == 1
    assert not result.asset_materializations_for_node("customer_updates")
    assert customers_table(app_db).limit_increase_decision.isna().all()


def test_scoring_uses_the_newest_approved_model_and_says_which(trained, resources, run_scoring, app_db):
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


def test_audit_trail_is_append_only(trained, resources, run_scoring, app_db):
    seed(app_db, population.customers(200, seed=7))
    run_scoring(resources)
    import psycopg

    with app_db.connect() as conn:
        for statement in ("UPDATE credit_limit_audit SET new_limit = 0", "DELETE FROM credit_limit_audit",
                          "TRUNCATE credit_limit_audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
            conn.rollback()


def test_counts_reconcile_detects_a_mismatch(trained, resources, run_scoring, app_db):
    seed(app_db, population.customers(200, seed=10))
    batch = metadata(run_scoring(resources), "customer_updates")["batch_id"]
    tamper(resources["artifacts"], batch, SCORES_FILE, lambda frame: frame.iloc[1:])
    result = run_scoring(resources, selection=dg.AssetSelection.checks(credit.counts_reconcile))
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert "eligible = scored + skipped at scoring" in check.metadata["broken"].value
    assert check.metadata["eligible"].value == check.metadata["scored"].value + 1  # numbers the UI plots


def test_a_batch_is_not_written_back_again_with_other_decisions(trained, resources, run_scoring, app_db):
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


# --- concurrent batches, mixed batches and hostile rows --------------------------------------------------


class RendezvousArtifactStore(LocalArtifactStore):
    """The local artifact store, holding each run right after it has written its eligible customers until
    the other run has too: both runs select their batch before either scores it, every time."""

    barrier: ClassVar[Any] = None  # a multiprocessing.Barrier, set in each scoring process

    def write_parquet(self, key, frame, metadata=None):
        uri = super().write_parquet(key, frame, metadata)
        if key.endswith("/eligible_customers.parquet") and self.barrier is not None:
            self.barrier.wait(timeout=120)
        return uri


def score_in_another_process(barrier, home: str, database: str, pg_dir: str, workdir: str, datasets_dir: str,
                             approve_min_score: int, results) -> None:
    """One `credit_scoring_job` run in a process of its own, as `dagster job execute` would start it."""
    from resources.postgres import EmbeddedPostgresDatabase

    RendezvousArtifactStore.barrier = barrier
    app_db = EmbeddedPostgresDatabase(data_dir=pg_dir, database=database)
    resources = make_resources(app_db, Path(workdir), Path(datasets_dir))
    resources["artifacts"] = RendezvousArtifactStore(root=str(Path(workdir) / "artifacts"))
    resources["sagemaker"] = LocalSageMakerJobs(artifacts=resources["artifacts"],
                                               work_dir=str(Path(workdir) / "sagemaker"))
    policy = dg.RunConfig({"limit_decisions": credit.assets.LimitPolicyConfig(approve_min_score=approve_min_score)})
    with dg.DagsterInstance.from_config(home) as instance:
        result = dg.materialize(ALL, resources=resources, selection=SCORING, run_config=policy, instance=instance,
                                raise_on_error=False)
        results.put({"approve_min_score": approve_min_score, "run_id": result.run_id, "success": result.success,
                     "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()},
                     "batch_id": metadata(result, "eligible_customers").get("batch_id") if result.success else None,
                     "updates": metadata(result, "customer_updates") if result.success else None})


def test_concurrent_scoring_runs_each_write_back_their_own_batch(trained, resources, app_db, workdir, datasets_dir,
                                                                tmp_path):
    """Two scoring runs outside any queue, one configured to decline everyone, both selecting the same
    undecided customers before either scores: each run writes back exactly its own decisions under its own
    batch, no customer is decided twice, and the checks of both runs hold."""
    import multiprocessing

    customers = population.customers(600, seed=21)
    eligible = int(((customers.current_score >= 600) & (customers.current_limit < 10_000)).sum())
    seed(app_db, customers)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)):
        pass  # the storages exist before both processes open them (creating them at once races in their migrations)
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    pg_dir = str(Path(app_db.data_dir))
    processes = [spawn.Process(target=score_in_another_process, args=(
        barrier, str(home), app_db.database, pg_dir, str(workdir), str(datasets_dir), threshold, results))
        for threshold in (10_000, 650)]  # 10,000: no score is that high, every customer is declined
    for process in processes:
        process.start()
    finished = {outcome["approve_min_score"]: outcome for outcome in (results.get(timeout=300) for _ in processes)}
    for process in processes:
        process.join(timeout=60)
    outcomes = [finished[10_000], finished[650]]  # in the order started, whichever finished first
    assert all(o["success"] for o in outcomes), outcomes
    integrity = [{k: v for k, v in o["checks"].items() if k not in DRIFT_CHECKS} for o in outcomes]
    assert all(set(checks) == SCORING_CHECKS and all(checks.values()) for checks in integrity), outcomes
    decline_all, default = outcomes
    assert decline_all["batch_id"] == decline_all["run_id"] and default["batch_id"] == default["run_id"]

    audit = audit_rows(app_db)
    audit = audit[audit.batch_id.astype(str).isin([decline_all["batch_id"], default["batch_id"]])]
    for outcome in outcomes:  # each run's audit rows: its own batch, as many as it says it updated
        own = audit[audit.dagster_run_id.astype(str) == outcome["run_id"]]
        assert (own.batch_id.astype(str) == outcome["batch_id"]).all()
        assert len(own) == outcome["updates"]["updated"]
        results_json = resources["artifacts"].read_json(f"{batch_prefix(outcome['batch_id'])}/results.json")
        assert results_json["dagster_run_id"] == outcome["run_id"]
        # and they are the decisions of its own policy: the decline-everyone run never wrote an approval
        policy = LimitPolicy(approve_min_score=outcome["approve_min_score"])
        assert policy_violations(own.rename(columns={"old_limit": "current_limit"}), policy).empty
    assert not audit.customer_id.duplicated().any()  # nobody decided twice
    # both batches selected the same customers; the write-backs took turns, and the later one found every
    # customer decided by the earlier one: conflicts, not overwrites
    assert len(audit) == eligible
    counts = sorted((o["updates"]["updated"], o["updates"]["conflicts"]) for o in outcomes)
    assert counts == [(0, eligible), (eligible, 0)]
    table = customers_table(app_db).set_index("customer_id")
    decided = audit.set_index("customer_id")
    assert (table.loc[decided.index].limit_increase_decision == decided.decision).all()


def test_the_checks_fail_when_a_run_wrote_back_another_batch(trained, resources, app_db, run_scoring):
    seed(app_db, population.customers(200, seed=22))
    result = run_scoring(resources)
    assert_checks_passed(result)
    updates = metadata(result, "customer_updates")
    row = audit_rows(app_db, updates["batch_id"]).iloc[0]
    with app_db.connect() as conn:  # an audit row under this run's id, but of another batch
        conn.execute(
            "INSERT INTO credit_limit_audit (batch_id, customer_id, old_score, new_score, old_limit, new_limit, "
            "decision, reason, model_version, dagster_run_id) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, "
            "'APPROVED', 'from another batch', %s, %s)",
            (int(row.customer_id), int(row.old_score), int(row.new_score), int(row.old_limit), int(row.new_limit),
             row.model_version, result.run_id))
        conn.commit()
    checked = run_scoring(resources, selection=dg.AssetSelection.checks(credit.each_eligible_customer_decided_once))
    [check] = checked.get_asset_check_evaluations()
    assert not check.passed
    assert check.metadata["run_audit_rows_of_another_batch"].value == 1
    assert check.metadata["write_back_run_id"].value == result.run_id


def test_the_write_back_refuses_a_decisions_file_another_run_rewrote(trained, resources, app_db, run_scoring):
    seed(app_db, population.customers(200, seed=23))
    upto_decisions = dg.AssetSelection.assets(credit.eligible_customers, credit.credit_scores, credit.limit_decisions)
    batch = metadata(run_scoring(resources, selection=upto_decisions), "limit_decisions")["batch_id"]
    artifacts = resources["artifacts"]
    key = batch_key(batch, DECISIONS_FILE)
    table = artifacts.read_parquet_table(key)
    artifacts.write_parquet(key, table, metadata={**schema_metadata(table.schema), "run_id": "another-run"})
    audit_before = len(audit_rows(app_db))
    result = run_scoring(resources, selection=dg.AssetSelection.assets(credit.customer_updates), raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "BatchMismatchError" in message and "by run 'another-run'" in message and batch in message
    assert len(audit_rows(app_db)) == audit_before
    assert customers_table(app_db).limit_increase_decision.isna().all()
    checked = run_scoring(resources, selection=dg.AssetSelection.checks(credit.decisions_follow_policy),
                          raise_on_error=False)
    [check] = checked.get_asset_check_evaluations()  # the check fails, naming the rewritten file
    assert not check.passed and "by run 'another-run'" in check.description


def test_hostile_customer_rows_are_skipped_with_their_reasons(trained, resources, app_db, run_scoring):
    frame = population.customers(300, seed=24)
    frame["current_score"], frame["current_limit"] = 700, 3_000
    seed(app_db, frame)
    first = int(frame.customer_id.iloc[0])
    hostile = {
        first: "application_score = NULL",
        first + 1: "loan_to_income = 'NaN'",
        first + 2: "loan_to_income = 'Infinity'",
        first + 3: "loan_to_income = '-Infinity'",
        first + 4: "loan_to_income = 1e12",
        first + 5: "gross_annual_income = 2147483647",
        first + 6: "current_score = 2147483647",
        first + 7: "bureau_score = -5",
        first + 8: "time_with_bank = NULL",
    }
    with app_db.connect() as conn:
        for customer, assignment in hostile.items():
            conn.execute(f"UPDATE customers SET {assignment} WHERE customer_id = %s", (customer,))
        # the data set's own "no income" code is a value the model knows, not a hostile one
        conn.execute("UPDATE customers SET loan_to_income = -9999997 WHERE customer_id = %s", (first + 9,))
        conn.commit()
    result = run_scoring(resources)
    assert skipped_rows(result, "eligible_customers") == {
        "application_score is missing": 1,
        "loan_to_income is missing": 1,
        "loan_to_income is infinite": 2,
        "loan_to_income outside [0, 100,000]": 1,
        "gross_annual_income outside [0, 100,000,000]": 1,
        "current_score outside [0, 2,000]": 1,
        "bureau_score outside [0, 2,000]": 1,
        "time_with_bank is missing": 1,
    }
    assert metadata(result, "customer_updates")["updated"] == 300 - len(hostile)
    table = customers_table(app_db).set_index("customer_id")
    assert table.loc[list(hostile)].limit_increase_decision.isna().all()
    assert table.loc[first + 9].limit_increase_decision in ("APPROVED", "DECLINED")
    batch = metadata(result, "customer_updates")["batch_id"]
    skipped = resources["artifacts"].read_parquet(f"{batch_prefix(batch)}/eligibility_skipped.parquet")
    assert sorted(skipped.customer_id) == sorted(hostile)
    assert_checks_passed(result)

    # the ranges are run config: a bank whose incomes run higher widens one
    seed(app_db, frame.assign(gross_annual_income=150_000_000))
    wider = dg.RunConfig({"eligible_customers": credit.assets.EligibilityConfig(
        plausible_ranges={"gross_annual_income": [0, 200_000_000]})})
    assert skipped_rows(run_scoring(resources, run_config=wider), "eligible_customers") == {}
    bad = dg.RunConfig({"eligible_customers": credit.assets.EligibilityConfig(plausible_ranges={"income": [0, 1]})})
    failed = run_scoring(resources, run_config=bad, raise_on_error=False)
    assert "plausible_ranges: unknown column 'income'" in failure_message(failed)


def training_like_customers(artifacts, version: str, n: int, first_id: int = 700_000) -> pd.DataFrame:
    """Customers drawn from the model's own training applications (those it scores 600 or above, the
    reference of the drift checks), all eligible for a review: a batch that has not drifted."""
    from credit_assets import drift as credit_drift

    reference = credit_drift.reference(artifacts, MODEL_PREFIX, version, 600)
    pointer = artifacts.read_json("credit/training_data/current.json")
    frame = pd.read_csv(io.BytesIO(artifacts.read_bytes(f"{pointer['prefix']}/applications.csv")), low_memory=False)
    rows = frame.loc[reference.features.index].sample(n=n, random_state=3).reset_index(drop=True)
    customers = pd.DataFrame({"customer_id": range(first_id, first_id + n), "application_date": "2026-11-01",
                              "current_score": 700, "current_limit": 5_000})
    for feature in (f for f in rows.columns if f.lower() in population.customers(1).columns):
        customers[feature.lower()] = rows[feature].to_numpy()
    return customers


def drift_checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.check_name in DRIFT_CHECKS}


def test_scoring_batches_are_checked_for_drift_against_the_training_data(trained, resources, run_scoring, app_db):
    artifacts = resources["artifacts"]
    version = metadata(trained, "credit_model")["model_version"]
    alike = training_like_customers(artifacts, version, 1_500)
    seed(app_db, alike)
    result = run_scoring(resources)
    assert_checks_passed(result)
    checks = drift_checks(result)
    assert set(checks) == DRIFT_CHECKS
    score = checks["score_drift"]
    values = {k: getattr(v, "value", v) for k, v in score.metadata.items()}
    # a batch drawn from the training applications has not drifted; every number is a number, so the UI plots it
    assert score.passed, score.description
    assert values["psi_score"] < 0.1 and values["psi_max_feature"] < 0.1
    assert all(isinstance(values[f"psi_{c}"], float) for c in ("application_score", "bureau_score", "residential_status"))
    approval = checks["approval_rate_drift"]
    assert approval.passed, approval.description
    assert abs(approval.metadata["approval_rate_difference"].value) < 0.1
    # the same numbers are the assets' materialisation metadata, which the UI plots batch after batch
    assert metadata(result, "credit_scores")["psi_score"] == values["psi_score"]
    assert metadata(result, "credit_scores")["psi_bureau_score"] == values["psi_bureau_score"]
    decided = metadata(result, "limit_decisions")
    assert decided["approval_rate_difference"] == approval.metadata["approval_rate_difference"].value
    assert 0 < decided["expected_approval_rate"] < 1

    # the same applications with bureau scores 150 points lower: the feature and the score drift, and the check
    # says which, with ERROR severity; fewer customers get approved than the validation promised
    drifted = alike.assign(customer_id=alike["customer_id"] + 10_000, bureau_score=alike["bureau_score"] - 150)
    seed(app_db, drifted)
    checks = drift_checks(run_scoring(resources))
    score = checks["score_drift"]
    assert not score.passed and score.severity == dg.AssetCheckSeverity.ERROR
    assert score.metadata["most_shifted_feature"].value == "Bureau_Score"
    assert score.metadata["psi_bureau_score"].value >= 0.25 and "Bureau_Score" in score.description
    assert score.metadata["psi_application_score"].value < 0.1  # the others did not move
    assert checks["approval_rate_drift"].metadata["approval_rate_difference"].value < 0

    # a handful of customers is too few to judge: the checks say so and pass
    seed(app_db, alike.head(10).assign(customer_id=alike["customer_id"].head(10) + 20_000))
    checks = drift_checks(run_scoring(resources))
    assert all(c.passed and c.description.startswith("not judged") for c in checks.values())
