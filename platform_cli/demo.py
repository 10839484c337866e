"""`mldp demo`: every workflow once, end to end, as `mldp dev` would run it:

credit:  train -> registered (notification) -> approved (notification) -> scoring batch requested and run
recsys:  train -> registered (notification) -> approved (notification) -> embeddings reload requested and run
         -> session events produced -> archived by the sensor -> an hour of recommendations
mlops:   completed training jobs synced into the tracking tables

Jobs are launched from the code location that `mldp dev` loads (workspace.yaml) into the instance in
DAGSTER_HOME, and every sensor tick is evaluated by the sensor daemon's own code, its cursor kept in the
instance (`platform_cli.workspace_runner`). So the UI lists the demo's runs on their jobs, and the daemon
of a later `mldp dev` carries on from the demo's cursors: its first ticks find nothing new.
"""

from __future__ import annotations

import sys
import time

import dagster as dg

from platform_cli.workspace_runner import WorkspaceRunner
from resources.artifacts import join_key

SENSORS = ("model_registry_sensor", "model_artifacts_sensor", "session_events_sensor", "training_jobs_sensor")
DAEMON_ALIVE_SECONDS = 60


def daemon_running(instance: dg.DagsterInstance) -> bool:
    """Whether a Dagster daemon (`mldp dev`) has been working on this instance within the last minute."""
    now = time.time()
    return any(now - beat.timestamp < DAEMON_ALIVE_SECONDS for beat in instance.get_daemon_heartbeats().values())


def adopt_old_demo_cursors(runner: WorkspaceRunner, artifacts) -> None:
    """Cursors an earlier version of the demo kept in the artifact store (`demo/<sensor>.cursor.json`) become
    the sensors' cursors in the instance, where the daemon reads them, unless the sensor has one there already
    (the instance's own is the later one). The files are removed either way: the instance is the one place."""
    for sensor in SENSORS:
        key = join_key("demo", f"{sensor}.cursor.json")
        if artifacts.exists(key):
            runner.adopt_cursor(sensor, artifacts.read_text(key))
            artifacts.delete([key])


