"""Read-only database access for data science: the read replica in production, a read-only role locally.

Three ways to get credentials, one interface (`ReadOnlyDatabase`):

- `ReadOnlyUrlDatabase`: ``READONLY_DATABASE_URL`` (the replica's endpoint with a read-only user);
- `SecretsManagerReadOnlyDatabase`: an AWS Secrets Manager secret (JSON with host, port, username,
  password, dbname/database), read through dagster-aws;
- `ProvisionedReadOnlyDatabase`: neither given: a read-only role is created on the application database
  (CONNECT, USAGE, SELECT on every table, default privileges for future tables) and used to log in.

Every connection also runs its transactions READ ONLY, but the guarantee is the server's: the role has no
write privilege, so even SQL that ends the read-only transaction cannot change data.

Usable outside Dagster, e.g. in a notebook::

    from resources.settings import open_resources
    with open_resources() as r:
        r.readonly_db.query("select count(*) from customers")
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
from dagster_aws.secretsmanager import SecretsManagerResource
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import PrivateAttr

from resources.postgres import (
    PostgresDatabase,
    connect_or_explain,
    fetch_dataframe,
    normalize_postgres_url,
    redact_url,
)


# Every session starts with read-only transactions as its default, so even SQL that ends the current
# transaction ("COMMIT; DELETE ...") runs the next one read-only. The server-side guarantee remains the
# role's missing write privileges (a replica refuses writes anyway).
READ_ONLY_SESSION = "-c default_transaction_read_only=on"


class SecretConfigurationError(ValueError):
    """The Secrets Manager secret is missing, unreadable or lacks a key; names the secret and key only."""


@dataclass(frozen=True)
class ConnectionReport:
    """What `test_connection` found: who we are connected as and that writes are refused."""

    server_version: str
    database: str
    user: str
    transaction_read_only: bool
    can_write_any_table: bool

    @property
    def ok(self) -> bool:
        return self.transaction_read_only and not self.can_write_any_table


class ReadOnlyDatabase(dg.ConfigurableResource, ABC):
    """Read-only SQL access returning pandas DataFrames."""

    @abstractmethod
    def _open(self) -> psycopg.Connection:
        """A new connection to the read-only endpoint."""

    @abstractmethod
    def describe(self) -> str:
        """Where this reads from, safe to log."""

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        conn = self._open()
        conn.read_only = True
        try:
            yield conn
        finally:
            conn.close()

    def query(self, query: str | sql.Composable, params: Mapping[str, Any] | tuple | list | None = None) -> pd.DataFrame:
        """Run one SELECT and return its rows as a DataFrame (columns named as in the result)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(query, params)
            if cur.description is None:
                return pd.DataFrame()
            return fetch_dataframe(cur)

    def query_chunks(
        self,
        query: str | sql.Composable,
        params: Mapping[str, Any] | tuple | list | None = None,
        *,
        chunk_rows: int = 100_000,
    ) -> Iterator[pd.DataFrame]:
        """Stream a large result through a server-side cursor, `chunk_rows` rows per DataFrame."""
        with self.connect() as conn, conn.transaction():
            with conn.cursor(name="readonly_stream") as cur:
                cur.itersize = chunk_rows
                cur.execute(query, params)
                names = [column.name for column in cur.description]
                while rows := cur.fetchmany(chunk_rows):
                    yield pd.DataFrame.from_records(rows, columns=names)

    def test_connection(self) -> ConnectionReport:
        """Connect, report identity, and confirm the session cannot write (privileges and transaction)."""
        with self.connect() as conn:
            version, database, user, read_only = conn.execute(
                "SELECT current_setting('server_version'), current_database(), current_user, "
                "current_setting('transaction_read_only')"
            ).fetchone()
            writable = conn.execute(
                """
                SELECT (SELECT count(*) FROM information_schema.tables t
                        WHERE t.table_schema NOT IN ('pg_catalog', 'information_schema')
                          AND t.table_type = 'BASE TABLE'
                          AND (has_table_privilege(format('%I.%I', t.table_schema, t.table_name), 'INSERT')
                            OR has_table_privilege(format('%I.%I', t.table_schema, t.table_name), 'UPDATE')
                            OR has_table_privilege(format('%I.%I', t.table_schema, t.table_name), 'DELETE')
                            OR has_table_privilege(format('%I.%I', t.table_schema, t.table_name), 'TRUNCATE')))
                     + (SELECT count(*) FROM pg_namespace n
                        WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
                          AND has_schema_privilege(n.oid, 'CREATE'))
                """
            ).fetchone()[0]
        return ConnectionReport(
            server_version=version,
            database=database,
            user=user,
            transaction_read_only=read_only == "on",
            can_write_any_table=writable > 0,
        )


