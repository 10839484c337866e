"""The README's first command: `mldp demo` on a fresh data folder, and again (re-running is safe)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resources.embedded_postgres import stop_embedded_server
from tests.conftest import free_port, graphql, stop_process_group


def mldp(*args, env):
    return subprocess.run([str(Path(sys.executable).with_name("mldp")), *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def env(tmp_path, datasets_dir):
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATABASE_URL", "READONLY_DATABASE_URL", "READONLY_DATABASE_SECRET_ID", "ARTIFACTS_URI", "SAGEMAKER_BACKEND",
        "DAGSTER_HOME", "DAGSTER_PG_URL")}
    env.update({"DATA_DIR": str(tmp_path / "data"), "DATASETS_DIR": str(datasets_dir)})
    yield env
    stop_embedded_server(tmp_path / "data" / "postgres")


def test_demo_runs_the_credit_pipeline_and_can_be_rerun(env, tmp_path):
    first = mldp("demo", "--customers", "800", "--events", "120", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "loaded 800 demo customers" in first.stdout
    assert re.search(r"registered as \S+credit-dev-models/1 \(PendingManualApproval\)", first.stdout)
    assert "notification: [SageMaker] New Model Registered in credit-dev-models" in first.stdout
    assert "approved credit-dev-models version 1" in first.stdout
    assert "notification: [SageMaker] New Model Approved in recsys-dev-models" in first.stdout
    assert "the approval requested embeddings_load_job" in first.stdout
    assert "item_emb 110 rows" in first.stdout
    assert "produced 120 session events" in first.stdout
    streamed = re.search(r"(\d+) events, (\d+) enriched \(\d+ partly\), (\d+) dead-lettered; events_reconcile passed",
                         first.stdout)
    assert streamed and int(streamed.group(1)) == 120 == int(streamed.group(2)) + int(streamed.group(3))
    assert "2 training run(s) recorded" in first.stdout
    checks = re.search(r"checks: (.*)", first.stdout).group(1)
    assert "decisions_follow_policy passed" in checks and "counts_reconcile passed" in checks
    # a drift finding is reported and the demo goes on (generated customers against the real bank data drift)
    assert re.search(r"score_drift (passed|found drift)", checks) and "FAILED" not in checks
    results_uri = re.search(r"batch results\s+(file://\S+)", first.stdout).group(1)
    results = json.loads(Path(results_uri[len("file://"):]).read_text())
    assert results["updated"] > 0 and results["status"] == "Succeeded"
    assert (tmp_path / "data" / "dagster_home" / "dagster.yaml").exists()
    # the run is recorded in the persistent instance the UI reads
    assert list((tmp_path / "data" / "dagster_home").rglob("*.db"))

    second = mldp("demo", "--workflow", "credit", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "using the 800 customers already in the table" in second.stdout
    assert "no customer was eligible" in second.stdout

    status = mldp("services", "status", env=env)
    assert "embedded PostgreSQL: stopped" in status.stdout  # the demo's exit stopped the server it started
    the_ui_carries_on_from_the_demo(env, tmp_path)
    check = mldp("readonly-check", env=env)
    assert check.returncode == 0 and "user mldp_readonly" in check.stdout
    psql = mldp("psql", "-At", "-c", "select count(*) from credit_limit_audit", env=env)
    assert int(psql.stdout.strip()) == results["updated"]
    produced = mldp("produce-events", "--count", "25", "--broken-fraction", "0.2", "--seed", "3", env=env)
    assert produced.returncode == 0 and "25 events sent" in produced.stdout
    registry = mldp("registry", "list", env=env)
    assert registry.returncode == 0, registry.stderr
    assert re.search(r"credit-dev-models: 2 version\(s\)", registry.stdout)
    assert re.search(r"recsys-dev-models: 1 version\(s\)\n\s+1\s+Approved", registry.stdout)
    rejected = mldp("registry", "reject", "credit-dev-models", "2", "--reason", "no eligible customers", env=env)
    assert rejected.returncode == 0 and "credit-dev-models/2: Rejected (no eligible customers)" in rejected.stdout
    loaded = mldp("embeddings", "list", env=env)
    assert loaded.returncode == 0 and re.search(r"item_emb: 1 version\(s\)\n\s+\S+\s+active\s+110 rows", loaded.stdout)
    nothing_before = mldp("embeddings", "rollback", env=env)
    assert nothing_before.returncode == 1 and "no previous version to roll back to" in nothing_before.stderr
    runs = mldp("training-runs", env=env)
    assert runs.returncode == 0 and "3 training run(s) recorded" in runs.stdout, runs.stdout + runs.stderr  # credit twice
    assert re.search(r"^  credit-model-\S+  Completed .* project credit-limit-increase", runs.stdout, re.M)
    assert re.search(r"^  recsys-model-\S+  Completed .* model two-tower-recommender \[torch-two-tower\]", runs.stdout, re.M)


SENSORS = ("model_registry_sensor", "model_artifacts_sensor", "session_events_sensor", "training_jobs_sensor",
           "run_failure_alert_sensor", "check_failure_alert_sensor", "freshness_alert_sensor")
DEV_VIEW = """
query View($sensor: String!, $job: String!) {
  sensorOrError(sensorSelector: {repositoryLocationName: "ml_data_platform", repositoryName: "__repository__",
                                 sensorName: $sensor}) {
    ... on Sensor { sensorState { ticks(limit: 3) { status timestamp runIds skipReason } } }
  }
  pipelineOrError(params: {repositoryLocationName: "ml_data_platform", repositoryName: "__repository__",
                           pipelineName: $job}) { ... on Pipeline { runs { runId } } }
}"""


def notifications(env) -> list[str]:
    return (Path(env["DATA_DIR"]) / "notifications.jsonl").read_text().splitlines()


def ctrl_c(process: subprocess.Popen) -> int | None:
    """Ctrl-C in the terminal: SIGINT to the foreground process group. The exit code, or None (then killed)."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        stop_process_group(process)
        return None


