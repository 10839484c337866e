"""The model registry: every trained model is a package version in a group ``{pipeline}-{env}-models``,
``PendingManualApproval`` until someone approves or rejects it.

Two backends with SageMaker's model package semantics (states, versions, approval description):

- `LocalModelRegistry`: tables in the application PostgreSQL, with an append-only log of status changes
  (the local stand-in for EventBridge's "SageMaker Model Package State Change" events).
- `SageMakerModelRegistry`: model package groups and packages through boto3; approval with
  `update_model_package`. Status changes are found by comparing each package's status with the last one
  seen.

The version to put to work is chosen by `select`: the newest Approved package, or with the policy
``newest`` (development) the newest package not Rejected.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import psycopg
from pydantic import PrivateAttr

from resources.postgres import PostgresDatabase, SchemaOnce

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, REJECTED)


class RegistryError(RuntimeError):
    """A package or group is missing, or a change is not allowed; the message names it."""


@dataclass(frozen=True)
class ModelPackage:
    group: str
    version: int
    arn: str
    status: str
    model_version: str  # the artifact version (credit/models/<v>, ml-artifacts/<v>)
    model_data_url: str
    metrics: dict[str, float]
    data_fingerprint: str
    description: str
    approval_description: str | None
    created_at: datetime
    modified_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class StatusChange:
    """A package reached `status` (an EventBridge 'Model Package State Change', in effect)."""

    position: Any  # where the change sits in the registry's change stream (backend-specific)
    package: ModelPackage
    status: str


class ModelRegistry(dg.ConfigurableResource, ABC):
    """Model package groups ``{pipeline}-{env}-models`` and their versions."""

    env: str = "dev"
    version_policy: str = "approved"  # or "newest": for development, use the newest package regardless
    pipelines: list[str] = ["credit", "recsys"]  # whose groups the change feed watches

    def group_for(self, pipeline: str) -> str:
        return f"{pipeline}-{self.env}-models"

    @abstractmethod
    def register(self, pipeline: str, *, model_version: str, model_data_url: str, metrics: Mapping[str, float],
                 data_fingerprint: str, description: str = "") -> ModelPackage:
        """A new PendingManualApproval package (or the existing one for this model version)."""

    @abstractmethod
    def packages(self, group: str) -> list[ModelPackage]:
        """The group's packages, newest first (empty when the group does not exist)."""

    @abstractmethod
    def set_status(self, group: str, version: int, status: str, reason: str) -> ModelPackage: ...

    @abstractmethod
    def changes(self, cursor: Mapping[str, Any] | None) -> list[StatusChange]:
        """Status changes after `cursor` (a JSON-able mapping; None: from the beginning), oldest first."""

    @abstractmethod
    def advance(self, cursor: Mapping[str, Any] | None, change: StatusChange) -> dict[str, Any]:
        """The cursor once `change` has been handled."""

    def package(self, group: str, version: int) -> ModelPackage:
        for package in self.packages(group):
            if package.version == version:
                return package
        raise RegistryError(f"model package group {group} has no version {version}")

    def find(self, pipeline: str, model_version: str) -> ModelPackage | None:
        return next((p for p in self.packages(self.group_for(pipeline)) if p.model_version == model_version), None)

    def approve(self, group: str, version: int, reason: str) -> ModelPackage:
        return self.set_status(group, version, APPROVED, reason)

    def reject(self, group: str, version: int, reason: str) -> ModelPackage:
        return self.set_status(group, version, REJECTED, reason)

    def select(self, pipeline: str) -> ModelPackage:
        """The package to put to work under the version policy; a clear error when there is none."""
        group = self.group_for(pipeline)
        packages = self.packages(group)
        wanted = (lambda p: p.status == APPROVED) if self.version_policy == "approved" else (lambda p: p.status != REJECTED)
        chosen = next((p for p in packages if wanted(p)), None)
        if chosen is None:
            newest = f" (newest: version {packages[0].version}, {packages[0].status})" if packages else ""
            raise RegistryError(
                f"no {'Approved' if self.version_policy == 'approved' else 'usable'} model in {group}{newest}: approve "
                f"one with `mldp registry approve {group} <version> --reason ...`, or set MODEL_VERSION_POLICY=newest "
                "for development")
        return chosen


def _check_status(status: str) -> str:
    if status not in STATUSES:
        raise RegistryError(f"unknown model approval status {status!r}; use one of {', '.join(STATUSES)}")
    return status


