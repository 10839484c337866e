"""Training-run tracking (the reference syncs SageMaker training jobs into ModelDB): projects, models,
runs and their input datasets in tables of the application PostgreSQL, each training job recorded once."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg
import psycopg
from pydantic import PrivateAttr

from resources.postgres import PostgresDatabase, SchemaOnce

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracking_projects (
    project_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    owner text NOT NULL,
    description text NOT NULL
);
CREATE TABLE IF NOT EXISTS tracking_models (
    model_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES tracking_projects,
    name text NOT NULL,
    type text NOT NULL,
    UNIQUE (project_id, name, type)
);
CREATE TABLE IF NOT EXISTS tracking_runs (
    run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name text NOT NULL UNIQUE,
    project_id bigint NOT NULL REFERENCES tracking_projects,
    model_id bigint NOT NULL REFERENCES tracking_models,
    backend text NOT NULL,
    status text NOT NULL,
    started_at timestamptz,
    ended_at timestamptz,
    artifact_uri text,
    hyperparameters jsonb NOT NULL,
    metrics jsonb NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tracking_run_inputs (
    run_id bigint NOT NULL REFERENCES tracking_runs ON DELETE CASCADE,
    channel text NOT NULL,
    uri text NOT NULL,
    compression text NOT NULL,
    record_wrapper text NOT NULL,
    PRIMARY KEY (run_id, channel)
);
"""


# The tags that opt a SageMaker training job in to the tracking sync and describe it (the reference's names);
# the training assets set them (`opt_in_tags`), the sync reads them (`mlops_assets.tracking.TrackingTags`).
TAG_KEYS = {
    "sync": "MODEL_DB_SYNC",
    "project_name": "MODEL_DB_PROJECT_NAME",
    "project_user": "MODEL_DB_PROJECT_USER",
    "project_description": "MODEL_DB_PROJECT_DESC",
    "model_name": "MODEL_DB_MODEL_NAME",
    "model_type": "MODEL_DB_MODEL_TYPE",
}


def opt_in_tags(*, project_name: str, project_user: str, project_description: str, model_name: str,
                model_type: str) -> dict[str, str]:
    """A training job's tags that opt it in to the tracking sync, describing its project and model."""
    values = {"project_name": project_name, "project_user": project_user, "project_description": project_description,
              "model_name": model_name, "model_type": model_type}
    return {TAG_KEYS["sync"]: "true", **{TAG_KEYS[field]: value for field, value in values.items()}}

@dataclass(frozen=True)
class InputDataset:
    channel: str
    uri: str
    compression: str = "None"
    record_wrapper: str = "None"


@dataclass(frozen=True)
class TrackedRun:
    job_name: str
    backend: str
    status: str
    started_at: str | None
    ended_at: str | None
    project_name: str
    project_owner: str
    project_description: str
    model_name: str
    model_type: str
    artifact_uri: str | None
    hyperparameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    inputs: tuple[InputDataset, ...] = ()


class TrackingStore(dg.ConfigurableResource):
    """The tracking tables, written once per training job."""

    db: PostgresDatabase
    _tables: SchemaOnce = PrivateAttr(default_factory=lambda: SchemaOnce(_SCHEMA))

    def _connect(self) -> psycopg.Connection:
        return self._tables.connect(self.db)

    def record(self, run: TrackedRun) -> bool:
        """Store one run with its project, model and inputs in one transaction; False if it was already there."""
        with self._connect() as conn, conn.transaction():
            if conn.execute("SELECT 1 FROM tracking_runs WHERE job_name = %s", (run.job_name,)).fetchone():
                return False
            project_id = conn.execute(
                """INSERT INTO tracking_projects (name, owner, description) VALUES (%s, %s, %s)
                   ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, description = EXCLUDED.description
                   RETURNING project_id""",
                (run.project_name, run.project_owner, run.project_description)).fetchone()[0]
            model_id = conn.execute(
                """INSERT INTO tracking_models (project_id, name, type) VALUES (%s, %s, %s)
                   ON CONFLICT (project_id, name, type) DO UPDATE SET name = EXCLUDED.name RETURNING model_id""",
                (project_id, run.model_name, run.model_type)).fetchone()[0]
            run_id = conn.execute(
                """INSERT INTO tracking_runs (job_name, project_id, model_id, backend, status, started_at, ended_at,
                                              artifact_uri, hyperparameters, metrics)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (job_name) DO NOTHING RETURNING run_id""",
                (run.job_name, project_id, model_id, run.backend, run.status, run.started_at, run.ended_at,
                 run.artifact_uri, json.dumps(run.hyperparameters), json.dumps(run.metrics))).fetchone()
            if run_id is None:
                return False  # recorded by a concurrent sync in the meantime
            for dataset in run.inputs:
                conn.execute(
                    "INSERT INTO tracking_run_inputs (run_id, channel, uri, compression, record_wrapper) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (run_id[0], dataset.channel, dataset.uri, dataset.compression, dataset.record_wrapper))
        return True

    def tracked(self, job_names: Iterable[str]) -> set[str]:
        """Which of these training jobs are recorded."""
        names = sorted(set(job_names))
        if not names:
            return set()
        with self._connect() as conn:
            rows = conn.execute("SELECT job_name FROM tracking_runs WHERE job_name = ANY(%s)", (names,)).fetchall()
        return {row[0] for row in rows}

    def count(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT count(*) FROM tracking_runs").fetchone()[0]

    def runs(self, limit: int | None = None) -> list[dict]:
        """The recorded runs with their project, model and inputs, newest first (`limit`: the newest so many)."""
        with self._connect() as conn:
            cur = conn.execute(
                """SELECT r.job_name, p.name AS project, p.owner, m.name AS model, m.type AS model_type, r.backend,
                          r.status, r.started_at, r.ended_at, r.artifact_uri, r.hyperparameters, r.metrics,
                          coalesce((SELECT json_agg(json_build_object('channel', i.channel, 'uri', i.uri,
                                    'compression', i.compression, 'record_wrapper', i.record_wrapper) ORDER BY i.channel)
                                    FROM tracking_run_inputs i WHERE i.run_id = r.run_id), '[]') AS inputs
                   FROM tracking_runs r JOIN tracking_projects p USING (project_id) JOIN tracking_models m USING (model_id)
                   ORDER BY r.ended_at DESC NULLS LAST, r.job_name LIMIT %s""", (limit,))
            names = [c.name for c in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
