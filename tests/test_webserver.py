"""`dagster dev` loads the code location; the asset graph is read and a materialisation launched through GraphQL."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import pandas as pd

from credit_assets import customer_store, population
from platform_cli.dagster_instance import prepare_dagster_home
from recsys_assets.session_events import make_events
from recsys_assets.stream_archive import hour_partition
from resources.stream import LocalEventStream
from resources.model_registry import LocalModelRegistry
from resources.embedded_postgres import stop_embedded_server
from resources.postgres import EmbeddedPostgresDatabase
from resources.settings import PROJECT_ROOT, PlatformSettings
from tests.conftest import free_port, graphql, stop_process_group

ASSET_GRAPH = "{ assetNodes { assetKey { path } dependencyKeys { path } groupName } }"
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = """query Status($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"""
JOB_RUNS = """
query JobRuns($job: String!) {
  runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId status tags { key value } } } }
}"""
CHECKS = """
query Checks($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { assetCheckSelection { name } } }
  assetNodes(assetKeys: [{path: ["customer_updates"]}]) {
    assetMaterializations(limit: 1) { runId metadataEntries { label ... on IntMetadataEntry { intValue } } }
  }
}"""


@pytest.fixture
def dagster_dev(tmp_path, datasets_dir):
    data_dir = tmp_path / "data"
    env = {**os.environ, "DATA_DIR": str(data_dir), "DATASETS_DIR": str(datasets_dir),
           "DAGSTER_HOME": str(tmp_path / "home")}
    for key in ("DATABASE_URL", "READONLY_DATABASE_URL", "READONLY_DATABASE_SECRET_ID", "ARTIFACTS_URI",
                "SAGEMAKER_BACKEND", "DAGSTER_PG_URL", "SOURCE_DATABASE_URL", "STREAM_BACKEND", "MODEL_REGISTRY_BACKEND",
                "MODEL_VERSION_POLICY", "NOTIFIER_BACKEND", "MLDP_ENV"):
        env.pop(key, None)
    prepare_dagster_home(PlatformSettings.from_env(env))
    (tmp_path / "home" / ".nux").mkdir(parents=True, exist_ok=True)  # a new user's "join the community" modal, seen
    (tmp_path / "home" / ".nux" / "nux.yaml").write_text("seen: 1\n")
    db = EmbeddedPostgresDatabase(data_dir=str(data_dir / "postgres"))
    with db.connect() as conn:
        customer_store.load_customers(conn, population.customers(500, seed=12), replace=True)
    port = free_port()
    log = open(tmp_path / "dagster-dev.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def log_tail() -> str:
        log.flush()
        return (tmp_path / "dagster-dev.log").read_text()[-4000:]

    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).read()
            if graphql(port, ASSET_GRAPH)["assetNodes"]:
                break
        except (OSError, AssertionError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"dagster dev did not come up:\n{log_tail()}")
        time.sleep(1)
    yield port, db, log_tail, data_dir
    stop_process_group(process)
    log.close()
    stop_embedded_server(data_dir / "postgres")


def launch_and_wait(port: int, job: str, log_tail, run_config: dict | None = None) -> str:
    launched = graphql(port, LAUNCH, {"params": {
        "selector": {"repositoryLocationName": "ml_data_platform", "repositoryName": "__repository__", "jobName": job},
        "runConfigData": run_config or {},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline:
        status = graphql(port, RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS", f"{job} run {run_id} ended {status}:\n{log_tail()}"
    return run_id


def approve_through_the_ui(port: int, registry: LocalModelRegistry, pipeline: str, log_tail) -> str:
    """Approve the newest version of a pipeline's group with `model_approval_job`; returns its model version."""
    package = registry.packages(registry.group_for(pipeline))[0]
    assert package.status == "PendingManualApproval"  # trained and registered, waiting for a person
    launch_and_wait(port, "model_approval_job", log_tail, {"ops": {"decide_model_package": {"config": {
        "group": package.group, "version": package.version, "decision": "approve", "reason": "reviewed in the UI"}}}})
    return package.model_version