class DemoFlow:
    def __init__(self, runner: WorkspaceRunner, resources) -> None:
        self.runner, self.resources = runner, resources
        self.ok = True

    # --- runs and ticks -----------------------------------------------------------------------------------

    def run(self, job: str, run_config=None, tags=None) -> str | None:
        """Launch `job` from the code location and wait for it; its run id, or None (said why) if it failed."""
        return self.finish(self.runner.launch(job, run_config=run_config, tags=tags))

    def finish(self, run_id: str) -> str | None:
        run = self.runner.wait(run_id)
        if run.status == dg.DagsterRunStatus.SUCCESS:
            return run_id
        self.ok = False
        print(f"  {run.job_name} run {run_id} {run.status.value.lower()}: {self.runner.failure(run_id)}",
              file=sys.stderr)
        return None

    def metadata(self, run_id: str, asset: str) -> dict:
        return self.runner.materialization_metadata(run_id, asset)

    def checks_line(self, run_id: str) -> str:
        """The run's checks; a failed check fails the demo, except a drift finding (README, "Drift monitoring")."""
        from resources.drift import MONITORING_CHECKS

        checks = self.runner.check_results(run_id)
        self.ok = self.ok and all(passed for name, passed in checks if name not in MONITORING_CHECKS)
        return ", ".join(f"{name} {'passed' if passed else 'found drift' if name in MONITORING_CHECKS else 'FAILED'}"
                         for name, passed in checks)

    def notify_tick(self) -> list[str]:
        """One tick of the registry sensor: the notifications it sent, and the runs it started."""
        before = len(self.sent())
        started = self.runner.tick("model_registry_sensor")
        for message in self.sent()[before:]:
            print(f"  notification: {message['subject']}")
        return started

    def sent(self) -> list[dict]:
        """What the local notifier wrote (SNS deliveries are not visible from here)."""
        notifier = self.resources.notifier
        return notifier.sent() if hasattr(notifier, "sent") else []

    def put_to_work(self, started: list[str]) -> list[str]:
        """Wait for the runs an approval started; the ids of those that succeeded."""
        done = []
        for run_id in started:
            print(f"  the approval requested {self.runner.instance.get_run_by_id(run_id).job_name}")
            if self.finish(run_id):
                done.append(run_id)
        return done

    def approve(self, pipeline: str, model_version: str, reason: str):
        registry = self.resources.registry
        package = registry.find(pipeline, model_version)
        registry.approve(package.group, package.version, reason)
        print(f"  approved {package.group} version {package.version}: {reason}")

    # --- the workflows -----------------------------------------------------------------------------------

    def credit(self) -> None:
        artifacts = self.resources.artifacts
        print("\ncredit pipeline")
        trained = self.run("credit_training_job")
        if not trained:
            return
        model = self.metadata(trained, "credit_model")
        print(f"  model {model['model_version']}: validation AUC {model['validation_auc']:.3f}, "
              f"Gini {model['validation_gini']:.3f}; registered as {model['model_package']} ({model['registered_as']})")
        self.notify_tick()
        self.approve("credit", model["model_version"], f"validation Gini {model['validation_gini']:.3f} reviewed by the demo")
        for scored in self.put_to_work(self.notify_tick()):
            eligible, decisions = self.metadata(scored, "eligible_customers"), self.metadata(scored, "limit_decisions")
            updates = self.metadata(scored, "customer_updates")
            checks = self.checks_line(scored)
            batch = updates.get("batch_id", "")
            print(f"  {eligible.get('eligible', 0):,} eligible customers, {decisions.get('approved', 0):,} approved, "
                  f"{decisions.get('declined', 0):,} declined; {updates.get('updated', 0):,} customers updated, "
                  f"{updates.get('already_applied', 0):,} already applied")
            print(f"  checks: {checks}")
            if not eligible.get("eligible"):
                print("  (no customer was eligible: every customer already has a decision; `mldp demo --reset` "
                      "starts over)")
            print(f"  batch results      {artifacts.uri(f'credit/batches/{batch}/results.json')}")
            print(f"  batch evaluations  {artifacts.uri(f'credit/batches/{batch}/evaluations.json')}")
        print(f"  model version      {model.get('model_uri')}")
        print("  audit table        mldp psql -c \"select decision, count(*) from credit_limit_audit group by 1\"")

    def recsys(self, events: int) -> None:
        artifacts = self.resources.artifacts
        print("\nrecommender pipeline")
        trained = self.run("recsys_training_job")
        if not trained:
            return
        data, model = self.metadata(trained, "ratings_training_data"), self.metadata(trained, "recsys_model")
        print(f"  {data.get('rows', 0):,} ratings of {data.get('customers', 0)} customers -> "
              f"{artifacts.uri('ratings_ml_training')}")
        print(f"  model {model['model_version']}: validation RMSE {model['validation_rmse']:.3f} "
              f"(item-mean baseline {model['item_mean_baseline_rmse']:.3f}), NDCG@5 {model['validation_ndcg_at_5']:.3f} "
              f"(popularity {model['popularity_ndcg_at_5']:.3f}); registered ({model['registered_as']})")
        print(f"  model artifacts    {model.get('uri')}")
        for run_id in self.runner.tick("model_artifacts_sensor"):  # loads at once under MODEL_VERSION_POLICY=newest
            self.finish(run_id)
        self.notify_tick()
        self.approve("recsys", model["model_version"],
                     f"NDCG@5 {model['validation_ndcg_at_5']:.3f} against popularity {model['popularity_ndcg_at_5']:.3f}")
        for loaded in self.put_to_work(self.notify_tick()):
            items, users = self.metadata(loaded, "item_embeddings"), self.metadata(loaded, "user_embeddings")
            print(f"  pgvector tables    item_emb {items.get('rows', 0):,} rows, user_emb {users.get('rows', 0):,} rows "
                  f"(version {items.get('version')})")
        print("  try                mldp psql -c \"select id, embedding <=> (select embedding from item_emb limit 1) "
              "as distance from item_emb order by 2 limit 5\"")
        if self.ok:
            self.stream(events)

    def stream(self, events: int) -> None:
        from recsys_assets import ratings_etl
        from recsys_assets.session_events import make_events

        products, customers = ratings_etl.dimension_frames(self.resources.source_db)
        payloads = make_events(products["productcode"].tolist(), customers, events, broken_fraction=0.05)
        self.resources.events.put(payloads)
        print(f"\nstreaming: produced {len(payloads)} session events into {self.resources.events.describe()}")
        for run_id in self.runner.tick("session_events_sensor"):  # one run per hour the events fell in
            if not self.finish(run_id):
                continue
            hour = self.runner.instance.get_run_by_id(run_id).tags.get("dagster/partition")
            meta = self.metadata(run_id, "recommendations")
            checks = self.checks_line(run_id)
            print(f"  hour {hour}: {meta.get('events_in', 0)} events, {meta.get('enriched', 0)} enriched "
                  f"({meta.get('partially_enriched', 0)} partly), {meta.get('dead_lettered', 0)} dead-lettered; {checks}")
            print(f"  output             {meta.get('output')}")

    def tracking(self) -> None:
        print("\ntraining-run tracking")
        started = self.runner.tick("training_jobs_sensor")
        for run_id in started:
            if self.finish(run_id):
                meta = self.metadata(run_id, "training_runs")
                print(f"  {meta.get('synced', 0)} training run(s) recorded, {meta.get('already_tracked', 0)} already "
                      f"tracked, {meta.get('reported', 0)} reported; {meta.get('tracked_runs_total', 0)} in the "
                      "tracking tables")
        if not started:
            print("  no new training job to record")
        print("  tracking tables    mldp psql -c \"select job_name, status, metrics from tracking_runs\"")
