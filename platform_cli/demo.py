"""`mldp demo`: demo data where needed, then the workflows materialised in the persistent Dagster instance
(so `mldp dev` shows the runs), and a summary that says where to look."""

from __future__ import annotations

import sys

import dagster as dg


def run_job(defs: dg.Definitions, name: str, instance: dg.DagsterInstance):
    print(f"materialising {name} ...")
    result = defs.resolve_job_def(name).execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        error = failure.step_failure_data.error if failure else None
        while error is not None and error.cause is not None:
            error = error.cause
        print(f"{name} failed: {error.message.strip() if error else 'see the run in the Dagster UI'}", file=sys.stderr)
    return result


def metadata(result, asset: str) -> dict:
    events = result.asset_materializations_for_node(asset)
    return {k: getattr(v, "value", v) for k, v in events[-1].metadata.items()} if events else {}


def checks_line(result) -> tuple[str, bool]:
    checks = [(e.check_name, e.passed) for e in result.get_asset_check_evaluations()]
    return ", ".join(f"{name} {'passed' if ok else 'FAILED'}" for name, ok in checks), all(ok for _n, ok in checks)


def credit_summary(result, artifacts) -> bool:
    model, updates = metadata(result, "credit_model"), metadata(result, "customer_updates")
    decisions, eligible = metadata(result, "limit_decisions"), metadata(result, "eligible_customers")
    checks, passed = checks_line(result)
    batch = updates.get("batch_id", "")
    print(f"\ncredit pipeline: run {result.run_id} succeeded")
    print(f"  model {model.get('model_version')}: validation AUC {model.get('validation_auc', 0):.3f}, "
          f"Gini {model.get('validation_gini', 0):.3f}")
    print(f"  {eligible.get('eligible', 0):,} eligible customers, {decisions.get('approved', 0):,} approved, "
          f"{decisions.get('declined', 0):,} declined; {updates.get('updated', 0):,} customers updated, "
          f"{updates.get('already_applied', 0):,} already applied")
    print(f"  checks: {checks}")
    if not eligible.get("eligible"):
        print("  (no customer was eligible: every customer already has a decision; `mldp demo --reset` starts over)")
    print(f"  batch results      {artifacts.uri(f'credit/batches/{batch}/results.json')}")
    print(f"  batch evaluations  {artifacts.uri(f'credit/batches/{batch}/evaluations.json')}")
    print(f"  model version      {model.get('model_uri')}")
    print("  audit table        mldp psql -c \"select decision, count(*) from credit_limit_audit group by 1\"")
    return passed


def recsys_summary(result, artifacts) -> bool:
    data, model = metadata(result, "ratings_training_data"), metadata(result, "recsys_model")
    items, users = metadata(result, "item_embeddings"), metadata(result, "user_embeddings")
    checks, passed = checks_line(result)
    print(f"\nrecommender pipeline: run {result.run_id} succeeded")
    print(f"  {data.get('rows', 0):,} ratings of {data.get('customers', 0)} customers -> "
          f"{artifacts.uri('ratings_ml_training')}")
    print(f"  model {model.get('model_version')}: validation RMSE {model.get('validation_rmse', 0):.3f} "
          f"(item-mean baseline {model.get('item_mean_baseline_rmse', 0):.3f}), NDCG@5 "
          f"{model.get('validation_ndcg_at_5', 0):.3f} (popularity {model.get('popularity_ndcg_at_5', 0):.3f})")
    print(f"  pgvector tables    item_emb {items.get('rows', 0):,} rows, user_emb {users.get('rows', 0):,} rows "
          f"(version {items.get('version')})")
    print(f"  model artifacts    {model.get('uri')}")
    print("  try                mldp psql -c \"select id, embedding <=> (select embedding from item_emb limit 1) "
          "as distance from item_emb order by 2 limit 5\"")
    print(f"  checks: {checks}")
    return passed


def stream_demo(defs: dg.Definitions, instance: dg.DagsterInstance, resources, events: int) -> bool:
    """Produce session events, let the archive sensor take them, and enrich the hours it asks for."""
    from recsys_assets import ratings_etl
    from recsys_assets.session_events import make_events
    from recsys_assets.streaming import session_events_sensor

    products, customers = ratings_etl.dimension_frames(resources.source_db)
    payloads = make_events(products["productcode"].tolist(), customers, events, broken_fraction=0.05)
    resources.events.put(payloads)
    print(f"\nproduced {len(payloads)} session events into {resources.events.describe()}")
    # the daemon under `mldp dev` keeps the sensor's cursor in the instance; the demo keeps its own
    cursor_key = "demo/session_events_cursor.json"
    cursor = resources.artifacts.read_text(cursor_key) if resources.artifacts.exists(cursor_key) else None
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"events": resources.events, "artifacts": resources.artifacts}) as context:
        evaluation = session_events_sensor(context)
    if evaluation.cursor:
        resources.artifacts.write_text(cursor_key, evaluation.cursor)
    ok = True
    job = defs.resolve_job_def("recommendations_job")
    for request in evaluation.run_requests or []:
        print(f"materialising recommendations for hour {request.partition_key} ...")
        result = job.execute_in_process(instance=instance, partition_key=request.partition_key, raise_on_error=False,
                                        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
        meta = metadata(result, "recommendations")
        checks, passed = checks_line(result)
        ok = ok and result.success and passed
        print(f"  {meta.get('events_in', 0)} events: {meta.get('enriched', 0)} enriched "
              f"({meta.get('partially_enriched', 0)} partly), {meta.get('dead_lettered', 0)} dead-lettered; {checks}")
        print(f"  output             {meta.get('output')}")
    return ok
