"""The code location loads and its asset graph is the intended lineage."""

import dagster as dg

EXPECTED_EDGES = {
    "credit_model": {"credit_training_data"},
    "eligible_customers": {"bank_customers"},
    "credit_scores": {"eligible_customers", "credit_model", "model_registry"},
    "limit_decisions": {"credit_scores"},
    "customer_updates": {"limit_decisions"},
}
RECSYS_EDGES = {
    "ratings_training_data": {"classicmodels/ratings", "classicmodels/customers", "classicmodels/products"},
    "recsys_catalog": {"classicmodels/customers", "classicmodels/products"},
    "recsys_model": {"ratings_training_data", "recsys_catalog"},
    "item_embeddings": {"recsys_model", "model_registry"},
    "user_embeddings": {"recsys_model", "model_registry"},
}


def selected(defs, job: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}


def load_defs():
    import definitions

    return definitions.defs


def test_definitions_load_and_validate():
    defs = load_defs()
    dg.Definitions.validate_loadable(defs)
    assert set(defs.resources) >= {"app_db", "readonly_db", "artifacts", "sagemaker", "datasets", "source_db",
                                   "pgvector", "events", "registry", "notifier", "tracking"}


def test_credit_lineage():
    graph = load_defs().resolve_asset_graph()
    for asset, parents in EXPECTED_EDGES.items():
        node = graph.get(dg.AssetKey(asset))
        assert {p.to_user_string() for p in node.parent_keys} == parents, asset
    customers = graph.get(dg.AssetKey("bank_customers"))
    assert not customers.is_materializable  # the bank's table is an external source
    for asset in EXPECTED_EDGES:
        assert graph.get(dg.AssetKey(asset)).group_name == "credit"


def test_recsys_lineage_and_sensor():
    defs = load_defs()
    graph = defs.resolve_asset_graph()
    for asset, parents in RECSYS_EDGES.items():
        node = graph.get(dg.AssetKey(asset))
        assert {p.to_user_string() for p in node.parent_keys} == parents, asset
        assert node.group_name == "recsys"
    sensor = defs.resolve_sensor_def("model_artifacts_sensor")
    assert sensor.job_name == "embeddings_load_job"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert selected(defs, "recsys_training_job") == {"ratings_training_data", "recsys_catalog", "recsys_model"}
    assert selected(defs, "embeddings_load_job") == {"item_embeddings", "user_embeddings"}
    assert selected(defs, "recsys_pipeline_job") == set(RECSYS_EDGES)


def test_streaming_asset_sensor_and_partitions():
    defs = load_defs()
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("recommendations"))
    assert {p.to_user_string() for p in node.parent_keys} == {"session_events", "item_embeddings", "user_embeddings"}
    # an hour with events is a partition (the sensor adds it): no empty hours before the stream starts
    assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition)
    assert node.partitions_def.name == "session_hours"
    assert {key.name for key in graph.asset_check_keys if key.asset_key == dg.AssetKey("recommendations")} == {
        "events_reconcile", "recommendations_drift"}
    assert graph.get(dg.AssetKey("session_events")).partitions_def == node.partitions_def
    sensor = defs.resolve_sensor_def("session_events_sensor")
    assert sensor.job_name == "recommendations_job"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_jobs_and_checks():
    defs = load_defs()
    assert selected(defs, "credit_training_job") == {"credit_training_data", "credit_model"}
    assert selected(defs, "credit_pipeline_job") == set(EXPECTED_EDGES) | {"credit_training_data"}
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert checks >= {"decisions_follow_policy", "each_eligible_customer_decided_once", "counts_reconcile"}
    assert selected(defs, "credit_scoring_job") == {
        "eligible_customers", "credit_scores", "limit_decisions", "customer_updates"}


