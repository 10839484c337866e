"""The recommender's source database: MySQL `classicmodels` (or any SQLAlchemy URL), or a local stand-in.

`SOURCE_DATABASE_URL` names the database, e.g. `mysql+pymysql://user:pw@host:3306/classicmodels` (the
lab's Aurora MySQL) or `postgresql+psycopg://...`. Unset, `EmbeddedClassicModels` serves demo data with
the same tables and column names, generated once into a `classicmodels` database of the embedded
PostgreSQL server.

Large results are read with a server-side cursor (`stream_results`): PyMySQL's unbuffered SSCursor, a
named cursor on PostgreSQL. `pandas.read_sql(chunksize=...)` alone would still buffer the whole result.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import PrivateAttr

from resources.credentials import UnusableConnectionString, check_sqlalchemy_url, scrub
from resources.postgres import EmbeddedPostgresDatabase, ensure_database


class SourceDatabaseError(RuntimeError):
    """The source database is unreachable, or a table or column is missing; the message names it."""


class SourceDatabase(dg.ConfigurableResource, ABC):
    """Read access to the `classicmodels` source through SQLAlchemy."""

    _engine: sa.Engine | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @abstractmethod
    def url(self) -> sa.URL:
        """The SQLAlchemy URL (may prepare a local database)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the source is, safe to log."""

    def _safe(self, text: str) -> str:
        """A driver's message with anything that could be the password masked."""
        return text

    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                self._engine = sa.create_engine(self.url(), pool_pre_ping=True)
            return self._engine

    def table_columns(self, table: str) -> list[str] | None:
        """The table's column names as the database spells them, or None when it does not exist."""
        try:
            inspector = sa.inspect(self.engine())
            if not inspector.has_table(table):
                return None
            return [column["name"] for column in inspector.get_columns(table)]
        except sa.exc.OperationalError as exc:
            raise SourceDatabaseError(f"cannot reach the source database {self.describe()}: "
                                      f"{self._safe(str(exc.orig))}") from None

    def stream(self, statement: sa.Select, chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
        """The statement's rows in DataFrames of at most `chunk_rows`, through a server-side cursor.

        PyMySQL and psycopg cursors are used directly (SQLAlchemy's row objects would double the cost of
        reading); other drivers go through SQLAlchemy's `stream_results`.
        """
        engine = self.engine()
        try:
            if engine.dialect.driver in ("pymysql", "psycopg"):
                yield from self._stream_raw(engine, statement, chunk_rows)
                return
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(statement)
                columns = list(result.keys())
                for rows in result.partitions(chunk_rows):
                    yield pd.DataFrame.from_records([tuple(row) for row in rows], columns=columns)
        except (sa.exc.OperationalError, sa.exc.DBAPIError) as exc:
            raise SourceDatabaseError(f"cannot read from the source database {self.describe()}: "
                                      f"{self._safe(str(getattr(exc, 'orig', exc)))}") from None

    @staticmethod
    def _stream_raw(engine: sa.Engine, statement: sa.Select, chunk_rows: int) -> Iterator[pd.DataFrame]:
        text = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        columns = [column.name for column in statement.selected_columns]
        raw = engine.raw_connection()
        cursor = None
        completed = False
        try:
            if engine.dialect.driver == "pymysql":
                import pymysql.cursors

                cursor = raw.driver_connection.cursor(pymysql.cursors.SSCursor)  # unbuffered: rows stay on the server
            else:
                cursor = raw.driver_connection.cursor(name="mldp_source_stream")  # a named (server-side) cursor
                cursor.itersize = chunk_rows
            cursor.execute(text)
            while rows := cursor.fetchmany(chunk_rows):
                yield pd.DataFrame.from_records(rows, columns=columns)
            cursor.close()
            completed = True
        finally:
            if completed:
                raw.close()
            else:
                # stopped early: closing an unbuffered cursor would first read the rest of the result from the
                # server, so the connection is dropped instead (and PyMySQL told not to drain it later)
                pending = getattr(cursor, "_result", None)
                if pending is not None and hasattr(pending, "unbuffered_active"):
                    pending.unbuffered_active = False
                raw.invalidate()


class SqlSourceDatabase(SourceDatabase):
    """A source given by `SOURCE_DATABASE_URL` (MySQL/MariaDB with PyMySQL, or PostgreSQL)."""

    source_url: str

    def url(self) -> sa.URL:
        try:
            return check_sqlalchemy_url(self.source_url)
        except UnusableConnectionString as exc:
            raise SourceDatabaseError(f"SOURCE_DATABASE_URL {exc}") from None

    def describe(self) -> str:
        try:
            url = check_sqlalchemy_url(self.source_url)
        except UnusableConnectionString:
            return "<unparsable SOURCE_DATABASE_URL>"
        # query parameters are dropped too: drivers accept passwords there as well
        return url.set(query={}).render_as_string(hide_password=True)

    def _safe(self, text: str) -> str:
        return scrub(text, self.source_url)


class EmbeddedClassicModels(SourceDatabase):
    """Demo `classicmodels` tables in the embedded PostgreSQL (database `classicmodels`), generated on
    first use with a fixed seed, so every machine gets the same demo data."""

    primary: EmbeddedPostgresDatabase
    database: str = "classicmodels"
    seed: int = 7

    def url(self) -> sa.URL:
        admin = self.primary.admin_conninfo()
        ensure_database(admin, self.database)
        params = sa.make_url(admin.replace("postgresql://", "postgresql+psycopg://", 1))
        url = params.set(database=self.database)
        _ensure_demo_data(url, self.seed)
        return url

    def describe(self) -> str:
        return f"demo classicmodels in the embedded server ({self.primary.data_dir}, database {self.database})"


_seeded: set[str] = set()
_seed_lock = threading.Lock()


def _ensure_demo_data(url: sa.URL, seed: int) -> None:
    key = url.render_as_string(hide_password=False)
    with _seed_lock:
        if key in _seeded:
            return
        from resources import classicmodels_demo

        engine = sa.create_engine(url)
        try:
            classicmodels_demo.ensure_loaded(engine, seed)
        finally:
            engine.dispose()
        _seeded.add(key)