class ReadOnlyUrlDatabase(ReadOnlyDatabase):
    """The read replica (or a read-only user) given by ``READONLY_DATABASE_URL``."""

    url: str

    def _open(self) -> psycopg.Connection:
        return connect_or_explain(normalize_postgres_url(self.url), describe=self.describe(), options=READ_ONLY_SESSION)

    def describe(self) -> str:
        return f"{redact_url(self.url)} (READONLY_DATABASE_URL)"


SECRET_KEYS_REQUIRED = ("host", "username", "password")


def credentials_from_secret(secret_id: str, secret_string: str | None) -> dict[str, Any]:
    """libpq keyword arguments from an RDS-style secret; errors name the secret and key, never values."""
    if not secret_string:
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} has no SecretString (binary secrets are not supported)")
    try:
        payload = json.loads(secret_string)
    except json.JSONDecodeError:
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} is not a JSON object") from None
    if not isinstance(payload, dict):
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} is not a JSON object")
    missing = [key for key in SECRET_KEYS_REQUIRED if not payload.get(key)]
    if not (payload.get("dbname") or payload.get("database")):
        missing.append("dbname (or database)")
    if missing:
        raise SecretConfigurationError(
            f"Secrets Manager secret {secret_id!r} is missing key(s) {', '.join(repr(m) for m in missing)}; "
            "it needs host, port (optional, 5432), username, password and dbname or database"
        )
    port = payload.get("port", 5432)
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise SecretConfigurationError(f"Secrets Manager secret {secret_id!r} has a non-numeric 'port'") from None
    return {
        "host": str(payload["host"]),
        "port": port,
        "user": str(payload["username"]),
        "password": str(payload["password"]),
        "dbname": str(payload.get("dbname") or payload["database"]),
    }


class SecretsManagerReadOnlyDatabase(ReadOnlyDatabase):
    """Credentials from an AWS Secrets Manager secret (``READONLY_DATABASE_SECRET_ID``)."""

    secret_id: str
    secretsmanager: SecretsManagerResource
    _credentials: dict[str, Any] | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _fetch_credentials(self) -> dict[str, Any]:
        with self._lock:
            if self._credentials is None:
                client = self.secretsmanager.get_client()
                try:
                    response = client.get_secret_value(SecretId=self.secret_id)
                except client.exceptions.ResourceNotFoundException:
                    raise SecretConfigurationError(f"Secrets Manager secret {self.secret_id!r} does not exist") from None
                self._credentials = credentials_from_secret(self.secret_id, response.get("SecretString"))
            return self._credentials

    def _open(self) -> psycopg.Connection:
        return connect_or_explain(describe=self.describe(), options=READ_ONLY_SESSION, **self._fetch_credentials())

    def describe(self) -> str:
        return f"the database in Secrets Manager secret {self.secret_id!r}"


_provisioned: set[tuple[str, str]] = set()
_provision_lock = threading.Lock()


def provision_readonly_role(primary: PostgresDatabase, role: str) -> None:
    """Create `role` (LOGIN, read-only) on the primary's database and grant it SELECT, now and in future.

    Idempotent; safe to run from several processes at once.
    """
    key = (primary.describe(), role)
    if key in _provisioned:
        return
    with _provision_lock, primary.connect(autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        ident = sql.Identifier(role)
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            try:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT").format(ident)
                )
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass
        statements = [
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), ident),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(ident),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(ident),
        ]
        for statement in statements:
            try:
                conn.execute(statement)
            except psycopg.errors.InternalError_:
                # "tuple concurrently updated": another process granted at the same moment
                conn.execute(statement)
        _provisioned.add(key)


class ProvisionedReadOnlyDatabase(ReadOnlyDatabase):
    """A read-only role created on the application database and logged in as (local default).

    Logging in as the role needs no password on the embedded server (local trust authentication). On an
    external server that requires passwords, set ``READONLY_DATABASE_URL`` instead.
    """

    primary: PostgresDatabase
    role: str = "mldp_readonly"

    def _open(self) -> psycopg.Connection:
        provision_readonly_role(self.primary, self.role)
        params = conninfo_to_dict(self.primary.conninfo())
        params.pop("password", None)
        params["user"] = self.role
        return connect_or_explain(make_conninfo(**params), describe=self.describe(), options=READ_ONLY_SESSION)

    def describe(self) -> str:
        return f"role {self.role!r} on {self.primary.describe()}"
