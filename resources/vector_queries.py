"""Nearest-item queries on the pgvector embeddings tables, without Dagster: the query half of
`resources.pgvector.PgVectorStore`, shared with processes that must stay small (the Firehose transformation
Lambda imports this module, psycopg, pgvector and numpy, and nothing of Dagster, pandas or torch).

`NearestItems` holds the queries and their connections; `PgVectorStore` (a Dagster resource that also loads
and swaps tables) and `ReadOnlyNearestItems` (connections from a function, every session read-only) each say
how a connection is opened. Queries: `similar_items` (cosine distance, ascending, the item itself excluded)
and `recommend_for_embedding` (cosine similarity, descending, with exclusions), each with a batched form
answering many queries in one round trip; each batched query reads the table's live model version in the
same statement, so answers of two versions are never mixed.
"""

from __future__ import annotations

import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
from psycopg import sql

VERSIONS_TABLE = "embedding_versions"  # which model version of each embeddings table is loaded, and which is live


class VectorExtensionUnavailableError(RuntimeError):
    """The `vector` extension is not installed (or cannot be created) in the database."""


class UnknownItemError(KeyError):
    """An item id that the embeddings table does not hold."""


class EmbeddingsVersionChanged(RuntimeError):
    """A query meant for one model version found another one live (a new version went live meanwhile)."""

    def __init__(self, table: str, expected: str, found: set[str | None]):
        self.table, self.expected = table, expected
        self.found = sorted(str(v) for v in found)
        super().__init__(f"{table}: expected model version {expected}, found {', '.join(self.found)} live")

    @property
    def live(self) -> str | None:
        """The version now live, when the answer came from one version only."""
        return self.found[0] if len(self.found) == 1 and self.found[0] != "None" else None


# The live version of the queried table, read by the same statement that reads the table: one snapshot
# taken after the table's lock, so the two always agree, even while a swap is under way.
_LIVE_VERSION = sql.SQL(
    f"SELECT version FROM {VERSIONS_TABLE} WHERE logical_table = %(table)s AND status = 'active'")


def _check_version(rows: list[tuple], expected: str | None, table: str) -> None:
    if expected is None or not rows:
        return
    found = {row[-1] for row in rows}
    if found != {expected}:
        raise EmbeddingsVersionChanged(table, expected, found)


class EmbeddingsMismatchError(RuntimeError):
    """Query vectors that do not fit the live embeddings (another dimension): no query of them can succeed."""


class QueryValueError(ValueError):
    """The database refused a value of a query (text with a NUL character, a vector that is not finite):
    the fault of the data asked about, not of the database."""


