"""The model registry: every trained model is a package version in a group `{pipeline}-{env}-models`,
`PendingManualApproval` until someone approves or rejects it.

Two backends with SageMaker's model package semantics (states, versions, approval description):

- `LocalModelRegistry`: tables in the application PostgreSQL, with an append-only log of status changes
  (the local stand-in for EventBridge's "SageMaker Model Package State Change" events). Each event keeps
  the status and reason it was made with; events are numbered in commit order (a table lock), so a
  reader that moves past event n has seen every event before it.
- `SageMakerModelRegistry`: model package groups and packages through boto3; approval with
  `update_model_package`. Status changes are found by polling: each package's status against the last one
  seen (a package seen for the first time in a status other than Pending is reported as registered first).
  Changes that come and go between two polls (Approved and back to Rejected within one interval) are not
  seen; an EventBridge rule is the exact feed on AWS.

The version to put to work is chosen by `select`: the newest Approved package, or with the policy
`newest` (development) the newest package not Rejected. `resolve` checks a version named explicitly
against the same policy.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import psycopg
from pydantic import PrivateAttr

from resources.aws_clients import SENSOR_TIMEOUTS, aws_client
from resources.sagemaker.containers import inference_environment
from resources.sagemaker.images import pytorch_image
from resources.postgres import DatabaseUnavailableError, PostgresDatabase, SchemaOnce
from resources.settings import DEFAULTS

STATE_CHANGE = "SageMaker Model Package State Change"  # the EventBridge detail-type
_PROPERTY = "mldp:"  # prefix of the CustomerMetadataProperties this project writes
PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, REJECTED)


class RegistryError(RuntimeError):
    """A package or group is missing, or a change is not allowed; the message names it."""


def customer_metadata(model_version: str, data_fingerprint: str, metrics: Mapping[str, float]) -> dict[str, str]:
    """The CustomerMetadataProperties of a package this platform registers (SageMaker allows 50, keys <= 128)."""
    properties = {f"{_PROPERTY}model_version": model_version, f"{_PROPERTY}data_fingerprint": data_fingerprint}
    properties.update({f"{_PROPERTY}metric:{k}"[:128]: f"{float(v):.6g}" for k, v in list(metrics.items())[:40]})
    return properties


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
    """A package reached `status` (an EventBridge 'Model Package State Change', in effect).

    `package` is the package as it is now (its status may have moved on since); `status`, `reason` and `at`
    are the change's own.
    """

    position: Any  # where the change sits in the registry's change stream (backend-specific)
    package: ModelPackage | None
    status: str
    reason: str | None = None
    at: datetime | None = None
    event: dict[str, Any] | None = None  # the EventBridge event itself, when the change came as one

    @property
    def key(self) -> str:
        """What identifies the change in logs and run keys: the event's id for a queued event (never the
        message's receipt handle, which changes with every delivery), else its position."""
        if isinstance(self.position, dict):
            return str(self.position.get("event_id") or self.position.get("message_id"))
        return str(self.position)

    def as_event(self) -> dict[str, Any]:
        """The change as EventBridge's "SageMaker Model Package State Change" event: the one received, or one
        of the same shape for changes read from the registry (so subscribers see one shape either way)."""
        if self.event is not None:
            return self.event
        package = self.package
        if package is None:
            raise RegistryError(f"registry change {self.position} names no model package")
        parts = package.arn.split(":")
        aws_arn = len(parts) > 5 and parts[0] == "arn" and parts[2] == "sagemaker"
        at = self.at or package.modified_at
        detail = {
            "ModelPackageGroupName": package.group,
            "ModelPackageVersion": package.version,
            "ModelPackageArn": package.arn,
            "ModelPackageName": package.group,
            "ModelPackageDescription": package.description,
            "CreationTime": int(package.created_at.timestamp() * 1000),
            "LastModifiedTime": int(at.timestamp() * 1000),
            "InferenceSpecification": {"Containers": [{"ModelDataUrl": package.model_data_url}]},
            "ModelApprovalStatus": self.status,
            "ModelPackageStatus": "Completed",
            "CustomerMetadataProperties": customer_metadata(package.model_version, package.data_fingerprint,
                                                            package.metrics),
        }
        if self.reason:
            detail["ApprovalDescription"] = self.reason
        return {
            "version": "0",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{package.arn}#{self.position}#{self.status}#{at.isoformat()}")),
            "detail-type": STATE_CHANGE,
            "source": "aws.sagemaker",
            "account": parts[4] if aws_arn else "000000000000",
            "time": at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": parts[3] if aws_arn else "local",
            "resources": [package.arn],
            "detail": detail,
        }