# --- local backend ----------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_package_groups (
    name text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS model_packages (
    group_name text NOT NULL REFERENCES model_package_groups (name),
    version integer NOT NULL,
    arn text NOT NULL UNIQUE,
    status text NOT NULL CHECK (status IN ('PendingManualApproval', 'Approved', 'Rejected')),
    model_version text NOT NULL,
    model_data_url text NOT NULL,
    metrics jsonb NOT NULL,
    data_fingerprint text NOT NULL,
    description text NOT NULL,
    approval_description text,
    created_at timestamptz NOT NULL DEFAULT now(),
    modified_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, version),
    UNIQUE (group_name, model_version)
);
CREATE TABLE IF NOT EXISTS model_package_events (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    arn text NOT NULL,
    status text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"""
_COLUMNS = ("group_name, version, arn, status, model_version, model_data_url, metrics, data_fingerprint, description, "
            "approval_description, created_at, modified_at")


def _package(row) -> ModelPackage:
    (group, version, arn, status, model_version, url, metrics, fingerprint, description, approval, created,
     modified) = row
    return ModelPackage(group, version, arn, status, model_version, url, dict(metrics), fingerprint, description,
                        approval, created, modified)


class LocalModelRegistry(ModelRegistry):
    """Model packages in tables of the application database."""

    db: PostgresDatabase
    _tables: SchemaOnce = PrivateAttr(default_factory=lambda: SchemaOnce("model_packages", _SCHEMA))

    def _connect(self) -> psycopg.Connection:
        return self._tables.connect(self.db)

    def register(self, pipeline: str, *, model_version: str, model_data_url: str, metrics: Mapping[str, float],
                 data_fingerprint: str, description: str = "") -> ModelPackage:
        group = self.group_for(pipeline)
        with self._connect() as conn, conn.transaction():
            conn.execute("INSERT INTO model_package_groups (name) VALUES (%s) ON CONFLICT DO NOTHING", (group,))
            conn.execute("SELECT 1 FROM model_package_groups WHERE name = %s FOR UPDATE", (group,))  # one writer
            existing = conn.execute(f"SELECT {_COLUMNS} FROM model_packages WHERE group_name = %s AND model_version = %s",
                                    (group, model_version)).fetchone()
            if existing:
                return _package(existing)
            version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM model_packages WHERE group_name = %s",
                                   (group,)).fetchone()[0]
            arn = f"arn:mldp:local:model-package/{group}/{version}"
            row = conn.execute(
                f"""INSERT INTO model_packages (group_name, version, arn, status, model_version, model_data_url, metrics,
                                                data_fingerprint, description)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
                (group, version, arn, PENDING, model_version, model_data_url, json.dumps(dict(metrics)),
                 data_fingerprint, description)).fetchone()
            conn.execute("INSERT INTO model_package_events (arn, status) VALUES (%s, %s)", (arn, PENDING))
        return _package(row)

    def packages(self, group: str) -> list[ModelPackage]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM model_packages WHERE group_name = %s ORDER BY version DESC",
                                (group,)).fetchall()
        return [_package(row) for row in rows]

    def set_status(self, group: str, version: int, status: str, reason: str) -> ModelPackage:
        _check_status(status)
        with self._connect() as conn, conn.transaction():
            row = conn.execute(
                f"""UPDATE model_packages SET status = %s, approval_description = %s, modified_at = now()
                    WHERE group_name = %s AND version = %s RETURNING {_COLUMNS}""",
                (status, reason, group, version)).fetchone()
            if row is None:
                raise RegistryError(f"model package group {group} has no version {version}")
            conn.execute("INSERT INTO model_package_events (arn, status) VALUES (%s, %s)", (row[2], status))
        return _package(row)

    def changes(self, cursor: Mapping[str, Any] | None) -> list[StatusChange]:
        after = int((cursor or {}).get("event_id", 0))
        with self._connect() as conn:
            rows = conn.execute(
                f"""SELECT e.event_id, e.status, {', '.join('p.' + c.strip() for c in _COLUMNS.split(','))}
                    FROM model_package_events e LEFT JOIN model_packages p ON p.arn = e.arn
                    WHERE e.event_id > %s AND (p.group_name = ANY(%s) OR p.arn IS NULL)
                    ORDER BY e.event_id""", (after, [self.group_for(p) for p in self.pipelines])).fetchall()
        changes = []
        for event_id, status, *package in rows:
            if package[0] is None:  # an event whose package is gone: nothing to describe
                changes.append(StatusChange(event_id, None, status))
            else:
                changes.append(StatusChange(event_id, _package(package), status))
        return changes

    def advance(self, cursor: Mapping[str, Any] | None, change: StatusChange) -> dict[str, Any]:
        return {**(cursor or {}), "event_id": int(change.position)}


# --- SageMaker backend -------------------------------------------------------------------------------------------

_PROPERTY = "mldp:"  # prefix of the CustomerMetadataProperties this project writes


