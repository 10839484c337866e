"""Read-only database access for data science: the read replica in production, a read-only role locally.

Three ways to get credentials, one interface (`ReadOnlyDatabase`):

- `ReadOnlyUrlDatabase`: `READONLY_DATABASE_URL` (the replica's endpoint with a read-only user);
- `SecretsManagerReadOnlyDatabase`: an AWS Secrets Manager secret (JSON with host, port, username,
  password, dbname/database), read through dagster-aws;
- `ProvisionedReadOnlyDatabase`: neither given: a read-only role is created on the application database
  (CONNECT, USAGE, SELECT on every table, default privileges for future tables) and used to log in.

Writes are refused twice over: the role has no write privilege (the server's guarantee), and every call
sends one statement in a READ ONLY transaction that is never committed, refusing transaction control, so
nothing a session can do without a privilege (large objects, its own settings and password) lasts either.
`test_connection` (`mldp readonly-check`) tries each of those and reports what became of it.

Usable outside Dagster, e.g. in a notebook::

    from resources.settings import open_resources
    with open_resources() as r:
        r.readonly_db.query("select count(*) from customers")
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
from dagster_aws.secretsmanager import SecretsManagerResource
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import PrivateAttr

from resources.credentials import (  # noqa: F401  (the secret's parsing: re-exported)
    SECRET_KEYS_REQUIRED,
    SecretConfigurationError,
    UnusableConnectionString,
    credentials_from_secret,
)
from resources.postgres import (
    PostgresDatabase,
    connect_or_explain,
    fetch_dataframe,
    normalize_postgres_url,
    redact_url,
)


DEFAULT_STATEMENT_TIMEOUT_SECONDS = 600


def session_options(statement_timeout_seconds: int) -> str:
    """Every session starts with read-only transactions as its default (and the provisioned role has it as a
    role setting); the resource itself opens every transaction READ ONLY and never commits one. A statement,
    and a transaction left idle (a half-read `query_chunks`), end after `statement_timeout_seconds`: no reader
    holds a table for longer, so the loads that swap tables (which keep trying for longer) always get them."""
    milliseconds = max(1, statement_timeout_seconds) * 1000
    return (f"-c default_transaction_read_only=on -c statement_timeout={milliseconds} "
            f"-c idle_in_transaction_session_timeout={milliseconds}")

# Statements that end, split or outlive the resource's transaction: refused before they are sent.
_TRANSACTION_CONTROL = re.compile(
    r"(begin|start|commit|end|rollback|abort|savepoint|release|prepare\s+transaction|"
    r"set\s+(session\s+characteristics|transaction)|discard)\b", re.IGNORECASE)
_MULTIPLE_COMMANDS = "cannot insert multiple commands into a prepared statement"


class ReadOnlyViolation(PermissionError):
    """A statement the read-only resource does not send (transaction control, several statements at once)."""


def statement_start(text: str) -> str:
    """The statement without the whitespace and comments (`--` lines, nested `/* */`) before it."""
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if text.startswith("--", position):
            newline = text.find("\n", position)
            position = len(text) if newline < 0 else newline + 1
        elif text.startswith("/*", position):
            depth, position = 1, position + 2
            while depth and position < len(text):
                if text.startswith("/*", position):
                    depth, position = depth + 1, position + 2
                elif text.startswith("*/", position):
                    depth, position = depth - 1, position + 2
                else:
                    position += 1
        else:
            return text[position:]


@dataclass(frozen=True)
class ConnectionReport:
    """What `test_connection` found: who we are connected as, that writes are refused, and what became of
    each way a session could try to leave a lasting change or block the application (`probes`: what was
    tried -> "refused: <why>", or "ALLOWED")."""

    server_version: str
    database: str
    user: str
    transaction_read_only: bool
    can_write_any_table: bool
    probes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.transaction_read_only and not self.can_write_any_table
                and all(outcome.startswith("refused") for outcome in self.probes.values()))


# Each is sent through `query`, in a read-only transaction that is never committed: even one that got
# through would leave nothing behind. The table names are the ones the write-back and the model registry
# lock (a lock that needs a write privilege; the application takes no advisory lock a reader could hold).
ESCAPE_PROBES = {
    "several statements in one call": "SELECT 1; SELECT 2",
    "transaction control": "COMMIT",
    "leaving the read-only transaction": "COMMIT; SET default_transaction_read_only = off; COMMIT; SELECT lo_create(0)",
    "a procedure that commits": "DO $$ BEGIN COMMIT; END $$",
    "a large object": "SELECT lo_create(0)",
    "its own settings": "ALTER ROLE CURRENT_USER SET work_mem = '64kB'",
    "its own password": "ALTER ROLE CURRENT_USER PASSWORD NULL",
    "the write-back's lock": "LOCK TABLE credit_limit_audit IN SHARE ROW EXCLUSIVE MODE",
    "the model registry's lock": "LOCK TABLE model_package_events IN SHARE ROW EXCLUSIVE MODE",
}


class ReadOnlyDatabase(dg.ConfigurableResource, ABC):
    """Read-only SQL access returning pandas DataFrames.

    `statement_timeout_seconds` (`READONLY_STATEMENT_TIMEOUT_SECONDS`, 600 by default) ends a query, or a
    transaction left idle, that holds the tables longer.

    One statement per call, in a READ ONLY transaction of a connection of its own that is closed (never
    committed) afterwards; transaction control is refused before it is sent, and several statements in one
    string are refused by the server (the extended query protocol carries exactly one). So nothing sent
    through it leaves a lasting change: no large object, no role setting or password, no write.
    """

    statement_timeout_seconds: int = DEFAULT_STATEMENT_TIMEOUT_SECONDS

    @abstractmethod
    def _open(self) -> psycopg.Connection:
        """A new connection to the read-only endpoint."""

    @property
    def _options(self) -> str:
        return session_options(self.statement_timeout_seconds)

    @abstractmethod
    def describe(self) -> str:
        """Where this reads from, safe to log."""

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection]:
        """A connection whose every transaction is READ ONLY, closed (and so rolled back) at the end."""
        conn = self._open()
        conn.read_only = True
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _refuse_transaction_control(cur: psycopg.Cursor, query: str | sql.Composable) -> None:
        text = query.as_string(cur) if isinstance(query, sql.Composable) else str(query)
        if _TRANSACTION_CONTROL.match(statement_start(text)):
            raise ReadOnlyViolation("transaction control is not sent through the read-only resource: each call runs "
                                    "in a read-only transaction of its own")

    def _guarded_execute(self, cur: psycopg.Cursor, query: str | sql.Composable, params) -> None:
        self._refuse_transaction_control(cur, query)
        try:
            cur.execute(query, params, prepare=True)  # prepared: the extended protocol, one statement only
        except psycopg.errors.SyntaxError as exc:
            if _MULTIPLE_COMMANDS in str(exc):
                raise ReadOnlyViolation("one statement per call: the read-only resource does not send several "
                                        "statements at once") from None
            raise
        if cur.connection.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            raise ReadOnlyViolation("the statement ended the read-only transaction; transaction control is not sent "
                                    "through the read-only resource")

    def query(self, query: str | sql.Composable, params: Mapping[str, Any] | tuple | list | None = None) -> pd.DataFrame:
        """Run one statement (a SELECT) and return its rows as a DataFrame (columns named as in the result)."""
        with self._session() as conn, conn.cursor() as cur:
            self._guarded_execute(cur, query, params)
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
        """Stream a large result through a server-side cursor, `chunk_rows` rows per DataFrame. The cursor is
        declared with the extended protocol (one statement) in the session's read-only transaction."""
        with self._session() as conn, conn.cursor(name="readonly_stream") as cur:
            self._refuse_transaction_control(cur, query)
            cur.itersize = chunk_rows
            cur.execute(query, params)
            names = [column.name for column in cur.description]
            while rows := cur.fetchmany(chunk_rows):
                yield pd.DataFrame.from_records(rows, columns=names)

    def test_connection(self) -> ConnectionReport:
        """Connect, report identity, confirm the session cannot write (privileges and transaction), and try
        every way listed in `ESCAPE_PROBES` to leave a lasting change or block the application."""
        with self._session() as conn:
            version, database, user, read_only = conn.execute(
                "SELECT current_setting('server_version'), current_database(), current_user, "
                "current_setting('transaction_read_only')"
            ).fetchone()
            writable = conn.execute(
                """
                SELECT (SELECT count(*) FROM information_schema.tables t
                        WHERE t.table_schema NOT IN ('pg_catalog', 'information_schema')
                          AND t.table_type = 'BASE TABLE'
                          AND (has_table_privilege(format('%I.%I', t.table_schema, t.table_name),
                                                   'INSERT, UPDATE, DELETE, TRUNCATE')
                            OR has_any_column_privilege(format('%I.%I', t.table_schema, t.table_name),
                                                        'INSERT, UPDATE')))
                     + (SELECT count(*) FROM pg_namespace n
                        WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
                          AND has_schema_privilege(n.oid, 'CREATE'))
                """
            ).fetchone()[0]
        probes = {}
        for name, statement in ESCAPE_PROBES.items():
            try:
                self.query(statement)
                probes[name] = "ALLOWED"
            except ReadOnlyViolation as exc:
                probes[name] = f"refused: {exc}"
            except psycopg.errors.UndefinedTable:
                probes[name] = "refused: no such table here (nothing to lock)"
            except psycopg.Error as exc:
                probes[name] = f"refused by the server: {type(exc).__name__}"
        return ConnectionReport(
            server_version=version,
            database=database,
            user=user,
            transaction_read_only=read_only == "on",
            can_write_any_table=writable > 0,
            probes=probes,
        )