class ModelRegistry(dg.ConfigurableResource, ABC):
    """Model package groups `{pipeline}-{env}-models` and their versions."""

    env: str = "dev"
    version_policy: str = "approved"  # or "newest": for development, use the newest package regardless
    pipelines: list[str] = ["credit", "recsys"]  # whose groups the change feed watches

    def group_for(self, pipeline: str) -> str:
        return f"{pipeline}-{self.env}-models"

    def pipeline_of(self, group: str) -> str | None:
        """The pipeline whose group this is (None for a group of another naming or environment)."""
        suffix = f"-{self.env}-models"
        return group[: -len(suffix)] if group.endswith(suffix) else None

    @abstractmethod
    def register(self, pipeline: str, *, model_version: str, model_data_url: str, metrics: Mapping[str, float],
                 data_fingerprint: str, description: str = "", content_types: Sequence[str] = ("text/csv",)) -> ModelPackage:
        """A new PendingManualApproval package (or the existing one for this model version); `content_types`
        are what the model's inference code reads and answers."""

    @abstractmethod
    def packages(self, group: str) -> list[ModelPackage]:
        """The group's packages, newest first (empty when the group does not exist)."""

    def _newest_first(self, group: str) -> Iterator[ModelPackage]:
        """The group's packages newest first, for look-ups that stop at the first match (a backend where
        each package costs a call describes them one at a time)."""
        yield from self.packages(group)

    @abstractmethod
    def set_status(self, group: str, version: int, status: str, reason: str) -> ModelPackage: ...

    @abstractmethod
    def changes(self, cursor: Mapping[str, Any] | None, limit: int | None = None) -> list[StatusChange]:
        """Status changes after `cursor` (a JSON-able mapping; None: from the beginning), oldest first; at
        most `limit` of them."""

    @abstractmethod
    def advance(self, cursor: Mapping[str, Any] | None, change: StatusChange) -> dict[str, Any]:
        """The cursor once `change` has been handled."""

    def package(self, group: str, version: int) -> ModelPackage:
        for package in self._newest_first(group):
            if package.version == version:
                return package
        raise RegistryError(f"model package group {group} has no version {version}")

    def find(self, pipeline: str, model_version: str) -> ModelPackage | None:
        return next((p for p in self._newest_first(self.group_for(pipeline)) if p.model_version == model_version), None)

    def approve(self, group: str, version: int, reason: str) -> ModelPackage:
        return self.set_status(group, version, APPROVED, reason)

    def reject(self, group: str, version: int, reason: str) -> ModelPackage:
        return self.set_status(group, version, REJECTED, reason)

    def select(self, pipeline: str) -> ModelPackage:
        """The package to put to work under the version policy; a clear error when there is none."""
        group = self.group_for(pipeline)
        wanted = (lambda p: p.status == APPROVED) if self.version_policy == "approved" else (lambda p: p.status != REJECTED)
        first = chosen = None
        for package in self._newest_first(group):
            first = first or package
            if wanted(package):
                chosen = package
                break
        if chosen is None:
            newest = f" (newest: version {first.version}, {first.status})" if first else ""
            raise RegistryError(
                f"no {'Approved' if self.version_policy == 'approved' else 'usable'} model in {group}{newest}: approve "
                f"one with `mldp registry approve {group} <version> --reason ...`, or set MODEL_VERSION_POLICY=newest "
                "for development")
        return chosen

    def resolve(self, pipeline: str, model_version: str = "") -> ModelPackage | None:
        """The package to use: `select` when `model_version` is empty, else that version's package, checked
        against the policy (`approved`: it must be Approved; `newest`: it must not be Rejected, and may
        be unregistered, giving None)."""
        if not model_version:
            return self.select(pipeline)
        group = self.group_for(pipeline)
        package = self.find(pipeline, model_version)
        if package is None:
            if self.version_policy == "approved":
                raise RegistryError(f"model version {model_version} is not registered in {group}, and only Approved "
                                    "models are used (MODEL_VERSION_POLICY=approved)")
            return None
        if package.status == REJECTED or (self.version_policy == "approved" and package.status != APPROVED):
            raise RegistryError(
                f"model version {model_version} is {package.status} in {group} (version {package.version}"
                + (f": {package.approval_description}" if package.approval_description else "")
                + f"); {'only Approved models are used' if self.version_policy == 'approved' else 'Rejected models are not used'}")
        return package


