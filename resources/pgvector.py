"""pgvector tables of item and user embeddings in the application PostgreSQL, loaded by staging-and-swap
and queried for nearest neighbours.

Loading (`load_embeddings`): COPY (FORMAT BINARY) into a new table, validate it in SQL (rows, duplicate
ids, dimension), build the primary key and the HNSW index (cosine), then swap names in one short
transaction, so readers see the old table or the new one, never an empty or partial one. The replaced
table is kept for `rollback` (`retention` versions), and every load is recorded in `embedding_versions`.

Queries: `similar_items` (cosine distance, ascending, the item itself excluded) and
`recommend_for_embedding` (cosine similarity, descending, with exclusions), each with a batched form that
answers many queries in one round trip. Exclusions never silently return fewer than k rows while enough
items exist: k + len(excluded) nearest rows are fetched and filtered, and the HNSW scan is iterative
(`hnsw.iterative_scan`, pgvector >= 0.8) so it can return more than `ef_search` rows (older servers get
a raised `ef_search` instead); catalogues under `exact_scan_below` rows are scanned exactly.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import numpy as np
import psycopg
from psycopg import sql
from pydantic import PrivateAttr

from resources.postgres import PostgresDatabase, SchemaOnce
from resources.settings import DEFAULTS
from resources.vector_queries import (  # noqa: F401  (the query half, re-exported for the platform's callers)
    VERSIONS_TABLE,
    EmbeddingsMismatchError,
    EmbeddingsVersionChanged,
    NearestItems,
    QueryValueError,
    UnknownItemError,
    _check_version,
    _JsonArrays,
)
_VERSIONS_TABLE_DDL = f"""
CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
    logical_table text NOT NULL,
    version text NOT NULL,
    physical_table text NOT NULL,
    rows integer NOT NULL,
    dimension integer NOT NULL,
    status text NOT NULL CHECK (status IN ('active', 'previous', 'dropped')),
    loaded_at timestamptz NOT NULL DEFAULT now(),
    content_sha text,
    load_seconds double precision,
    index_seconds double precision,
    PRIMARY KEY (logical_table, version)
)
"""
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_PGCOPY_TRAILER = struct.pack("!h", -1)


class EmbeddingsLoadError(ValueError):
    """The embeddings cannot be loaded as given; the live table is untouched."""


class EmbeddingsBusyError(RuntimeError):
    """Readers kept the tables locked for longer than a swap waits; the live tables are unchanged."""


@dataclass(frozen=True)
class LoadReport:
    table: str
    version: str
    rows: int
    dimension: int
    physical_table: str
    load_seconds: float
    index_seconds: float
    swap_seconds: float
    previous_version: str | None
    dropped_tables: list[str]
    skipped: bool = False
    # replaced copies of this same version a reader held past the lock timeout: left in place, to be dropped
    left_tables: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Prepared:
    """One table's rows, checked, ready to stage."""

    ids: np.ndarray
    vectors: np.ndarray
    source: str
    integer_ids: bool
    content_sha: str


def encode_copy_binary(ids: np.ndarray, vectors: np.ndarray, integer_ids: bool) -> bytes:
    """The rows in PostgreSQL's binary COPY format: (id int4|varchar, embedding vector), vectorised."""
    n, dim = vectors.shape
    vec_body = np.empty((n, 4 + 4 * dim), dtype=np.uint8)
    vec_body[:, :4] = np.frombuffer(struct.pack("!HH", dim, 0), dtype=np.uint8)
    vec_body[:, 4:] = np.ascontiguousarray(vectors, dtype=">f4").view(np.uint8).reshape(n, 4 * dim)
    vec_len = struct.pack("!i", 4 + 4 * dim)
    if integer_ids:
        fixed = np.empty((n, 2 + 4 + 4 + 4 + len(vec_body[0])), dtype=np.uint8)
        fixed[:, 0:2] = np.frombuffer(struct.pack("!h", 2), dtype=np.uint8)
        fixed[:, 2:6] = np.frombuffer(struct.pack("!i", 4), dtype=np.uint8)
        fixed[:, 6:10] = np.ascontiguousarray(ids, dtype=">i4").view(np.uint8).reshape(n, 4)
        fixed[:, 10:14] = np.frombuffer(vec_len, dtype=np.uint8)
        fixed[:, 14:] = vec_body
        return _PGCOPY_HEADER + fixed.tobytes() + _PGCOPY_TRAILER
    parts = [_PGCOPY_HEADER]
    field_count = struct.pack("!h", 2)
    for identifier, body in zip(ids, vec_body):
        encoded = str(identifier).encode("utf-8")
        parts.append(field_count + struct.pack("!i", len(encoded)) + encoded + vec_len + body.tobytes())
    parts.append(_PGCOPY_TRAILER)
    return b"".join(parts)