def test_mlops_assets_jobs_and_sensors():
    defs = load_defs()
    graph = defs.resolve_asset_graph()
    registry = graph.get(dg.AssetKey("model_registry"))
    assert not registry.is_materializable and registry.group_name == "mlops"
    # the registry sits between the models and what uses them
    assert {p.to_user_string() for p in registry.parent_keys} == {"credit_model", "recsys_model"}
    assert {c.to_user_string() for c in registry.child_keys} == {"credit_scores", "item_embeddings", "user_embeddings"}
    assert graph.get(dg.AssetKey("training_runs")).group_name == "mlops"
    assert selected(defs, "training_runs_job") == {"training_runs"}
    approvals = defs.resolve_sensor_def("model_registry_sensor")
    assert {job.name for job in approvals.jobs} == {"credit_scoring_job", "embeddings_load_job"}
    assert approvals.default_status == dg.DefaultSensorStatus.RUNNING
    tracking = defs.resolve_sensor_def("training_jobs_sensor")
    assert tracking.job_name == "training_runs_job"
    for job in ("model_approval_job", "credit_sagemaker_pipeline_job"):
        assert defs.resolve_job_def(job) is not None


def test_every_job_sensor_and_schedule_says_what_it_does():
    repository = load_defs().get_repository_def()
    for definition in [*repository.get_all_jobs(), *repository.sensor_defs, *repository.schedule_defs]:
        if definition.name.startswith("__"):  # Dagster's own implicit asset job
            continue
        assert definition.description and len(definition.description) > 30, definition.name


def test_schedules_follow_the_settings(monkeypatch):
    import importlib

    import credit_assets.schedules
    import recsys_assets.schedules

    monkeypatch.setenv("CREDIT_SCORING_CRON", "30 5 * * 1-5")
    monkeypatch.setenv("RECSYS_RETRAINING_CRON", "0 1 1 * *")
    monkeypatch.setenv("SCHEDULE_TIMEZONE", "Europe/Berlin")
    try:
        scoring = importlib.reload(credit_assets.schedules).credit_scoring_schedule
        retraining = importlib.reload(recsys_assets.schedules).recsys_retraining_schedule
        assert (scoring.cron_schedule, scoring.execution_timezone) == ("30 5 * * 1-5", "Europe/Berlin")
        assert scoring.default_status == dg.DefaultScheduleStatus.RUNNING
        assert (retraining.cron_schedule, retraining.execution_timezone) == ("0 1 1 * *", "Europe/Berlin")
        assert retraining.default_status == dg.DefaultScheduleStatus.STOPPED  # retraining is off until started
    finally:
        monkeypatch.undo()
        importlib.reload(credit_assets.schedules)
        importlib.reload(recsys_assets.schedules)


def test_what_people_rely_on_has_a_freshness_policy():
    from datetime import timedelta

    graph = load_defs().resolve_asset_graph()
    policies = {node.key.to_user_string(): node.freshness_policy for node in graph.asset_nodes if node.freshness_policy}
    assert set(policies) == {"recommendations", "item_embeddings", "user_embeddings", "credit_model", "recsys_model",
                             "training_runs"}
    assert policies["recommendations"].fail_window.to_timedelta() == timedelta(hours=2)
    assert policies["item_embeddings"].fail_window.to_timedelta() == timedelta(days=8)
    assert policies["item_embeddings"].warn_window.to_timedelta() == timedelta(days=7)


def test_the_tracking_sync_also_sweeps_every_night():
    """training_runs follows the clock by declarative automation: one full sync a night, none in between."""
    from datetime import datetime, timezone

    from dagster._core.test_utils import freeze_time

    defs = load_defs()
    automation = defs.resolve_sensor_def("training_runs_automation_sensor")
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    instance = dg.DagsterInstance.ephemeral()
    cursor, requested = None, []
    for moment in ("2026-11-26T00:30", "2026-11-26T01:00:30", "2026-11-26T01:05", "2026-11-26T13:00",
                   "2026-11-27T01:00:30"):
        with freeze_time(datetime.fromisoformat(moment).replace(tzinfo=timezone.utc)):
            evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor = evaluation.cursor
            if evaluation.get_num_requested(dg.AssetKey("training_runs")):
                requested.append(moment)
                instance.report_runless_asset_event(dg.AssetMaterialization("training_runs"))
            assert evaluation.total_requested == evaluation.get_num_requested(dg.AssetKey("training_runs"))
    assert requested == ["2026-11-26T01:00:30", "2026-11-27T01:00:30"]


def test_the_drift_checks_are_the_monitoring_ones():
    from resources.drift import MONITORING_CHECKS

    checks = {key.name for key in load_defs().resolve_asset_graph().asset_check_keys}
    assert MONITORING_CHECKS <= checks  # a renamed check would fail the demo on a drift finding