class _JsonArrays:
    """Query vectors travelling as one JSON array of arrays: JSON's C encoder is several times faster than
    formatting pgvector literals one number at a time. Sliceable, so a batch can be split."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, part: slice) -> "_JsonArrays":
        return _JsonArrays(self.vectors[part])

    def __str__(self) -> str:
        return json.dumps(np.round(self.vectors.astype(np.float64), 7).tolist())


class NearestItems(ABC):
    """Nearest-item queries over `item_table`, on up to `query_connections` connections. The concrete class
    provides the settings (`item_table`, `ef_search`, `exact_scan_below`, `query_connections`), the state
    (`_conns`, `_conn_locks`, `_pool`, `_lock`, `_row_counts`, `_pgvector_version`) and `_connect`."""

    # --- connections -----------------------------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> psycopg.Connection:
        """A new autocommit connection with the vector type registered (the concrete class says how)."""

    @abstractmethod
    def _vector_extension_version(self) -> str:
        """The installed pgvector version, once per set of connections (a loader creates the extension)."""

    def _ensure_versions_table(self, conn: psycopg.Connection) -> None:
        """Create `embedding_versions` where the class may write (a read-only reader does not)."""

    def _open(self) -> psycopg.Connection:
        """A connection with the vector type registered and the HNSW settings."""
        conn = self._connect()
        # each query reads a table and its live version in one statement, consistent only under READ COMMITTED
        # (its snapshot is taken after the table's lock), whatever the server's default isolation
        conn.execute("SET default_transaction_isolation = 'read committed'")
        conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(self.ef_search)))
        if self.iterative_scan:
            conn.execute("SET hnsw.iterative_scan = strict_order")
        return conn

    def connection(self) -> psycopg.Connection:
        """The resource's main connection (loads, registry, single queries), opened once."""
        return self._reader(0)

    def _reader(self, index: int) -> psycopg.Connection:
        conns = self._conns
        if index < len(conns) and conns[index] is not None and not conns[index].closed:
            return conns[index]  # no lock: a query on another connection may be holding it
        with self._lock:
            if not self._conns:
                version = self._vector_extension_version()
                self._pgvector_version = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
                self._row_counts.clear()
            while len(self._conns) <= index:
                self._conns.append(None)
                # the main connection shares the resource lock with loads and registry work
                self._conn_locks.append(self._lock if not self._conn_locks else threading.Lock())
            if self._conns[index] is None or self._conns[index].closed:
                self._conns[index] = self._open()
            return self._conns[index]

    @property
    def iterative_scan(self) -> bool:
        return self._pgvector_version >= (0, 8)

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                if conn is not None:
                    conn.close()
            self._conns.clear()
            self._conn_locks.clear()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def active_version(self, table: str) -> str | None:
        conn = self.connection()
        self._ensure_versions_table(conn)
        try:
            row = conn.execute(
                f"SELECT version FROM {VERSIONS_TABLE} WHERE logical_table = %s AND status = 'active'", (table,)
            ).fetchone()
        except psycopg.errors.UndefinedTable:  # nothing was ever loaded (and this reader may not create it)
            return None
        return row[0] if row else None


    def item_vectors(self, version: str, max_items: int) -> tuple[list[str], np.ndarray] | None:
        """Every item of the item table with its vector, read in one statement with the table's live version:
        `EmbeddingsVersionChanged` unless that is `version`; None when the version holds more than `max_items`
        items (to be queried here instead of held in memory)."""
        table = self.item_table
        conn = self.connection()
        with self._lock:
            try:
                live = conn.execute(f"SELECT version, rows FROM {VERSIONS_TABLE} WHERE logical_table = %s AND status = 'active'",
                                    (table,)).fetchone()
            except psycopg.errors.UndefinedTable:
                live = None
            if live is None or live[0] != version:
                raise EmbeddingsVersionChanged(table, version, {live[0] if live else None})
            if live[1] > max_items:
                return None
            rows = conn.execute(sql.SQL("SELECT id::text, embedding::text, ({live}) FROM {t} ORDER BY id").format(
                t=sql.Identifier(table), live=_LIVE_VERSION), {"table": table}).fetchall()
        _check_version(rows, version, table)
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        values = np.array(",".join(row[1][1:-1] for row in rows).split(","), dtype=np.float32)
        return [row[0] for row in rows], values.reshape(len(rows), -1)

    # --- queries ---------------------------------------------------------------------------------------

    def row_count(self, table: str) -> int:
        with self._lock:
            if table not in self._row_counts:
                self._row_counts[table] = self.connection().execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            return self._row_counts[table]

    def _query(self, index: int, statement: sql.Composable, params: dict, table: str) -> list[tuple]:
        """Run a kNN query on one connection: exactly (index scans off) for small tables, else through HNSW.
        A value the database refuses is a `QueryValueError`."""
        try:
            return self._query_on(index, statement, params, table)
        except psycopg.DataError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QueryValueError(f"{table}: the database refused a value of the query: {reason}") from None

    def _query_on(self, index: int, statement: sql.Composable, params: dict, table: str) -> list[tuple]:
        conn = self._reader(index)
        exact = self.row_count(table) < self.exact_scan_below
        with self._conn_locks[index]:
            if exact:
                with conn.transaction():
                    conn.execute("SET LOCAL enable_indexscan = off")
                    return conn.execute(statement, params).fetchall()
            if not self.iterative_scan and params["limit"] > self.ef_search:
                with conn.transaction():  # an HNSW scan returns at most ef_search rows
                    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(params["limit"])))
                    return conn.execute(statement, params).fetchall()
            return conn.execute(statement, params).fetchall()

    def _run(self, statement: sql.Composable, params: dict, batch_key: str, table: str) -> list[tuple]:
        """Run a batched kNN query (its queries numbered by `ord`), split across the query connections so
        the server works on them with all its cores; rows come back as if from one query."""
        items = params[batch_key]
        parts = max(1, min(self.query_connections, len(items) // 64))  # small batches are not worth splitting
        size = -(-len(items) // parts)

        def chunk(part: int) -> dict:
            selected = items[part * size:(part + 1) * size]
            return {**params, batch_key: str(selected) if isinstance(selected, _JsonArrays) else selected}

        if parts == 1:
            return self._query(0, statement, chunk(0), table)
        self.row_count(table)  # cached before the parts start
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.query_connections, thread_name_prefix="knn")
        # parts use connections 1..n: the main connection's lock is shared with loads and registry work
        futures = [self._pool.submit(self._query, part + 1, statement, chunk(part), table) for part in range(parts)]
        rows = []
        for part, future in enumerate(futures):
            rows.extend((ordinal + part * size, *rest) for ordinal, *rest in future.result())
        return rows

    def _run_for_version(self, statement: sql.Composable, params: dict, batch_key: str, version: str | None,
                         dimension: int | None = None) -> list[tuple]:
        """`_run` on the item table, its rows checked against `version`. A query the database refuses is
        first put down to the table (a new version went live meanwhile: `EmbeddingsVersionChanged`; query
        vectors of another dimension than the table's: `EmbeddingsMismatchError`, for the whole batch) and
        only then to the values asked about (`QueryValueError`)."""
        table = self.item_table
        try:
            rows = self._run(statement, {**params, "table": table}, batch_key, table)
        except QueryValueError:
            live = self.connection().execute(
                f"SELECT version, dimension FROM {VERSIONS_TABLE} WHERE logical_table = %s AND status = 'active'",
                (table,)).fetchone()
            if version is not None and (live is None or live[0] != version):
                raise EmbeddingsVersionChanged(table, version, {live[0] if live else None}) from None
            if live is not None and dimension is not None and dimension != live[1]:
                raise EmbeddingsMismatchError(f"{table}: query vectors of dimension {dimension} against embeddings of "
                                              f"dimension {live[1]} (version {live[0]})") from None
            raise
        _check_version(rows, version, table)
        return rows

    # Exclusions are applied after fetching k + len(excluded) nearest rows rather than in a WHERE clause:
    # the HNSW scan stays a plain ordered scan (the cheapest kind), and the iterative scan lets it return
    # more rows than ef_search when asked to.

    def similar_items(self, product_code: str, k: int = 5) -> list[tuple[str, float]]:
        """The k items closest to `product_code` by cosine distance, nearest first, itself excluded."""
        result = self.similar_items_batch([product_code], k)[0]
        if result is None:
            raise UnknownItemError(product_code)
        return result

    def similar_items_batch(self, product_codes: Sequence[str], k: int = 5,
                            version: str | None = None) -> list[list[tuple[str, float]] | None]:
        """`similar_items` for many items in one round trip; None where an item is unknown. With `version`,
        `EmbeddingsVersionChanged` unless the answer came from that version of the table."""
        if not product_codes:
            return []
        statement = sql.SQL(
            """
            SELECT q.ord, r.id, r.distance, ({live}) AS live_version
            FROM unnest(%(codes)s::text[]) WITH ORDINALITY AS q(code, ord)
            JOIN {t} AS src ON src.id = q.code
            CROSS JOIN LATERAL (
                SELECT e.id, e.embedding <=> src.embedding AS distance FROM {t} AS e
                ORDER BY e.embedding <=> src.embedding LIMIT %(limit)s
            ) AS r
            ORDER BY q.ord, r.distance
            """
        ).format(t=sql.Identifier(self.item_table), live=_LIVE_VERSION)
        rows = self._run_for_version(statement, {"codes": list(product_codes), "limit": k + 1}, "codes", version)
        results: list[list | None] = [None] * len(product_codes)
        for ordinal, identifier, distance, _live in rows:
            bucket = results[ordinal - 1]
            if bucket is None:
                bucket = results[ordinal - 1] = []
            if identifier != product_codes[ordinal - 1] and len(bucket) < k:
                bucket.append((identifier, float(distance)))
        return results

    def recommend_for_embedding(self, vector, k: int = 5, exclude_ids: Sequence[str] = ()) -> list[tuple[str, float]]:
        """The k items most similar to `vector` (cosine similarity, highest first), minus `exclude_ids`."""
        return self.recommend_batch([vector], k, [exclude_ids])[0]

    def recommend_batch(self, vectors, k: int = 5, exclude_ids: Sequence[Sequence[str]] | None = None,
                        version: str | None = None) -> list[list[tuple[str, float]]]:
        """`recommend_for_embedding` for many vectors in one round trip. With `version` (the model version the
        vectors come from), `EmbeddingsVersionChanged` unless the items are of that version too."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return []
        excludes = [set(map(str, ex)) for ex in (exclude_ids or [()] * len(vectors))]
        statement = sql.SQL(
            """
            WITH q AS MATERIALIZED (  -- each vector parsed once, not once per row it is compared with
                SELECT ord, vector::text::vector AS embedding
                FROM jsonb_array_elements(%(vectors)s::jsonb) WITH ORDINALITY AS j(vector, ord)
            )
            SELECT q.ord, r.id, r.score, ({live}) AS live_version
            FROM q CROSS JOIN LATERAL (
                SELECT e.id, 1 - (e.embedding <=> q.embedding) AS score FROM {t} AS e
                ORDER BY e.embedding <=> q.embedding LIMIT %(limit)s
            ) AS r
            ORDER BY q.ord, r.score DESC
            """
        ).format(t=sql.Identifier(self.item_table), live=_LIVE_VERSION)
        limit = k + max((len(e) for e in excludes), default=0)
        rows = self._run_for_version(statement, {"vectors": _JsonArrays(vectors), "limit": limit}, "vectors", version,
                                     dimension=vectors.shape[1])
        results: list[list[tuple[str, float]]] = [[] for _ in range(len(vectors))]
        for ordinal, identifier, score, _live in rows:
            bucket = results[ordinal - 1]
            if identifier not in excludes[ordinal - 1] and len(bucket) < k:
                bucket.append((identifier, float(score)))
        return results


class ReadOnlyNearestItems(NearestItems):
    """`NearestItems` for a process without Dagster (the Firehose Lambda): connections come from `connect`
    (autocommit; e.g. a read replica's read-only user) and every session is made read-only."""

    def __init__(self, connect: Callable[[], psycopg.Connection], *, item_table: str = "item_emb",
                 ef_search: int = 40, exact_scan_below: int = 10_000, query_connections: int = 1) -> None:
        self._connect_function = connect
        self.item_table, self.ef_search = item_table, ef_search
        self.exact_scan_below, self.query_connections = exact_scan_below, query_connections
        self._conns, self._conn_locks, self._pool = [], [], None
        self._lock = threading.RLock()
        self._row_counts: dict = {}
        self._pgvector_version: tuple[int, ...] = (0,)

    def _connect(self) -> psycopg.Connection:
        from pgvector.psycopg import register_vector

        conn = self._connect_function()
        try:
            conn.execute("SET default_transaction_read_only = on")
            register_vector(conn)
        except psycopg.ProgrammingError:
            conn.close()
            raise VectorExtensionUnavailableError("the vector type is not installed in the database: no embeddings "
                                                  "were ever loaded there") from None
        return conn

    def _vector_extension_version(self) -> str:
        conn = self._connect_function()
        try:
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        finally:
            conn.close()
        if row is None:
            raise VectorExtensionUnavailableError("the vector extension is not installed in the database: no "
                                                  "embeddings were ever loaded there")
        return row[0]