def test_ui_trains_approves_and_the_sensors_put_models_to_work(dagster_dev, tmp_path):
    """The whole ML-ops loop under `dagster dev`: train -> registered (notified) -> approved in the UI
    (notified) -> the registry sensor starts the scoring batch / the embeddings reload -> streamed events
    become an hour of recommendations; training runs are synced; nobody launches those runs by hand."""
    port, db, log_tail, data_dir = dagster_dev
    nodes = {tuple(n["assetKey"]["path"]): n for n in graphql(port, ASSET_GRAPH)["assetNodes"]}
    assert {("credit_scores",), ("customer_updates",), ("bank_customers",), ("recommendations",), ("training_runs",),
            ("session_events",)} <= set(nodes)
    assert {tuple(d["path"]) for d in nodes[("credit_scores",)]["dependencyKeys"]} == {
        ("eligible_customers",), ("credit_model",), ("model_registry",)}
    assert nodes[("limit_decisions",)]["groupName"] == "credit"
    registry = LocalModelRegistry(db=db)

    launch_and_wait(port, "credit_training_job", log_tail)
    credit_version = approve_through_the_ui(port, registry, "credit", log_tail)
    [scoring_run] = wait_for_sensor_run(port, "credit_scoring_job", log_tail, model_version=credit_version)
    data = graphql(port, CHECKS, {"runId": scoring_run})
    [materialization] = data["assetNodes"][0]["assetMaterializations"]
    updated = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}["updated"]
    with db.connect() as conn:
        audited = conn.execute("SELECT count(*), min(model_version), max(model_version) FROM credit_limit_audit "
                               "WHERE dagster_run_id = %s::uuid", (scoring_run,)).fetchone()
    assert updated == audited[0] > 0 and audited[1] == audited[2] == credit_version

    launch_and_wait(port, "recsys_training_job", log_tail)
    recsys_version = approve_through_the_ui(port, registry, "recsys", log_tail)
    wait_for_sensor_run(port, "embeddings_load_job", log_tail, model_version=recsys_version)
    with db.connect() as conn:
        loaded = conn.execute("SELECT version, rows FROM embedding_versions WHERE logical_table = 'item_emb' "
                              "AND status = 'active'").fetchone()
    assert loaded is not None and loaded[0] == recsys_version and loaded[1] > 0
    # the scoring batch's checks: a drift check that failed (generated customers against the bank's real
    # applications do drift) is told once, by check_failure_alert_sensor, with the run's link
    failed = failed_checks(Path(data_dir).parent / "home", scoring_run)
    if failed:
        [alert] = wait_for_alerts(data_dir, scoring_run, log_tail)
        assert alert["subject"] == f"[mldp dev] {len(failed)} check(s) failed: credit_scoring_job"
        assert f"http://127.0.0.1:3000/runs/{scoring_run}" in alert["message"]
        assert all(f"Check {name} on" in alert["message"] for name in failed)

    stream = LocalEventStream(root=str(Path(data_dir) / "stream" / "session-events"))
    with db.connect() as conn:
        codes = [row[0] for row in conn.execute("SELECT id FROM item_emb ORDER BY id").fetchall()]
    customers = pd.DataFrame({"customernumber": [103, 112], "city": ["Nantes", "Las Vegas"],
                              "country": ["France", "USA"], "creditlimit": [21000.0, 71800.0]})
    stream.put(make_events(codes, customers, 40, seed=5))
    hours = sorted({hour_partition(record.arrival) for record in stream.read({}, max_records=1_000)[0]})
    for hour in hours:  # the events' hour (or two, at an hour's turn): each one's own run
        wait_for_sensor_run(port, "recommendations_job", log_tail, sensor="session_events_sensor",
                            **{"dagster/partition": hour})
    output = Path(data_dir) / "artifacts" / "recommendations"
    deadline = time.monotonic() + 120
    while sum(len(p.read_text().splitlines()) for p in output.rglob("*.jsonl")) != 40 and time.monotonic() < deadline:
        time.sleep(2)  # a tick that archived part of the events has a later run of the same hour on its way
    assert sum(len(p.read_text().splitlines()) for p in output.rglob("*.jsonl")) == 40

    wait_for_tracked(db, {f"credit-model-{credit_version}", f"recsys-model-{recsys_version}"}, log_tail)

    # by now every alert sensor has ticked again since the scoring batch's alert: nothing was told twice
    sent = [json.loads(line) for line in (Path(data_dir) / "notifications.jsonl").read_text().splitlines()]
    assert [m["subject"] for m in sent if m["subject"].startswith("[SageMaker]")] == [
        "[SageMaker] New Model Registered in credit-dev-models",
        "[SageMaker] New Model Approved in credit-dev-models",
        "[SageMaker] New Model Registered in recsys-dev-models",
        "[SageMaker] New Model Approved in recsys-dev-models"]
    told = [run_of(m) for m in sent if m["subject"].startswith("[mldp dev]") and run_of(m)]
    assert len(told) == len(set(told)) and (scoring_run in told) == bool(failed)  # at most one message per run

    # what a new user sees in the browser, and a second scoring batch launched by clicking
    with db.connect() as conn:
        customer_store.load_customers(conn, population.customers(500, seed=13, first_id=100_000))
    tour_the_ui(port, tmp_path, log_tail)