class SageMakerModelRegistry(ModelRegistry):
    """SageMaker Model Registry (``MODEL_REGISTRY_BACKEND=sagemaker``)."""

    region_name: str = "us-east-1"
    endpoint_url: str | None = None
    inference_image: str = ""  # the container the packages name (the PyTorch inference image)

    def _client(self):
        import boto3

        return boto3.client("sagemaker", region_name=self.region_name, endpoint_url=self.endpoint_url or None)

    def _ensure_group(self, client, group: str) -> None:
        try:
            client.describe_model_package_group(ModelPackageGroupName=group)
        except client.exceptions.ClientError:
            client.create_model_package_group(ModelPackageGroupName=group,
                                              ModelPackageGroupDescription=f"{group}: models of this platform")

    def register(self, pipeline: str, *, model_version: str, model_data_url: str, metrics: Mapping[str, float],
                 data_fingerprint: str, description: str = "") -> ModelPackage:
        existing = self.find(pipeline, model_version)
        if existing:
            return existing
        client = self._client()
        group = self.group_for(pipeline)
        self._ensure_group(client, group)
        properties = {f"{_PROPERTY}model_version": model_version, f"{_PROPERTY}data_fingerprint": data_fingerprint}
        properties.update({f"{_PROPERTY}metric:{k}"[:128]: f"{float(v):.6g}" for k, v in list(metrics.items())[:40]})
        response = client.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=(description or f"{pipeline} model {model_version}")[:1024],
            ModelApprovalStatus=PENDING,
            InferenceSpecification={
                "Containers": [{"Image": self.inference_image or "pytorch-inference", "ModelDataUrl": model_data_url}],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["text/csv"],
            },
            CustomerMetadataProperties=properties,
        )
        return self._describe(client, response["ModelPackageArn"])

    def _describe(self, client, arn: str) -> ModelPackage:
        d = client.describe_model_package(ModelPackageName=arn)
        properties = d.get("CustomerMetadataProperties") or {}
        containers = (d.get("InferenceSpecification") or {}).get("Containers") or [{}]
        metrics = {k[len(_PROPERTY) + 7:]: float(v) for k, v in properties.items() if k.startswith(f"{_PROPERTY}metric:")}
        created = d.get("CreationTime") or datetime.now(timezone.utc)
        return ModelPackage(
            group=d["ModelPackageGroupName"], version=int(d["ModelPackageVersion"]), arn=d["ModelPackageArn"],
            status=d["ModelApprovalStatus"], model_version=properties.get(f"{_PROPERTY}model_version", ""),
            model_data_url=containers[0].get("ModelDataUrl", ""), metrics=metrics,
            data_fingerprint=properties.get(f"{_PROPERTY}data_fingerprint", ""),
            description=d.get("ModelPackageDescription", ""), approval_description=d.get("ApprovalDescription"),
            created_at=created, modified_at=d.get("LastModifiedTime") or created,
        )

    def packages(self, group: str) -> list[ModelPackage]:
        client = self._client()
        summaries, token = [], None
        while True:
            kwargs = {"ModelPackageGroupName": group, "SortBy": "CreationTime", "SortOrder": "Descending"}
            if token:
                kwargs["NextToken"] = token
            try:
                page = client.list_model_packages(**kwargs)
            except client.exceptions.ClientError as exc:
                raise RegistryError(f"cannot list model package group {group}: {exc}") from None
            summaries.extend(page.get("ModelPackageSummaryList", []))
            token = page.get("NextToken")
            if not token:
                break
        packages = [self._describe(client, s["ModelPackageArn"]) for s in summaries]
        return sorted(packages, key=lambda p: p.version, reverse=True)

    def set_status(self, group: str, version: int, status: str, reason: str) -> ModelPackage:
        _check_status(status)
        client = self._client()
        package = self.package(group, version)
        described = client.describe_model_package(ModelPackageName=package.arn)
        client.update_model_package(
            ModelPackageArn=package.arn, ModelApprovalStatus=status, ApprovalDescription=reason[:1024],
            # sent again so that no implementation drops them on update
            CustomerMetadataProperties=described.get("CustomerMetadataProperties") or {},
        )
        return self._describe(client, package.arn)

    def changes(self, cursor: Mapping[str, Any] | None) -> list[StatusChange]:
        seen = dict((cursor or {}).get("statuses", {}))
        found = []
        for pipeline in self.pipelines:
            for package in reversed(self.packages(self.group_for(pipeline))):
                if seen.get(package.arn) != package.status:
                    found.append(StatusChange(package.arn, package, package.status))
        return sorted(found, key=lambda c: (c.package.modified_at, c.package.group, c.package.version))

    def advance(self, cursor: Mapping[str, Any] | None, change: StatusChange) -> dict[str, Any]:
        statuses = dict((cursor or {}).get("statuses", {}))
        statuses[str(change.position)] = change.status
        return {**(cursor or {}), "statuses": statuses}