def staging_name(table: str, version: str) -> str:
    """A new table name for one load of `version` (unique per attempt; at most 63 bytes)."""
    slug = re.sub(r"[^a-z0-9]+", "_", version.lower()).strip("_")[:30]
    return f"{table[:20]}__{slug}_{secrets.token_hex(4)}"


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def check_rows(table: str, source: str, ids: np.ndarray, vectors: np.ndarray, dim: int,
               expected_rows: int | None) -> bool:
    """Validate embeddings before any write; returns whether the ids are integers."""
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise EmbeddingsLoadError(f"{source} -> {table}: vectors have dimension {vectors.shape[-1]}, expected {dim}")
    if len(ids) != len(vectors):
        raise EmbeddingsLoadError(f"{source} -> {table}: {len(ids)} ids for {len(vectors)} vectors")
    if expected_rows is not None and len(ids) != expected_rows:
        raise EmbeddingsLoadError(f"{source} -> {table}: {len(ids)} rows, expected {expected_rows}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise EmbeddingsLoadError(f"{source} -> {table}: row {row} (id {_plain(ids[row])!r}) has NaN or infinity")
    zero = ~vectors.any(axis=1)
    if zero.any():
        row = int(np.argmax(zero))
        raise EmbeddingsLoadError(f"{source} -> {table}: row {row} (id {_plain(ids[row])!r}) is a zero vector, whose "
                                  "cosine distance to anything is undefined")
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise EmbeddingsLoadError(f"{source} -> {table}: {int((counts > 1).sum())} duplicate ids "
                                  f"(e.g. {_plain(unique[np.argmax(counts > 1)])!r})")
    integer_ids = np.issubdtype(ids.dtype, np.integer)
    if integer_ids and len(ids) and (ids.min() < -(2**31) or ids.max() >= 2**31):
        bad = ids[(ids < -(2**31)) | (ids >= 2**31)][0]
        raise EmbeddingsLoadError(f"{source} -> {table}: id {int(bad)} does not fit the table's integer id column")
    return integer_ids


class PgVectorStore(NearestItems, dg.ConfigurableResource):
    """Embeddings tables and nearest-neighbour queries (`NearestItems`) on the application database."""

    db: PostgresDatabase
    item_table: str = "item_emb"
    user_table: str = "user_emb"
    retention: int = DEFAULTS["embeddings_retention"]
    ef_search: int = 40
    hnsw_m: int = 16
    hnsw_ef_construction: int = 128
    exact_scan_below: int = 10_000
    lock_timeout_seconds: int = 5  # how long a swap waits for a reader at a time (readers queue behind it meanwhile)
    swap_wait_seconds: int = 900  # how long a load or rollback keeps trying (outlasts read-only queries, 600 s)

    query_connections: int = 2  # a batch of kNN queries is split across this many connections (server cores)
    # catalogues up to this size are ranked in memory by the online paths (resources.item_index), larger ones here
    in_memory_max_items: int = DEFAULTS["item_index_max_items"]

    _conns: list = PrivateAttr(default_factory=list)
    _conn_locks: list = PrivateAttr(default_factory=list)
    _pool: ThreadPoolExecutor | None = PrivateAttr(default=None)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _pgvector_version: tuple[int, ...] = PrivateAttr(default=(0,))
    _row_counts: dict = PrivateAttr(default_factory=dict)
    _versions_table: SchemaOnce = PrivateAttr(default_factory=lambda: SchemaOnce(_VERSIONS_TABLE_DDL))

    # --- connections -----------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        return self.db.connect(autocommit=True, register_vector=True)

    def _vector_extension_version(self) -> str:
        return self.db.ensure_vector_extension()  # CREATE EXTENSION on first use

    def teardown_after_execution(self, context) -> None:
        self.close()

    # --- loading ---------------------------------------------------------------------------------------

    def _ensure_versions_table(self, conn: psycopg.Connection) -> None:
        self._versions_table.ensure(conn)

    def versions(self, table: str) -> list[dict]:
        conn = self.connection()
        self._ensure_versions_table(conn)
        cur = conn.execute(
            f"SELECT version, physical_table, rows, dimension, status, loaded_at FROM {VERSIONS_TABLE} "
            "WHERE logical_table = %s ORDER BY loaded_at DESC", (table,))
        return [dict(zip([c.name for c in cur.description], row)) for row in cur.fetchall()]

    def load_embeddings(self, table: str, rows, dim: int, *, version: str,
                        expected_rows: int | None = None) -> LoadReport:
        """Replace one table by `rows` for `version` (`load_version` with a single table)."""
        return self.load_version(version, {table: rows}, dim, expected_rows={table: expected_rows})[table]

    def load_version(self, version: str, tables: Mapping[str, object], dim: int, *,
                     expected_rows: Mapping[str, int | None] | None = None) -> dict[str, LoadReport]:
        """Replace each table of `tables` ({table: rows with ids and an (n, dim) matrix}) by its rows for
        `version`, by staging and swap: every table is staged, validated and indexed first, then all of them
        are swapped in one transaction. The tables of a model version go live together or not at all.

        Raises `EmbeddingsLoadError` (every live table untouched) on a dimension mismatch, non-finite
        values, duplicate, missing or out-of-range ids, or a row count other than `expected_rows[table]`.
        Loading the version that is live, with the same content in every table, changes nothing.
        """
        expected_rows = expected_rows or {}
        prepared = {table: self._prepare(table, rows, dim, expected_rows.get(table)) for table, rows in tables.items()}
        conn = self.connection()
        with self._lock:
            self._ensure_versions_table(conn)
            live = {row[0]: row[1:] for row in conn.execute(
                f"SELECT logical_table, version, content_sha, physical_table, rows, dimension FROM {VERSIONS_TABLE} "
                "WHERE logical_table = ANY(%s) AND status = 'active'", (list(tables),)).fetchall()}
            if all(live.get(table, (None, None))[:2] == (version, item.content_sha) for table, item in prepared.items()):
                return {table: LoadReport(table, version, live[table][3], live[table][4], live[table][2], 0.0, 0.0,
                                          0.0, None, [], skipped=True) for table in tables}
            staged: dict[str, tuple[str, float, float]] = {}
            try:
                for table, item in prepared.items():
                    staged[table] = (staging_name(table, version), 0.0, 0.0)
                    staged[table] = self._stage(conn, table, staged[table][0], item, dim)
                started = time.perf_counter()
                swapped = self._exclusively(lambda: self._swap(conn, version, dim, prepared, staged),
                                            f"swap {', '.join(sorted(tables))} to version {version}")
                swap_seconds = time.perf_counter() - started
            except BaseException:
                for staging, _load, _index in staged.values():
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(staging)))
                raise
            reports = {}
            for table, (previous, replaced) in swapped.items():
                # an earlier load of this same version, now superseded (left, and said, if a reader holds it)
                dropped = [orphan for orphan in replaced if self._drop_if_free(conn, orphan)]
                left = tuple(orphan for orphan in replaced if orphan not in dropped)
                dropped += self._apply_retention(conn, table)
                self._row_counts.pop(table, None)
                staging, load_seconds, index_seconds = staged[table]
                reports[table] = LoadReport(table, version, len(prepared[table].ids), dim, staging,
                                            round(load_seconds, 3), round(index_seconds, 3), round(swap_seconds, 4),
                                            previous, dropped, left_tables=left)
        return reports

    @staticmethod
    def _prepare(table: str, rows, dim: int, expected_rows: int | None) -> _Prepared:
        """Rows checked before any write, with the content hash that recognises a reload of the same data."""
        ids, vectors = np.asarray(rows.ids), np.asarray(rows.vectors, dtype=np.float32)
        source = getattr(rows, "source", table)
        integer_ids = check_rows(table, source, ids, vectors, dim, expected_rows)
        content = hashlib.sha256(ids.astype(np.int64).tobytes() if integer_ids else "\x00".join(map(str, ids)).encode())
        content.update(np.ascontiguousarray(vectors).tobytes())
        return _Prepared(ids, vectors, source, integer_ids, content.hexdigest())

    def _stage(self, conn, table: str, staging: str, item: _Prepared, dim: int) -> tuple[str, float, float]:
        """COPY the rows into a new table, check it in SQL, add the primary key and the HNSW index."""
        started = time.perf_counter()
        conn.execute(sql.SQL("CREATE TABLE {} (id {} NOT NULL, embedding vector({}) NOT NULL)").format(
            sql.Identifier(staging), sql.SQL("integer" if item.integer_ids else "varchar"), sql.Literal(dim)))
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} (id, embedding) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(staging))) as copy:
            copy.write(encode_copy_binary(item.ids, item.vectors, item.integer_ids))
        count, distinct, wrong_dims = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE vector_dims(embedding) <> %s) "
                    "FROM {}").format(sql.Identifier(staging)), (dim,)).fetchone()
        if count != len(item.ids) or distinct != count or wrong_dims:
            raise EmbeddingsLoadError(
                f"{item.source} -> {table}: staging holds {count} rows ({count - distinct} duplicate ids, "
                f"{wrong_dims} of the wrong dimension) for {len(item.ids)} given")
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(sql.Identifier(staging)))
        conn.execute(sql.SQL(
            "CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
        ).format(sql.Identifier(f"{staging}_hnsw"), sql.Identifier(staging), sql.Literal(self.hnsw_m),
                 sql.Literal(self.hnsw_ef_construction)))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(staging)))
        return staging, load_seconds, time.perf_counter() - started

    def _swap(self, conn, version: str, dim: int, prepared: Mapping[str, _Prepared],
              staged: Mapping[str, tuple[str, float, float]]) -> dict[str, tuple[str | None, list[str]]]:
        """Put every staging table in place of its live table in one short transaction. A replaced table goes
        back to the name it was loaded under (kept for rollback); returns, per table, (previous version,
        tables of this version replaced)."""
        swapped = {}
        with conn.transaction():
            self._short_lock_wait(conn)
            for table in sorted(prepared):  # one order for every loader: no deadlock between two loads
                staging, load_seconds, index_seconds = staged[table]
                active = conn.execute(
                    f"SELECT version, physical_table FROM {VERSIONS_TABLE} WHERE logical_table = %s AND status = 'active' "
                    "FOR UPDATE", (table,)).fetchone()
                same_version = conn.execute(
                    f"SELECT physical_table FROM {VERSIONS_TABLE} WHERE logical_table = %s AND version = %s "
                    "AND status <> 'dropped'", (table, version)).fetchone()
                if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
                    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
                    parked = active[1] if active else staging_name(table, "unregistered")
                    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table),
                                                                             sql.Identifier(parked)))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(staging),
                                                                         sql.Identifier(table)))
                conn.execute(f"UPDATE {VERSIONS_TABLE} SET status = 'previous' WHERE logical_table = %s AND status = 'active'",
                             (table,))
                conn.execute(
                    f"""INSERT INTO {VERSIONS_TABLE} (logical_table, version, physical_table, rows, dimension, status,
                                                content_sha, load_seconds, index_seconds)
                        VALUES (%s, %s, %s, %s, %s, 'active', %s, %s, %s)
                        ON CONFLICT (logical_table, version) DO UPDATE SET physical_table = EXCLUDED.physical_table,
                            rows = EXCLUDED.rows, dimension = EXCLUDED.dimension, status = 'active', loaded_at = now(),
                            content_sha = EXCLUDED.content_sha, load_seconds = EXCLUDED.load_seconds,
                            index_seconds = EXCLUDED.index_seconds""",
                    (table, version, staging, len(prepared[table].ids), dim, prepared[table].content_sha,
                     load_seconds, index_seconds))
                swapped[table] = ((active[0] if active else None), ([same_version[0]] if same_version else []))
        return swapped

    def _apply_retention(self, conn, table: str) -> list[str]:
        """Drop replaced tables beyond the newest `retention` ones; one a reader still holds is left for the
        next load (it stays 'previous' in the versions table)."""
        old = conn.execute(
            f"SELECT version, physical_table FROM {VERSIONS_TABLE} WHERE logical_table = %s AND status = 'previous' "
            "ORDER BY loaded_at DESC OFFSET %s", (table, self.retention)).fetchall()
        dropped = []
        for version, physical in old:
            if self._drop_if_free(conn, physical, f"UPDATE {VERSIONS_TABLE} SET status = 'dropped' WHERE logical_table = %s "
                                                  "AND version = %s", (table, version)):
                dropped.append(physical)
        return dropped

    def _drop_if_free(self, conn, physical: str, then: str | None = None, params: tuple = ()) -> bool:
        """DROP a replaced table (and run `then` in the same transaction), unless a reader holds it past the
        lock timeout: the load never hangs on a reader of an old table."""
        try:
            with conn.transaction():
                self._short_lock_wait(conn)
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(physical)))
                if then:
                    conn.execute(then, params)
            return True
        except psycopg.errors.LockNotAvailable:
            return False

    def _short_lock_wait(self, conn) -> None:
        """Inside a transaction: wait at most `lock_timeout_seconds` for any lock it takes."""
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{self.lock_timeout_seconds}s")))

    def _exclusively(self, work, what: str):
        """`work` (a transaction that takes ACCESS EXCLUSIVE locks with the short `lock_timeout_seconds`), tried
        again until `swap_wait_seconds` have passed. A reader holding a table blocks the readers queued behind
        the swap for one lock timeout at a time, never for as long as it reads; a deadlock with a reader that
        locks in another order rolls the swap back whole, and it is tried again."""
        deadline = time.monotonic() + self.swap_wait_seconds
        while True:
            try:
                return work()
            except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
                if time.monotonic() > deadline:
                    raise EmbeddingsBusyError(
                        f"could not {what} within {self.swap_wait_seconds} s: readers kept the tables locked "
                        "(the live tables are unchanged; run the load again)") from None
                time.sleep(1.0)

    def rollback(self, *tables: str) -> str:
        """Make the most recently replaced version live again in every one of `tables` (default: the item and
        the user table), in one short transaction; returns it. They must all have that version to go back to."""
        tables = tuple(sorted(tables or (self.item_table, self.user_table)))
        conn = self.connection()
        self._ensure_versions_table(conn)
        with self._lock:
            return self._exclusively(lambda: self._roll_back(conn, tables), f"roll back {', '.join(tables)}")

    def _roll_back(self, conn, tables: tuple[str, ...]) -> str:
        with conn.transaction():
            self._short_lock_wait(conn)
            target = None
            for table in tables:
                active = conn.execute(
                    f"SELECT version, physical_table FROM {VERSIONS_TABLE} WHERE logical_table = %s AND status = 'active' "
                    "FOR UPDATE", (table,)).fetchone()
                previous = conn.execute(
                    f"SELECT version, physical_table FROM {VERSIONS_TABLE} WHERE logical_table = %s AND status = 'previous' "
                    "ORDER BY loaded_at DESC LIMIT 1", (table,)).fetchone()
                if active is None or previous is None:
                    raise EmbeddingsLoadError(f"{table}: no previous version to roll back to")
                if target is not None and previous[0] != target:
                    raise EmbeddingsLoadError(f"{', '.join(tables)}: their previous versions differ ({target} and "
                                              f"{previous[0]} in {table}); nothing was rolled back")
                target = previous[0]
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table),
                                                                         sql.Identifier(active[1])))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(previous[1]),
                                                                         sql.Identifier(table)))
                conn.execute(f"UPDATE {VERSIONS_TABLE} SET status = 'previous', loaded_at = now() - interval '1 microsecond' "
                             "WHERE logical_table = %s AND version = %s", (table, active[0]))
                conn.execute(f"UPDATE {VERSIONS_TABLE} SET status = 'active', loaded_at = now() "
                             "WHERE logical_table = %s AND version = %s", (table, previous[0]))
                self._row_counts.pop(table, None)
        return target