def wait_for_sensor_run(port: int, job: str, log_tail, sensor: str | None = None, **tags: str) -> list[str]:
    """Wait until a sensor (`sensor`, if named) has started a run of `job` carrying every tag in `tags` (this
    version, this partition) and that run succeeded; returns the ids of those runs. Runs for something else
    (an earlier version, another hour) neither satisfy nor fail the wait."""
    deadline = time.monotonic() + 240
    matching = []
    while time.monotonic() < deadline:
        runs = graphql(port, JOB_RUNS, {"job": job})["runsOrError"]["results"]
        matching = [r for r in runs if tags.items() <= {t["key"]: t["value"] for t in r["tags"]}.items()]
        if any(r["status"] == "SUCCESS" for r in matching):
            for run in matching:
                by = {t["key"]: t["value"] for t in run["tags"]}.get("dagster/sensor_name")
                assert by is not None and (sensor is None or by == sensor), run
            return [r["runId"] for r in matching if r["status"] == "SUCCESS"]
        if any(r["status"] == "FAILURE" for r in matching):
            break
        time.sleep(3)
    pytest.fail(f"no successful sensor-triggered {job} run with tags {tags} "
                f"({[r['status'] for r in matching]}):\n{log_tail()}")


# What Dagster's UI shows when something is wrong (its production build has no test ids)
UI_ERRORS = re.compile(r"Unexpected GraphQL error|can't be displayed|Application error: a client-side exception"
                       r"|Error loading|An unexpected error|Python error|Code location error|loaded with errors", re.I)
GRAPH_NODES = {"credit": ("bank_customers", "credit_model", "credit_scores", "customer_updates"),
               "mlops": ("model_registry", "training_runs"),
               "recsys": ("recsys_model", "item_embeddings", "user_embeddings"),
               "streaming": ("session_events", "recommendations")}
AUTOMATION = ("credit_scoring_schedule", "credit_retraining_schedule", "recsys_retraining_schedule",
              "model_registry_sensor", "session_events_sensor", "training_runs_automation_sensor", "run_failure_alert_sensor",
              "check_failure_alert_sensor", "freshness_alert_sensor")
SCREENSHOTS = os.environ.get("UI_SCREENSHOTS")  # a folder to keep the tour's screenshots in (default: the test's)


def ui_errors(page) -> list[str]:
    """Error toasts, error boxes and error texts visible on the page."""
    found = page.locator("[data-sonner-toast]").filter(has_text=UI_ERRORS).filter(visible=True).all_inner_texts()
    found += page.locator('[class*="PythonErrorInfo_wrapper"]').filter(visible=True).all_inner_texts()
    found += page.get_by_text(UI_ERRORS).filter(visible=True).all_inner_texts()
    return [" ".join(text.split())[:200] for text in found]


def graph_node(page, name: str):
    """A node of the drawn graph, by the name it shows (zoomed out, nodes have no tooltip)."""
    return page.locator("foreignObject").get_by_text(name, exact=True).first


