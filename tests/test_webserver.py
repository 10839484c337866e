"""`dagster dev` loads the code location; the asset graph is read and a materialisation launched through GraphQL."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import pandas as pd

from credit_assets import customer_store, population
from recsys_assets.session_events import make_events
from recsys_assets.streaming import hour_partition
from resources.stream import LocalEventStream
from resources.dagster_instance import prepare_dagster_home
from resources.model_registry import LocalModelRegistry
from resources.postgres import EmbeddedPostgresDatabase, stop_embedded_server
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


def test_ui_trains_approves_and_the_sensors_put_models_to_work(dagster_dev):
    """The whole ML-ops loop under `dagster dev`: train -> registered (notified) -> approved in the UI
    (notified) -> the registry sensor starts the scoring batch / the embeddings reload -> streamed events
    become an hour of recommendations; training runs are synced; nobody launches those runs by hand."""
    port, db, log_tail, data_dir = dagster_dev
    nodes = {tuple(n["assetKey"]["path"]): n for n in graphql(port, ASSET_GRAPH)["assetNodes"]}
    assert {("credit_scores",), ("customer_updates",), ("customers",), ("recommendations",), ("training_runs",)} <= set(nodes)
    assert {tuple(d["path"]) for d in nodes[("credit_scores",)]["dependencyKeys"]} == {
        ("eligible_customers",), ("credit_model",)}
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
    subjects = [json.loads(line)["subject"] for line in (Path(data_dir) / "notifications.jsonl").read_text().splitlines()]
    assert subjects == ["[SageMaker] New Model Registered in credit-dev-models",
                        "[SageMaker] New Model Approved in credit-dev-models",
                        "[SageMaker] New Model Registered in recsys-dev-models",
                        "[SageMaker] New Model Approved in recsys-dev-models"]

    stream = LocalEventStream(root=str(Path(data_dir) / "stream" / "session-events"))
    with db.connect() as conn:
        codes = [row[0] for row in conn.execute("SELECT id FROM item_emb ORDER BY id").fetchall()]
    customers = pd.DataFrame({"customernumber": [103, 112], "city": ["Nantes", "Las Vegas"],
                              "country": ["France", "USA"], "creditlimit": [21000.0, 71800.0]})
    stream.put(make_events(codes, customers, 40, seed=5))
    hours = sorted({hour_partition(record.arrival) for record in stream.read({}, max_records=1_000)[0]})
    for hour in hours:  # the events' hour (or two, at an hour's turn): each one's own run
        wait_for_sensor_run(port, "recommendations_job", log_tail, **{"dagster/partition": hour})
    output = Path(data_dir) / "artifacts" / "recommendations"
    deadline = time.monotonic() + 120
    while sum(len(p.read_text().splitlines()) for p in output.rglob("*.jsonl")) != 40 and time.monotonic() < deadline:
        time.sleep(2)  # a tick that archived part of the events has a later run of the same hour on its way
    assert sum(len(p.read_text().splitlines()) for p in output.rglob("*.jsonl")) == 40

    wait_for_tracked(db, {f"credit-model-{credit_version}", f"recsys-model-{recsys_version}"}, log_tail)


def wait_for_sensor_run(port: int, job: str, log_tail, **tags: str) -> list[str]:
    """Wait until a sensor has started a run of `job` carrying every tag in `tags` (this version, this
    partition) and that run succeeded; returns the ids of those runs. Runs of the job for something else
    (an earlier version, another hour) neither satisfy nor fail the wait."""
    deadline = time.monotonic() + 240
    matching = []
    while time.monotonic() < deadline:
        runs = graphql(port, JOB_RUNS, {"job": job})["runsOrError"]["results"]
        matching = [r for r in runs if tags.items() <= {t["key"]: t["value"] for t in r["tags"]}.items()]
        if any(r["status"] == "SUCCESS" for r in matching):
            assert all(any(t["key"] == "dagster/sensor_name" for t in r["tags"]) for r in matching)
            return [r["runId"] for r in matching if r["status"] == "SUCCESS"]
        if any(r["status"] == "FAILURE" for r in matching):
            break
        time.sleep(3)
    pytest.fail(f"no successful sensor-triggered {job} run with tags {tags} "
                f"({[r['status'] for r in matching]}):\n{log_tail()}")


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