class ReadOnlyUrlDatabase(ReadOnlyDatabase):
    """The read replica (or a read-only user) given by `READONLY_DATABASE_URL`."""

    url: str

    def _open(self) -> psycopg.Connection:
        try:
            conninfo = normalize_postgres_url(self.url)
        except UnusableConnectionString as exc:
            raise UnusableConnectionString(f"READONLY_DATABASE_URL {exc}") from None
        return connect_or_explain(conninfo, describe=self.describe(), options=self._options)

    def describe(self) -> str:
        return f"{redact_url(self.url)} (READONLY_DATABASE_URL)"


class SecretsManagerReadOnlyDatabase(ReadOnlyDatabase):
    """Credentials from an AWS Secrets Manager secret (`READONLY_DATABASE_SECRET_ID`)."""

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
        return connect_or_explain(describe=self.describe(), options=self._options, **self._fetch_credentials())

    def describe(self) -> str:
        return f"the database in Secrets Manager secret {self.secret_id!r}"


_provisioned: set[tuple[str, str]] = set()
_provision_lock = threading.Lock()


class ReadOnlyRoleError(ValueError):
    """`READONLY_ROLE` names a role that cannot be made the read-only role; it was left unchanged."""


# What an existing role may have for provisioning to take it as its own read-only role: login, CONNECT,
# USAGE and SELECT (what provisioning grants). Anything else, found here, makes provisioning refuse it.
_ROLE_POWERS = """
SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1) AS member_of,
       EXISTS (SELECT 1 FROM pg_shdepend d WHERE d.refobjid = r.oid AND d.refclassid = 'pg_authid'::regclass
               AND d.deptype = 'o') AS owns_objects,
       ARRAY(SELECT DISTINCT a.privilege_type::text FROM pg_class c, aclexplode(c.relacl) a
             WHERE a.grantee = r.oid AND a.privilege_type <> 'SELECT' ORDER BY 1) AS table_privileges,
       ARRAY(SELECT DISTINCT a.privilege_type::text FROM pg_attribute t, aclexplode(t.attacl) a
             WHERE a.grantee = r.oid AND a.privilege_type <> 'SELECT' ORDER BY 1) AS column_privileges,
       ARRAY(SELECT DISTINCT a.privilege_type::text FROM pg_default_acl d, aclexplode(d.defaclacl) a
             WHERE a.grantee = r.oid AND a.privilege_type <> 'SELECT' ORDER BY 1) AS default_privileges,
       EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a
               WHERE a.grantee = r.oid AND a.privilege_type <> 'USAGE') AS schema_privileges,
       EXISTS (SELECT 1 FROM pg_database db, aclexplode(db.datacl) a
               WHERE a.grantee = r.oid AND a.privilege_type <> 'CONNECT') AS database_privileges,
       -- grants on anything else: functions, large objects, tablespaces, parameters, types, languages, ...
       EXISTS (SELECT 1 FROM pg_shdepend d WHERE d.refobjid = r.oid AND d.refclassid = 'pg_authid'::regclass
               AND d.deptype = 'a'
               AND d.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
               AND d.classid NOT IN ('pg_class'::regclass, 'pg_namespace'::regclass, 'pg_database'::regclass,
                                     'pg_default_acl'::regclass)) AS other_privileges
FROM pg_roles r WHERE r.rolname = %s
"""