def _check_change(status: str, reason: str) -> None:
    if status not in STATUSES:
        raise RegistryError(f"unknown model approval status {status!r}; use one of {', '.join(STATUSES)}")
    if status != PENDING and not str(reason or "").strip():
        raise RegistryError(f"a reason is required to set a model package to {status}")


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
    at timestamptz NOT NULL DEFAULT now(),
    reason text
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
    _tables: SchemaOnce = PrivateAttr(default_factory=lambda: SchemaOnce(_SCHEMA))

    def _connect(self) -> psycopg.Connection:
        try:
            return self._tables.connect(self.db)
        except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
            raise RegistryError(f"the model registry's database is unreachable: {exc}") from None

    @staticmethod
    def _append_event(conn: psycopg.Connection, arn: str, status: str, reason: str | None) -> None:
        """Log a change inside the caller's transaction. The table lock (one writer at a time; readers are
        not blocked) is held until commit, so a transaction that got a lower event id has always committed
        before a higher one becomes visible. It takes a write privilege, unlike an advisory lock, so no
        read-only session can hold it."""
        conn.execute("LOCK TABLE model_package_events IN SHARE ROW EXCLUSIVE MODE")
        conn.execute("INSERT INTO model_package_events (arn, status, reason) VALUES (%s, %s, %s)", (arn, status, reason))

    def register(self, pipeline: str, *, model_version: str, model_data_url: str, metrics: Mapping[str, float],
                 data_fingerprint: str, description: str = "", content_types: Sequence[str] = ("text/csv",)) -> ModelPackage:
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
            self._append_event(conn, arn, PENDING, None)
        return _package(row)

    def packages(self, group: str) -> list[ModelPackage]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM model_packages WHERE group_name = %s ORDER BY version DESC",
                                (group,)).fetchall()
        return [_package(row) for row in rows]

    def set_status(self, group: str, version: int, status: str, reason: str) -> ModelPackage:
        """Change a package's status; setting the status it already has only updates the reason (no event,
        as on SageMaker, where such an update is not a state change)."""
        _check_change(status, reason)
        with self._connect() as conn, conn.transaction():
            current = conn.execute("SELECT status FROM model_packages WHERE group_name = %s AND version = %s FOR UPDATE",
                                   (group, version)).fetchone()
            if current is None:
                raise RegistryError(f"model package group {group} has no version {version}")
            row = conn.execute(
                f"""UPDATE model_packages SET status = %s, approval_description = %s, modified_at = now()
                    WHERE group_name = %s AND version = %s RETURNING {_COLUMNS}""",
                (status, reason, group, version)).fetchone()
            if current[0] != status:
                self._append_event(conn, row[2], status, reason)
        return _package(row)

    def changes(self, cursor: Mapping[str, Any] | None, limit: int | None = None) -> list[StatusChange]:
        after = int((cursor or {}).get("event_id", 0))
        with self._connect() as conn:
            rows = conn.execute(
                f"""SELECT e.event_id, e.status, e.reason, e.at, {', '.join('p.' + c.strip() for c in _COLUMNS.split(','))}
                    FROM model_package_events e LEFT JOIN model_packages p ON p.arn = e.arn
                    WHERE e.event_id > %s AND (p.group_name = ANY(%s) OR p.arn IS NULL)
                    ORDER BY e.event_id LIMIT %s""", (after, [self.group_for(p) for p in self.pipelines], limit)).fetchall()
        return [StatusChange(event_id, _package(package) if package[0] is not None else None,  # None: package gone
                             status, reason, at)
                for event_id, status, reason, at, *package in rows]

    def advance(self, cursor: Mapping[str, Any] | None, change: StatusChange) -> dict[str, Any]:
        return {**(cursor or {}), "event_id": int(change.position)}


