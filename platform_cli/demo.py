"""`mldp demo`: every workflow once, end to end, in the persistent Dagster instance (so `mldp dev` shows the
runs), with the sensors evaluated by the same code the daemon runs:

credit:  train -> registered (notification) -> approved (notification) -> scoring batch requested and run
recsys:  train -> registered (notification) -> approved (notification) -> embeddings reload requested and run
         -> session events produced -> archived by the sensor -> an hour of recommendations
mlops:   completed training jobs synced into the tracking tables

The demo keeps its own sensor cursors in the artifact store (``demo/``), apart from the daemon's.
"""

from __future__ import annotations

import sys

import dagster as dg

from resources.artifacts import join_key

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def metadata(result, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()} if events else {}


def checks_line(result) -> tuple[str, bool]:
    checks = [(e.check_name, e.passed) for e in result.get_asset_check_evaluations()]
    return ", ".join(f"{name} {'passed' if ok else 'FAILED'}" for name, ok in checks), all(ok for _n, ok in checks)


class DemoFlow:
    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, resources) -> None:
        self.defs, self.instance, self.resources = defs, instance, resources
        self.ok = True

    # --- running jobs and sensors ------------------------------------------------------------------------

    def run(self, job: str, run_config=None, partition_key: str | None = None, tags=None):
        config = dict(run_config.to_config_dict() if isinstance(run_config, dg.RunConfig) else (run_config or {}))
        config.update(QUIET)
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, run_config=config, partition_key=partition_key, tags=tags, raise_on_error=False)
        if not result.success:
            self.ok = False
            failure = next((e for e in result.all_events if e.is_step_failure), None)
            error = failure.step_failure_data.error if failure else None
            while error is not None and error.cause is not None:
                error = error.cause
            print(f"  {job} failed: {error.message.strip() if error else 'see the run in the Dagster UI'}",
                  file=sys.stderr)
        return result

    def tick(self, sensor_name: str, **resources):
        """One evaluation of a sensor, with the demo's cursor for it."""
        sensor = self.defs.resolve_sensor_def(sensor_name)
        artifacts = self.resources.artifacts
        key = join_key("demo", f"{sensor_name}.cursor.json")
        cursor = artifacts.read_text(key) if artifacts.exists(key) else None
        with dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=resources) as context:
            result = sensor(context)
        if result.cursor:
            artifacts.write_text(key, result.cursor)
        return result

    def notify_tick(self):
        before = len(self.sent())
        result = self.tick("model_registry_sensor", registry=self.resources.registry, notifier=self.resources.notifier)
        for message in self.sent()[before:]:
            print(f"  notification: {message['subject']}")
        return result

    def sent(self) -> list[dict]:
        """What the local notifier wrote (SNS deliveries are not visible from here)."""
        notifier = self.resources.notifier
        return notifier.sent() if hasattr(notifier, "sent") else []

    def put_to_work(self, result) -> list:
        outcomes = []
        for request in result.run_requests or []:
            print(f"  the approval requested {request.job_name}")
            outcomes.append(self.run(request.job_name, run_config=request.run_config, tags=request.tags))
        return outcomes

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
        model = metadata(trained, "credit_model")
        if not trained.success:
            return
        print(f"  model {model['model_version']}: validation AUC {model['validation_auc']:.3f}, "
              f"Gini {model['validation_gini']:.3f}; registered as {model['model_package']} ({model['approval_status']})")
        self.notify_tick()
        self.approve("credit", model["model_version"], f"validation Gini {model['validation_gini']:.3f} reviewed by the demo")
        outcomes = self.put_to_work(self.notify_tick())
        for scored in outcomes:
            if not scored.success:
                continue
            eligible, decisions = metadata(scored, "eligible_customers"), metadata(scored, "limit_decisions")
            updates = metadata(scored, "customer_updates")
            checks, passed = checks_line(scored)
            self.ok = self.ok and passed
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
        if not trained.success:
            return
        data, model = metadata(trained, "ratings_training_data"), metadata(trained, "recsys_model")
        print(f"  {data.get('rows', 0):,} ratings of {data.get('customers', 0)} customers -> "
              f"{artifacts.uri('ratings_ml_training')}")
        print(f"  model {model['model_version']}: validation RMSE {model['validation_rmse']:.3f} "
              f"(item-mean baseline {model['item_mean_baseline_rmse']:.3f}), NDCG@5 {model['validation_ndcg_at_5']:.3f} "
              f"(popularity {model['popularity_ndcg_at_5']:.3f}); registered ({model['approval_status']})")
        print(f"  model artifacts    {model.get('uri')}")
        self.tick("model_artifacts_sensor", artifacts=artifacts, registry=self.resources.registry)
        self.notify_tick()
        self.approve("recsys", model["model_version"],
                     f"NDCG@5 {model['validation_ndcg_at_5']:.3f} against popularity {model['popularity_ndcg_at_5']:.3f}")
        for loaded in self.put_to_work(self.notify_tick()):
            items, users = metadata(loaded, "item_embeddings"), metadata(loaded, "user_embeddings")
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
        archived = self.tick("session_events_sensor", events=self.resources.events, artifacts=self.resources.artifacts)
        for request in archived.run_requests or []:
            result = self.run("recommendations_job", partition_key=request.partition_key)
            meta = metadata(result, "recommendations")
            checks, passed = checks_line(result)
            self.ok = self.ok and passed
            print(f"  hour {request.partition_key}: {meta.get('events_in', 0)} events, {meta.get('enriched', 0)} enriched "
                  f"({meta.get('partially_enriched', 0)} partly), {meta.get('dead_lettered', 0)} dead-lettered; {checks}")
            print(f"  output             {meta.get('output')}")

    def tracking(self) -> None:
        print("\ntraining-run tracking")
        result = self.tick("training_jobs_sensor", sagemaker=self.resources.sagemaker, tracking=self.resources.tracking)
        for request in result.run_requests or []:
            synced = self.run("training_runs_job", run_config=request.run_config)
            meta = metadata(synced, "training_runs")
            print(f"  {meta.get('synced', 0)} training run(s) recorded, {meta.get('already_tracked', 0)} already "
                  f"tracked, {meta.get('reported', 0)} reported; {meta.get('tracked_runs_total', 0)} in the tracking tables")
        if not result.run_requests:
            print("  no new training job to record")
        print("  tracking tables    mldp psql -c \"select job_name, status, metrics from tracking_runs\"")