def tour_the_ui(port: int, tmp_path: Path, log_tail) -> None:
    """In Chromium, as a new user: the asset graph, a job launched by clicking (a second scoring batch), the
    drift numbers plotted on the asset's page, its checks, and the automation page; no error anywhere."""
    from tests.browser_support import ErrorCollector, browser_page, save_screenshot

    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path / "screenshots"
    with browser_page(base_url=f"http://127.0.0.1:{port}", failure_screenshot=shots / "failure.png") as page:
        errors = ErrorCollector(page)
        page.goto("/asset-groups")  # the global lineage: one node per group, linked
        for group in GRAPH_NODES:
            graph_node(page, group).wait_for()
        save_screenshot(page, shots / "asset-graph.png", full_page=False)
        for group, keys in GRAPH_NODES.items():  # each group's own graph, every asset drawn
            page.goto(f"/locations/ml_data_platform/asset-groups/{group}")
            for key in keys:
                graph_node(page, key).wait_for()
            assert ui_errors(page) == [], ui_errors(page)
            save_screenshot(page, shots / f"group-{group}.png", full_page=False)

        page.goto("/locations/ml_data_platform/jobs/credit_scoring_job")
        page.get_by_role("button", name="Materialize all").click()
        toast = page.locator("[data-sonner-toast]").filter(has_text="Launched run")
        toast.get_by_role("link", name="View", exact=True).click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        run_id = page.url.split("/runs/")[1].split("?")[0]
        status = page.locator(".BaseTag").filter(has_text=re.compile(r"^(Success|Failure|Canceled)$")).first
        status.wait_for(timeout=300_000)
        assert status.inner_text() == "Success", f"run {run_id} clicked in the UI ended {status.inner_text()}:\n{log_tail()}"
        save_screenshot(page, shots / "run.png", full_page=False)

        page.goto("/assets/credit_scores")
        page.get_by_role("button", name=re.compile(r"\bPlots$")).click()
        for plotted in ("psi_score", "psi_max_feature", "scored"):
            page.get_by_text(plotted, exact=True).wait_for()
        assert page.locator("canvas[role=img]").count() >= 3
        page.get_by_text("psi_score", exact=True).scroll_into_view_if_needed()
        save_screenshot(page, shots / "credit-scores-plots.png", full_page=False)
        page.goto("/assets/credit_scores?view=checks")
        page.get_by_text("score_drift", exact=True).first.wait_for()

        page.goto("/automation")
        for name in AUTOMATION:
            page.get_by_text(name, exact=True).first.wait_for()
        save_screenshot(page, shots / "automation.png", full_page=False)
        assert ui_errors(page) == [], ui_errors(page)
        errors.assert_none()


def failed_checks(home: Path, run_id: str) -> list[str]:
    """The names of the asset checks of `run_id` that did not pass."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        return sorted(e.dagster_event.event_specific_data.check_name for e in entries
                      if not e.dagster_event.event_specific_data.passed)


def run_of(message: dict) -> str | None:
    """The run an alert is about (None for one about an asset, a freshness alert)."""
    found = re.search(r"^Run: (\S+)", message["message"], re.M)
    return found.group(1) if found else None


def wait_for_alerts(data_dir, run_id: str, log_tail) -> list[dict]:
    """The alerts about `run_id`, once an alert sensor has sent one (they tick every 30 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = (Path(data_dir) / "notifications.jsonl").read_text().splitlines()
        alerts = [m for m in map(json.loads, lines) if m["subject"].startswith("[mldp ") and run_of(m) == run_id]
        if alerts:
            return alerts
        time.sleep(2)
    pytest.fail(f"no alert about run {run_id}:\n{log_tail()}")


def wait_for_tracked(db: EmbeddedPostgresDatabase, job_names: set[str], log_tail) -> None:
    """Wait until the tracking sync has recorded every one of `job_names` (the sensor may sync them in one run
    or in several, a tick apart)."""
    deadline = time.monotonic() + 240
    tracked: set[str] = set()
    while time.monotonic() < deadline:
        with db.connect() as conn:
            if conn.execute("SELECT to_regclass('tracking_runs') IS NOT NULL").fetchone()[0]:
                tracked = {row[0] for row in conn.execute("SELECT job_name FROM tracking_runs").fetchall()}
        if job_names <= tracked:
            return
        time.sleep(3)
    pytest.fail(f"training jobs {sorted(job_names - tracked)} were not tracked:\n{log_tail()}")