def processes_for(port: int) -> list[tuple[str, bytes]]:
    """(command line, environment) of each process still started for this port (dagster dev, its webserver)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            if str(port).encode() in args:
                found.append((b" ".join(args).decode(errors="replace"), (cmdline.parent / "environ").read_bytes()))
        except OSError:
            continue
    return found


def serving(port: int) -> list[str]:
    return [command for command, _environ in processes_for(port)]


def assert_stopped_cleanly(code: int | None, log: Path, port: int) -> None:
    output = log.read_text()
    assert code == 0, output[-4000:]
    assert "Traceback" not in output and "Error" not in output.split("stopping Dagster")[-1], output[-4000:]
    deadline = time.monotonic() + 30  # dagster dev's children exit on their own heartbeat
    while serving(port) and time.monotonic() < deadline:
        time.sleep(1)
    assert not serving(port)


def stop_by(process: subprocess.Popen, how: str) -> int | None:
    """Stop `mldp dev` the way a person or a machine does: Ctrl-C in its terminal, `kill`, or the terminal closed."""
    if how == "ctrl-c":
        return ctrl_c(process)
    process.send_signal(signal.SIGTERM if how == "kill" else signal.SIGHUP)  # to mldp alone, not its group
    try:
        return process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        stop_process_group(process)
        return None


@pytest.mark.parametrize("how", ["ctrl-c", "kill", "hangup"])
def test_mldp_dev_stops_while_it_starts_without_a_traceback_or_a_leftover(env, tmp_path, how):
    """Stopped while the code location is still loading (Dagster's children used to print a traceback each
    on Ctrl-C; `kill` or a closed terminal used to leave Dagster running on its port)."""
    port = free_port()
    log_path = tmp_path / "mldp-dev.log"
    with open(log_path, "w") as log:
        dev = subprocess.Popen([str(Path(sys.executable).with_name("mldp")), "dev", "-h", "127.0.0.1", "-p", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while "Launching Dagster services" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        launched = [environ for _command, environ in processes_for(port)]
        code = stop_by(dev, how)
    # the alerts' links point at this UI: dagster dev got DAGSTER_UI_URL for its port
    assert any(f"DAGSTER_UI_URL=http://127.0.0.1:{port}".encode() in environ for environ in launched)
    assert "Launching Dagster services" in log_path.read_text()
    assert_stopped_cleanly(code, log_path, port)


def the_ui_carries_on_from_the_demo(env, tmp_path):
    """`mldp dev` after the demo: the demo's runs are on their jobs in the UI, and the daemon's first tick of
    every sensor finds nothing new: no notification sent again, no run started again, no event archived
    again (each sensor ticks once its interval since the demo's last tick has passed)."""
    import dagster as dg

    home = Path(env["DATA_DIR"]) / "dagster_home"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        demo_runs = {run.run_id: run.job_name for run in instance.get_runs()}
    sent = notifications(env)
    port = free_port()
    started = time.time()
    log = open(tmp_path / "mldp-dev.log", "w")
    dev = subprocess.Popen([str(Path(sys.executable).with_name("mldp")), "dev", "-h", "127.0.0.1", "-p", str(port)],
                           env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    first_ticks, view = {}, {}
    try:
        deadline = time.monotonic() + 240
        while len(first_ticks) < len(SENSORS) and time.monotonic() < deadline and dev.poll() is None:
            for sensor in SENSORS:
                try:
                    view[sensor] = graphql(port, DEV_VIEW, {"sensor": sensor, "job": "credit_scoring_job"})
                except OSError:
                    break  # the webserver is still starting
                ticks = view[sensor]["sensorOrError"].get("sensorState", {}).get("ticks") or []
                done = [t for t in ticks if t["timestamp"] > started and t["status"] != "STARTED"]
                if done:
                    first_ticks.setdefault(sensor, done[-1])
            time.sleep(2)
    finally:
        code = ctrl_c(dev)
        log.close()
    assert set(first_ticks) == set(SENSORS), (tmp_path / "mldp-dev.log").read_text()[-4000:]
    assert_stopped_cleanly(code, tmp_path / "mldp-dev.log", port)
    for sensor, tick in first_ticks.items():
        assert (tick["status"], tick["runIds"]) == ("SKIPPED", []), (sensor, tick)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert {run.run_id: run.job_name for run in instance.get_runs()} == demo_runs  # nothing started again
    assert notifications(env) == sent  # nothing told again
    on_the_job = {run["runId"] for run in view["model_registry_sensor"]["pipelineOrError"]["runs"]}
    assert on_the_job == {run_id for run_id, job in demo_runs.items() if job == "credit_scoring_job"} != set()


def test_the_demo_refuses_to_run_beside_a_running_daemon(env):
    """With `mldp dev` running on the same DAGSTER_HOME its daemon runs the sensors: a demo ticking them too
    could tell a notification twice, so it refuses, before touching anything."""
    import dagster as dg
    from dagster._daemon.types import DaemonHeartbeat

    from platform_cli.dagster_instance import prepare_dagster_home
    from resources.settings import PlatformSettings

    home = prepare_dagster_home(PlatformSettings.from_env(env))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_daemon_heartbeat(DaemonHeartbeat(timestamp=time.time(), daemon_type="SENSOR",
                                                      daemon_id="another-process", errors=[]))
    refused = mldp("demo", env=env)
    assert refused.returncode == 1 and "`mldp dev` is running on" in refused.stderr
    assert not (Path(env["DATA_DIR"]) / "postgres").exists()  # nothing started, nothing loaded


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_a_limit_that_is_not_a_positive_number_is_refused_before_anything_runs(limit, capsys):
    from platform_cli.main import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["training-runs", "--limit", limit])
    assert exited.value.code == 2 and f"a whole number from 1, not {limit!r}" in capsys.readouterr().err