def _powers_beyond_reading(conn: psycopg.Connection, role: str) -> list[str] | None:
    """What an existing `role` may do beyond reading (empty: nothing), or None when there is no such role."""
    row = conn.execute(_ROLE_POWERS, (role,)).fetchone()
    if row is None:
        return None
    (superuser, createrole, createdb, replication, bypassrls, member_of, owns, table_privileges, column_privileges,
     default_privileges, schema, database, other) = row
    powers = [name for name, has in (("SUPERUSER", superuser), ("CREATEROLE", createrole), ("CREATEDB", createdb),
                                     ("REPLICATION", replication), ("BYPASSRLS", bypassrls)) if has]
    if member_of:
        powers.append(f"member of {', '.join(member_of)}")
    if owns:
        powers.append("owner of database objects")
    for kind, granted in (("table", table_privileges), ("column", column_privileges),
                          ("default", default_privileges)):
        if granted:
            powers.append(f"{kind} privileges {', '.join(granted)}")
    if schema:
        powers.append("schema privileges beyond USAGE")
    if database:
        powers.append("database privileges beyond CONNECT")
    if other:
        powers.append("privileges on functions, large objects, tablespaces, parameters or other objects")
    return powers


def provision_readonly_role(primary: PostgresDatabase, role: str) -> None:
    """Create `role` (LOGIN, read-only) on the primary's database and grant it SELECT, now and in future.

    Idempotent; safe to run from several processes at once. A role of that name that already exists is
    taken only if it can do nothing but read (as one this function made); any other role (a superuser such
    as `postgres`, the application's own, one with write grants) is refused with `ReadOnlyRoleError` and
    never altered.
    """
    key = (primary.describe(), role)
    if key in _provisioned:
        return
    with _provision_lock, primary.connect(autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        ident = sql.Identifier(role)
        powers = _powers_beyond_reading(conn, role)
        if powers is None:
            try:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT").format(ident)
                )
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass  # created by a concurrent process: checked below like any existing role
            except psycopg.errors.ReservedName:
                raise ReadOnlyRoleError(f"READONLY_ROLE {role!r} is a reserved role name; choose another") from None
            powers = _powers_beyond_reading(conn, role) or []
        if powers:
            raise ReadOnlyRoleError(
                f"READONLY_ROLE {role!r} already exists in {primary.describe()} and can do more than read "
                f"({'; '.join(powers)}); it was left unchanged. Set READONLY_ROLE to another name (provisioning "
                "creates it), or READONLY_DATABASE_URL to a user that is read-only already.")
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


def set_role_password(primary: PostgresDatabase, role: str, password: str) -> None:
    """Give the read-only `role` (made by `provision_readonly_role`) a password for logins over the network.
    Only the SCRAM-SHA-256 verifier, computed here by libpq, reaches the server: the password itself is never
    in a statement (statement logs, pg_stat_activity)."""
    if not password:
        raise ReadOnlyRoleError(f"no password given for role {role!r}")
    provision_readonly_role(primary, role)
    with primary.connect(autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))


class ProvisionedReadOnlyDatabase(ReadOnlyDatabase):
    """A read-only role created on the application database and logged in as (local default).

    Logging in as the role needs no password on the embedded server (local trust authentication). On an
    external server that requires passwords, set `READONLY_DATABASE_URL` instead.
    """

    primary: PostgresDatabase
    role: str = "mldp_readonly"

    def _open(self) -> psycopg.Connection:
        provision_readonly_role(self.primary, self.role)
        params = conninfo_to_dict(self.primary.conninfo())
        params.pop("password", None)
        params["user"] = self.role
        return connect_or_explain(make_conninfo(**params), describe=self.describe(), options=self._options)

    def describe(self) -> str:
        return f"role {self.role!r} on {self.primary.describe()}"
