"""Scoring batches: where a batch's files live, and which batch a step works on.

A batch is started by the run that materialises `eligible_customers`; its id is that run's id, and every
file of the batch lives under `credit/batches/<batch_id>/`. Each file records its batch and the run that
wrote it. A step never reads "the current file" of its upstream asset: it asks Dagster's event log for the
upstream materialisation in its own run (or in the run it re-executes), else for the latest one, and reads
exactly that batch, refusing a file that another run has rewritten since. Two scoring runs at the same
time, queued or not, therefore each score, decide and write back their own batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.artifacts import ArtifactStore, join_key, schema_metadata

BATCHES_PREFIX = "credit/batches"
ELIGIBLE_FILE = "eligible_customers.parquet"
SKIPPED_FILE = "eligibility_skipped.parquet"
SCORES_FILE = "credit_scores.parquet"
DECISIONS_FILE = "limit_decisions.parquet"
RESULTS_FILE = "results.json"
EVALUATIONS_FILE = "evaluations.json"


class BatchMismatchError(RuntimeError):
    """A batch file is not the one the step's upstream materialisation wrote; nothing was written."""


class NoBatchError(RuntimeError):
    """The upstream asset of a batch step has never been materialised."""


def batch_prefix(batch_id: str) -> str:
    return join_key(BATCHES_PREFIX, batch_id)


def batch_key(batch_id: str, name: str) -> str:
    return join_key(batch_prefix(batch_id), name)


@dataclass(frozen=True)
class BatchStep:
    """One materialisation of a batch asset: the batch it belongs to and the run that wrote it."""

    batch_id: str
    run_id: str
    metadata: dict

    def value(self, name: str):
        """A metadata value of the materialisation (plain Python), KeyError naming it when absent."""
        entry = self.metadata[name]
        return getattr(entry, "value", entry)


def _materialisation_in(instance: dg.DagsterInstance, run_id: str, asset: dg.AssetKey):
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in reversed(records):
        materialization = record.asset_materialization
        if materialization is not None and materialization.asset_key == asset:
            return record.run_id, materialization
    return None


def batch_step(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, asset: str) -> BatchStep:
    """The materialisation of `asset` that a step of this run works on: the one made in this run (or in the
    run this one re-executes, and so on up), else the latest one in the instance."""
    key = dg.AssetKey(asset)
    instance = context.instance
    run = context.run
    found = None
    while run is not None and found is None:
        found = _materialisation_in(instance, run.run_id, key)
        run = instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    if found is None:
        latest = instance.get_latest_materialization_event(key)
        if latest is not None and latest.asset_materialization is not None:
            found = latest.run_id, latest.asset_materialization
    if found is None:
        raise NoBatchError(f"{asset} has never been materialised in this Dagster instance: run credit_scoring_job "
                           "(or materialise eligible_customers) to start a scoring batch")
    run_id, materialization = found
    metadata = dict(materialization.metadata)
    if "batch_id" not in metadata:
        raise NoBatchError(f"the materialisation of {asset} by run {run_id} names no batch_id")
    return BatchStep(batch_id=str(metadata["batch_id"].value), run_id=run_id, metadata=metadata)


def write_batch_file(artifacts: ArtifactStore, batch_id: str, name: str, frame: pd.DataFrame, *, run_id: str,
                     **metadata: str) -> str:
    """Write one Parquet file of a batch, stamped with the batch and the run writing it; returns its URI."""
    return artifacts.write_parquet(batch_key(batch_id, name), frame,
                                   metadata={"batch_id": batch_id, "run_id": run_id, **metadata})


def read_batch_file(artifacts: ArtifactStore, batch_id: str, run_id: str, name: str,
                    columns: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """A batch file and its metadata (one read), refusing it unless `run_id` wrote it for `batch_id`."""
    key = batch_key(batch_id, name)
    table = artifacts.read_parquet_table(key, columns=columns)
    metadata = schema_metadata(table.schema)
    if (metadata.get("batch_id"), metadata.get("run_id")) != (batch_id, run_id):
        raise BatchMismatchError(
            f"{artifacts.uri(key)} was written for batch {metadata.get('batch_id')!r} by run {metadata.get('run_id')!r}, "
            f"but this step works on batch {batch_id!r} as run {run_id!r} wrote it: another run rewrote the file "
            "since. Nothing was written; materialise eligible_customers to start a new batch.")
    return table.to_pandas(), metadata


def read_step_file(artifacts: ArtifactStore, step: BatchStep, name: str,
                   columns: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """The file that the materialisation `step` wrote."""
    return read_batch_file(artifacts, step.batch_id, step.run_id, name, columns)


def skipped_total(metadata: dict[str, str]) -> int:
    """Rows skipped with a reason, from a batch file's `skipped` counts."""
    return sum(json.loads(metadata.get("skipped") or "{}").values())