# --- SageMaker backend -------------------------------------------------------------------------------------------



class SageMakerModelRegistry(ModelRegistry):
    """SageMaker Model Registry (`MODEL_REGISTRY_BACKEND=sagemaker`)."""

    # the serving container the packages name: `inference_image`, or the PyTorch inference image of these
    # settings (the defaults are the settings', resources.settings.PlatformSettings, as SageMakerJobs' are)
    region_name: str = DEFAULTS["aws_region"]
    endpoint_url: str | None = None
    inference_image: str | None = None
    inference_framework_version: str = DEFAULTS["sagemaker_inference_framework_version"]
    py_version: str = DEFAULTS["sagemaker_py_version"]
    instance_type: str = DEFAULTS["sagemaker_instance_type"]
    # an SQS queue fed by an EventBridge rule on "SageMaker Model Package State Change" for this environment's
    # groups; without it, changes are found by polling the groups
    events_queue_url: str | None = None
    visibility_timeout_seconds: int = 120  # an event being handled stays hidden from other readers this long
    remembered_events: int = 500  # event ids kept in the cursor against SQS's at-least-once redelivery

    def _client(self):
        # short timeouts: the registry is read from sensors, which must answer within Dagster's tick timeout
        return aws_client("sagemaker", region_name=self.region_name, endpoint_url=self.endpoint_url, **SENSOR_TIMEOUTS)

    def _inference_image(self) -> str:
        return self.inference_image or pytorch_image("inference", region=self.region_name,
                                                     version=self.inference_framework_version,
                                                     py_version=self.py_version, instance_type=self.instance_type)

    def _ensure_group(self, client, group: str) -> None:
        try:
            client.describe_model_package_group(ModelPackageGroupName=group)
        except client.exceptions.ClientError:
            client.create_model_package_group(ModelPackageGroupName=group,
                                              ModelPackageGroupDescription=f"{group}: models of this platform")

    def register(self, pipeline: str, *, model_version: str, model_data_url: str, metrics: Mapping[str, float],
                 data_fingerprint: str, description: str = "", content_types: Sequence[str] = ("text/csv",)) -> ModelPackage:
        existing = self.find(pipeline, model_version)
        if existing:
            return existing
        client = self._client()
        group = self.group_for(pipeline)
        self._ensure_group(client, group)
        properties = customer_metadata(model_version, data_fingerprint, metrics)
        response = client.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=(description or f"{pipeline} model {model_version}")[:1024],
            ModelApprovalStatus=PENDING,
            # served as the platform serves it: the code inside model.tar.gz, in the PyTorch inference image
            InferenceSpecification={
                "Containers": [{"Image": self._inference_image(), "ModelDataUrl": model_data_url,
                                "Environment": inference_environment(region=self.region_name)}],
                "SupportedContentTypes": list(content_types),
                "SupportedResponseMIMETypes": list(content_types),
            },
            CustomerMetadataProperties=properties,
        )
        return self._describe(client, response["ModelPackageArn"])

    def _describe(self, client, arn: str) -> ModelPackage:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            d = client.describe_model_package(ModelPackageName=arn)
        except (ClientError, BotoCoreError) as exc:
            raise RegistryError(f"cannot describe model package {arn}: {exc}") from None
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

    def _summaries(self, client, group: str) -> list[dict]:
        """Every package summary of the group (ARN, version, approval status), all pages."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = client.get_paginator("list_model_packages").paginate(
                ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending")
            return [summary for page in pages for summary in page.get("ModelPackageSummaryList", [])]
        except (ClientError, BotoCoreError) as exc:
            raise RegistryError(f"cannot list model package group {group}: {exc}") from None

    def packages(self, group: str) -> list[ModelPackage]:
        return list(self._newest_first(group))

    def _newest_first(self, group: str) -> Iterator[ModelPackage]:
        client = self._client()
        summaries = sorted(self._summaries(client, group), key=lambda s: int(s["ModelPackageVersion"]), reverse=True)
        for summary in summaries:
            yield self._describe(client, summary["ModelPackageArn"])

    def set_status(self, group: str, version: int, status: str, reason: str) -> ModelPackage:
        _check_change(status, reason)
        client = self._client()
        package = self.package(group, version)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            described = client.describe_model_package(ModelPackageName=package.arn)
            client.update_model_package(
                ModelPackageArn=package.arn, ModelApprovalStatus=status, ApprovalDescription=reason[:1024],
                # sent again so that no implementation drops them on update
                CustomerMetadataProperties=described.get("CustomerMetadataProperties") or {},
            )
        except (ClientError, BotoCoreError) as exc:
            raise RegistryError(f"cannot set {package.arn} to {status}: {exc}") from None
        return self._describe(client, package.arn)

    def changes(self, cursor: Mapping[str, Any] | None, limit: int | None = None) -> list[StatusChange]:
        if self.events_queue_url:
            return self._queued_changes(cursor, limit)
        return self._polled_changes(cursor, limit)

    def advance(self, cursor: Mapping[str, Any] | None, change: StatusChange) -> dict[str, Any]:
        if isinstance(change.position, dict) and "receipt_handle" in change.position:
            return self._acknowledge(cursor, change)
        statuses = dict((cursor or {}).get("statuses", {}))
        statuses[str(change.position)] = change.status
        return {**(cursor or {}), "statuses": statuses}

    # --- the events queue ------------------------------------------------------------------------------------

    def _queued_changes(self, cursor: Mapping[str, Any] | None, limit: int | None) -> list[StatusChange]:
        """The state-change events waiting in the queue, oldest first. An event already handled (SQS delivers
        at least once) is deleted at once; a message that is not such an event, or names a package of another
        environment or one that is gone, comes back with no package, so the sensor reports and skips it."""
        from botocore.exceptions import BotoCoreError, ClientError

        queue = aws_client("sqs", region_name=self.region_name, endpoint_url=self.endpoint_url, **SENSOR_TIMEOUTS)
        handled = set((cursor or {}).get("events", []))
        wanted = limit or 100
        found: list[StatusChange] = []
        received: set[str] = set()  # a message can show again within one call once its visibility lapses
        try:
            while len(found) < wanted:
                messages = [m for m in queue.receive_message(
                    QueueUrl=self.events_queue_url, MaxNumberOfMessages=min(10, wanted - len(found)),
                    WaitTimeSeconds=0, VisibilityTimeout=self.visibility_timeout_seconds).get("Messages", [])
                    if m.get("MessageId") not in received]
                if not messages:
                    break
                for message in messages:
                    received.add(message.get("MessageId"))
                    change = self._change_from_message(message)
                    if change.event is not None and change.key in handled:  # a copy of a handled or found event
                        queue.delete_message(QueueUrl=self.events_queue_url, ReceiptHandle=message["ReceiptHandle"])
                        continue
                    if change.event is not None:
                        handled.add(change.key)
                    found.append(change)
        except (ClientError, BotoCoreError) as exc:
            raise RegistryError(f"cannot read the registry events queue {self.events_queue_url}: {exc}") from None
        found.sort(key=lambda c: (c.at or datetime.min.replace(tzinfo=timezone.utc), c.status != PENDING))
        return found

    def _change_from_message(self, message: Mapping[str, Any]) -> StatusChange:
        position = {"message_id": message.get("MessageId"), "receipt_handle": message["ReceiptHandle"]}
        try:
            event = json.loads(message.get("Body") or "")
            detail = event["detail"]
            fields = (event["id"], event["time"], detail["ModelPackageArn"], detail["ModelPackageGroupName"],
                      detail["ModelApprovalStatus"])
            if not all(isinstance(field, str) for field in fields):
                raise TypeError("id, time, detail.ModelPackageArn, .ModelPackageGroupName and .ModelApprovalStatus "
                                "must be text")
            event_id, time, arn, group, status = fields
            at = datetime.fromisoformat(time.replace("Z", "+00:00"))
            at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as exc:
            return StatusChange(position, None, f"unreadable message {message.get('MessageId')}: {exc!r}"[:300])
        position["event_id"] = event_id
        if event.get("detail-type") != STATE_CHANGE or self.pipeline_of(group) not in self.pipelines:
            return StatusChange(position, None, f"{event.get('detail-type')!r} event for group {group!r}"[:300], at=at,
                                event=event)
        try:
            package = self._describe(self._client(), arn)
        except RegistryError as exc:
            return StatusChange(position, None, f"{status} ({exc})"[:300], at=at, event=event)
        return StatusChange(position, package, status, detail.get("ApprovalDescription"), at, event)

    def _acknowledge(self, cursor: Mapping[str, Any] | None, change: StatusChange) -> dict[str, Any]:
        """Delete the handled message; remember its event id against a redelivery."""
        from botocore.exceptions import BotoCoreError, ClientError

        queue = aws_client("sqs", region_name=self.region_name, endpoint_url=self.endpoint_url, **SENSOR_TIMEOUTS)
        try:
            queue.delete_message(QueueUrl=self.events_queue_url, ReceiptHandle=change.position["receipt_handle"])
        except (ClientError, BotoCoreError) as exc:
            raise RegistryError(f"cannot delete message {change.position.get('message_id')} from "
                                f"{self.events_queue_url}: {exc}") from None
        events = list((cursor or {}).get("events", []))
        if change.position.get("event_id"):
            events = (events + [change.position["event_id"]])[-self.remembered_events:]
        return {**(cursor or {}), "events": events}

    # --- polling ---------------------------------------------------------------------------------------------

    def _polled_changes(self, cursor: Mapping[str, Any] | None, limit: int | None = None) -> list[StatusChange]:
        """Packages whose status differs from the one last seen; only those are described. A package seen
        for the first time in another status than Pending also gives its registration first. With `limit`,
        the oldest changed packages are described first and describing stops once enough are found (the
        rest come on the next call)."""
        seen = dict((cursor or {}).get("statuses", {}))
        client = self._client()
        changed = [summary for pipeline in self.pipelines for summary in self._summaries(client, self.group_for(pipeline))
                   if seen.get(summary["ModelPackageArn"]) != summary.get("ModelApprovalStatus")]
        changed.sort(key=lambda summary: (str(summary.get("CreationTime", "")), summary["ModelPackageArn"]))
        found: list[StatusChange] = []
        for summary in changed:
            if limit is not None and len(found) >= limit:
                break
            arn = summary["ModelPackageArn"]
            package = self._describe(client, arn)
            if arn not in seen and package.status != PENDING:
                found.append(StatusChange(arn, package, PENDING, None, package.created_at))
            found.append(StatusChange(arn, package, package.status, package.approval_description,
                                      package.modified_at))
        found.sort(key=lambda c: (c.at, c.status != PENDING, c.package.group, c.package.version))
        return found[:limit] if limit is not None else found
