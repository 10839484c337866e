"""Runs jobs and sensor ticks the way `mldp dev` (`dagster dev -w workspace.yaml`) does, from a script
(`mldp demo`), so that what it does is what `mldp dev` would have done and carries on from.

`WorkspaceRunner` loads the project's workspace.yaml into a workspace of its own (a code server subprocess,
as the webserver and the daemon do), and

- `launch` creates a run from the remote job of location `ml_data_platform` as the UI's Launchpad does
  (remote job origin, job snapshot, execution plan from the code server) and launches it at once through
  the instance's run launcher (a run worker process per run): the UI lists it on its job;
- `tick` evaluates one tick of a sensor with the sensor daemon's own code: its cursor is the one in the
  instance's InstigatorState, the tick is recorded, run requests are submitted with their run-key dedup and
  sensor tags, and the cursor is stored back where the daemon reads it.

Open the instance with `open_instance`: the instance in DAGSTER_HOME with the DefaultRunCoordinator, so the
runs a tick submits launch immediately instead of waiting for the run-queue daemon of `dagster dev`.

This relies on dagster internals (`dagster._daemon.sensor`, `dagster._core.workspace`,
`DagsterInstance.create_run`), written against the pinned dagster 1.13.27; tests/test_cli.py runs the
demo and then `mldp dev` to prove the two agree.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

LOCATION_NAME = "ml_data_platform"
TERMINAL = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
DEFAULT_RUN_COORDINATOR = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}


class WorkspaceRunnerError(RuntimeError):
    """The code location did not load, a run could not be created, or a sensor tick failed."""


def open_instance(dagster_home: Path) -> dg.DagsterInstance:
    """The persistent instance in `dagster_home` (its dagster.yaml: storage, concurrency, ...) as `mldp dev`
    opens it, but with runs submitted straight to the run launcher, so the runs a sensor tick requests start
    at once instead of waiting for the run-queue daemon of `dagster dev`.

    The runs, ticks and sensor states it writes are the ones `mldp dev` reads; only this process's run
    coordinator differs. (Pools are enforced by the run queue, so a run submitted here does not wait for its
    pool: the demo runs one thing at a time.) Leaving the runner also waits for its code server to exit
    (after the runs it launched), so the last user of the embedded PostgreSQL is gone when the demo ends.
    DAGSTER_HOME is exported for the code server and run workers, as `mldp dev` does for `dagster dev`.
    """
    import yaml
    from dagster._core.instance.ref import InstanceRef

    home = Path(dagster_home).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    config = yaml.safe_load((home / "dagster.yaml").read_text()) if (home / "dagster.yaml").exists() else None
    code_servers = {**((config or {}).get("code_servers") or {}), "wait_for_local_processes_on_shutdown": True}
    ref = InstanceRef.from_dir(str(home), overrides={"run_coordinator": DEFAULT_RUN_COORDINATOR,
                                                     "code_servers": code_servers})
    return dg.DagsterInstance.from_ref(ref)


class WorkspaceRunner:
    """A workspace loaded from workspace.yaml, for launching runs and ticking sensors; a context manager."""

    def __init__(self, instance: dg.DagsterInstance, workspace_yaml: Path, location_name: str = LOCATION_NAME,
                 logger: logging.Logger | None = None, output: Path | None = None) -> None:
        """`output`: a file for the code server's stdout and stderr, and so for the console logs of the runs
        (run workers are its children); by default they share this process's terminal."""
        self.instance = instance
        self.workspace_yaml = Path(workspace_yaml).resolve()
        self.location_name = location_name
        self.logger = logger or logging.getLogger("mldp.workspace_runner")
        self.output = Path(output) if output else None
        self._context = None
        self._previous_cwd: str | None = None

    # --- the workspace -------------------------------------------------------------------------------------

    def __enter__(self) -> WorkspaceRunner:
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        # A python_module's working_directory in workspace.yaml is taken relative to the current directory
        # (dagster does not rebase it on the file), and it goes into the runs' origins as written ('.'):
        # work from the workspace's folder, as `mldp dev` runs `dagster dev` there.
        if Path.cwd().resolve() != self.workspace_yaml.parent:
            self._previous_cwd = os.getcwd()
            os.chdir(self.workspace_yaml.parent)
        try:
            with _stdout_stderr_to(self.output):  # inherited by the code server started here
                context = WorkspaceProcessContext(self.instance, WorkspaceFileTarget(paths=[str(self.workspace_yaml)]))
        except BaseException:
            self._restore_cwd()
            raise
        try:
            request_context = context.create_request_context()
            if not request_context.has_code_location_name(self.location_name):
                raise WorkspaceRunnerError(f"{self.workspace_yaml} has no code location {self.location_name!r}")
            error = request_context.get_code_location_error(self.location_name)
            if error is not None:
                raise WorkspaceRunnerError(f"code location {self.location_name} did not load:\n{error.to_string()}")
        except BaseException:
            context.__exit__(None, None, None)
            self._restore_cwd()
            raise
        self._context = context
        return self

    def __exit__(self, *exc_info) -> None:
        context, self._context = self._context, None
        try:
            if context is not None:
                context.__exit__(*exc_info)  # stops the code server (runs already launched keep running)
        finally:
            self._restore_cwd()

    def _restore_cwd(self) -> None:
        if self._previous_cwd is not None:
            os.chdir(self._previous_cwd)
            self._previous_cwd = None

    @property
    def context(self):
        if self._context is None:
            raise WorkspaceRunnerError("use WorkspaceRunner as a context manager (`with WorkspaceRunner(...)`)")
        return self._context

    def _location_and_repository(self):
        location = self.context.create_request_context().get_code_location(self.location_name)
        repositories = list(location.get_repositories().values())
        if len(repositories) != 1:
            raise WorkspaceRunnerError(f"expected one repository in {self.location_name}, found "
                                       f"{[r.name for r in repositories]}")
        return location, repositories[0]

    # --- runs ----------------------------------------------------------------------------------------------

    def launch(self, job_name: str, run_config: Mapping | dg.RunConfig | None = None,
               tags: Mapping[str, str] | None = None) -> str:
        """Create a run of `job_name` as the UI's Launchpad does and launch it now; returns its run id."""
        from dagster._config import validate_config_from_snap
        from dagster._core.definitions.selector import JobSubsetSelector

        location, repository = self._location_and_repository()
        if not repository.has_job(job_name):
            raise WorkspaceRunnerError(f"{self.location_name} has no job {job_name!r}")
        remote_job = location.get_job(JobSubsetSelector(location_name=location.name, repository_name=repository.name,
                                                        job_name=job_name, op_selection=None))
        run_config = dict(run_config.to_config_dict() if isinstance(run_config, dg.RunConfig) else run_config or {})
        run_tags = {**(remote_job.tags or {})}
        run_tags.update(tags or {})
        validated = validate_config_from_snap(remote_job.config_schema_snapshot, remote_job.root_config_key, run_config)
        if not validated.success:
            raise WorkspaceRunnerError(f"invalid run config for {job_name}: "
                                       + "; ".join(error.message for error in validated.errors or []))
        plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None,
                                           instance=self.instance)
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=run_config,
            resolved_op_selection=remote_job.resolved_op_selection,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
            op_selection=None,
            status=dg.DagsterRunStatus.NOT_STARTED,
            root_run_id=None,
            parent_run_id=None,
            tags=run_tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=repository.asset_graph,
        )
        self.instance.submit_run(run.run_id, self.context.create_request_context())
        return run.run_id

    def wait(self, run_id: str, timeout: float = 600, poll: float = 0.5) -> dg.DagsterRun:
        """The run once it has ended (SUCCESS, FAILURE or CANCELED); TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.instance.get_run_by_id(run_id)
            if run is None:
                raise WorkspaceRunnerError(f"no run {run_id} in the instance")
            if run.status in TERMINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} ({run.job_name}) is still {run.status.value} after {timeout:g}s")
            time.sleep(poll)

    # --- sensors -------------------------------------------------------------------------------------------

    def tick(self, sensor_name: str) -> list[str]:
        """One tick of `sensor_name`, evaluated and recorded by the sensor daemon's code; the ids of the runs
        it launched (runs whose run key was already used are not launched again, as under the daemon).

        The sensor's minimum interval is not waited for. A sensor the UI has stopped is not ticked (error).
        """
        from dagster._core.definitions.run_request import InstigatorType
        from dagster._core.scheduler.instigation import (
            InstigatorState,
            InstigatorStatus,
            SensorInstigatorData,
            TickStatus,
        )
        from dagster._daemon import sensor as sensor_daemon
        from dagster._time import get_current_timestamp
        from dagster._utils.error import SerializableErrorInfo

        instance = self.instance
        sensor = self.remote_sensor(sensor_name)
        origin_id, selector_id = sensor.get_remote_origin_id(), sensor.selector_id
        state = instance.get_instigator_state(origin_id, selector_id)
        if not sensor.get_current_instigator_state(state).is_running:
            raise WorkspaceRunnerError(f"sensor {sensor_name} is stopped in this instance: the daemon would not "
                                       "tick it (start it in the UI)")
        if state is None:  # as execute_sensor_iteration does for a sensor RUNNING by default, never ticked
            state = InstigatorState(
                sensor.get_remote_origin(),
                InstigatorType.SENSOR,
                InstigatorStatus.DECLARED_IN_CODE,
                SensorInstigatorData(min_interval=sensor.min_interval_seconds,
                                     last_sensor_start_timestamp=get_current_timestamp(),
                                     sensor_type=sensor.sensor_type),
            )
            instance.add_instigator_state(state)
        elif sensor_daemon.is_under_min_interval(state, sensor):
            # The daemon's tick function skips a sensor inside its minimum interval (it re-reads the state).
            # The demo does not wait the interval out: it dates the previous tick back by that interval.
            data = state.instigator_data
            earlier = get_current_timestamp() - (sensor.min_interval_seconds or 0) - 1
            state = state.with_data(data._replace(last_tick_timestamp=earlier, last_tick_start_timestamp=earlier))
            instance.update_instigator_state(state)

        started = get_current_timestamp()
        errors = []
        for item in sensor_daemon._process_tick_generator(
            self.context, self.logger, sensor, state, sensor_debug_crash_flags=None,
            tick_retention_settings=instance.get_tick_retention_settings(InstigatorType.SENSOR),
            submit_threadpool_executor=None,
        ):
            if isinstance(item, SerializableErrorInfo):
                errors.append(item)
        ticks = instance.get_ticks(origin_id, selector_id, limit=1)
        tick = ticks[0] if ticks else None
        if tick is None or max(tick.timestamp, tick.end_timestamp or 0) < started:
            raise WorkspaceRunnerError(f"sensor {sensor_name}: no tick was recorded"
                                       + "".join(f"\n{e.to_string()}" for e in errors))
        if errors or tick.status == TickStatus.FAILURE:
            details = [e.to_string() for e in errors] or [tick.error.to_string() if tick.error else tick.status.value]
            raise WorkspaceRunnerError(f"sensor {sensor_name} tick {tick.tick_id} failed:\n" + "\n".join(details))
        return list(tick.run_ids)

    def adopt_cursor(self, sensor_name: str, cursor: str) -> bool:
        """Give `sensor_name` this cursor unless the instance already holds a state for it; whether it did."""
        from dagster._core.definitions.run_request import InstigatorType
        from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, SensorInstigatorData

        sensor = self.remote_sensor(sensor_name)
        if self.instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id) is not None:
            return False
        self.instance.add_instigator_state(InstigatorState(
            sensor.get_remote_origin(), InstigatorType.SENSOR, InstigatorStatus.DECLARED_IN_CODE,
            SensorInstigatorData(min_interval=sensor.min_interval_seconds, cursor=cursor,
                                 sensor_type=sensor.sensor_type)))
        return True

    def remote_sensor(self, sensor_name: str):
        """The sensor as the daemon sees it (a RemoteSensor: origin, selector id, min interval)."""
        _location, repository = self._location_and_repository()
        if not repository.has_sensor(sensor_name):
            raise WorkspaceRunnerError(f"{self.location_name} has no sensor {sensor_name!r}")
        return repository.get_sensor(sensor_name)

    def cursor(self, sensor_name: str) -> str | None:
        """The sensor's cursor in the instance, where the daemon reads it."""
        sensor = self.remote_sensor(sensor_name)
        state = self.instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
        data = state.instigator_data if state else None
        return getattr(data, "cursor", None)

    # --- what a run recorded (execute_in_process results are not available for launched runs) -------------

    def materialization_metadata(self, run_id: str, asset: str) -> dict:
        """The metadata of the last materialisation of `asset` in the run, values unwrapped."""
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        for record in reversed(records):
            materialization = record.event_log_entry.asset_materialization
            if materialization is not None and materialization.asset_key == dg.AssetKey(asset):
                return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
        return {}

    def failure(self, run_id: str) -> str:
        """Why a run failed: the innermost error of its first failed step, else of the run."""
        for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
            for record in self.instance.get_records_for_run(run_id, of_type=kind).records:
                event = record.event_log_entry.dagster_event
                error = event.step_failure_data.error if kind == dg.DagsterEventType.STEP_FAILURE else \
                    getattr(event.event_specific_data, "error", None)
                while error is not None and error.cause is not None:
                    error = error.cause
                if error is not None:
                    return error.message.strip()
        return "see the run in the Dagster UI"

    def check_results(self, run_id: str) -> list[tuple[str, bool]]:
        """(check name, passed) for every asset check evaluated in the run."""
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
        results = []
        for record in records:
            evaluation = record.event_log_entry.dagster_event.event_specific_data
            results.append((evaluation.check_name, evaluation.passed))
        return results


@contextmanager
def _stdout_stderr_to(path: Path | None) -> Iterator[None]:
    """File descriptors 1 and 2 on `path` (appended) while the block runs, for the processes it starts."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as target:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
