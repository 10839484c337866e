"""The recommender lab's ETL (a Glue Spark job) as plain Python: join ratings, customers and products, and
write Parquet hive-partitioned by customer.

    select r.customerNumber, c.city, c.state, c.postalCode, c.country, c.creditLimit,
           r.productCode, p.productLine, p.productScale, p.quantityInStock, p.buyPrice, p.MSRP,
           r.productRating
    from ratings r join products p on p.productCode = r.productCode
    join customers c on c.customerNumber = r.customerNumber

It runs as a broadcast hash join, the plan Spark picks for small dimension tables: `customers` and
`products` are read once, `ratings` (the large table, three narrow columns) is streamed through a
server-side cursor ordered by customer, and each chunk is joined in memory. Memory holds the dimension
tables and one chunk, whatever the number of ratings; the source decodes a quarter of the values the SQL
join would send. `lab_join_statement` keeps the SQL form (for comparison and the benchmark's baseline).

Output columns are the lab's, in lower case (as Glue writes them). Types are fixed whatever the source
dialect returns: ids and counts are int64 (`customernumber`, `quantityinstock`, `productrating`),
money is float64 (`creditlimit`, `buyprice`, `msrp`; the source's DECIMAL(10,2) values are exact in
float64 at these magnitudes), everything else is a string. `customernumber` is the partition column: it
lives in the folder name (`customernumber=103/`), not inside the files, as Spark and Glue do.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
import io
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Mapping
from queue import Empty, Full, Queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from resources.artifact_keys import join_key

if TYPE_CHECKING:  # a Dagster resource: the ETL's logic imports without Dagster
    from resources.artifacts import ArtifactStore

# source column -> output column, per source table
RATINGS_COLUMNS = {"customerNumber": "customernumber", "productCode": "productcode", "productRating": "productrating"}
PRODUCT_COLUMNS = {"productCode": "productcode", "productLine": "productline", "productScale": "productscale",
                   "quantityInStock": "quantityinstock", "buyPrice": "buyprice", "MSRP": "msrp"}
CUSTOMER_COLUMNS = {"customerNumber": "customernumber", "city": "city", "state": "state", "postalCode": "postalcode",
                    "country": "country", "creditLimit": "creditlimit"}
REQUIRED_COLUMNS: dict[str, list[str]] = {
    "ratings": list(RATINGS_COLUMNS), "products": list(PRODUCT_COLUMNS), "customers": list(CUSTOMER_COLUMNS),
}
PARTITION_COLUMN = "customernumber"
SCHEMA = pa.schema([
    ("customernumber", pa.int64()),
    ("city", pa.string()),
    ("state", pa.string()),
    ("postalcode", pa.string()),
    ("country", pa.string()),
    ("creditlimit", pa.float64()),
    ("productcode", pa.string()),
    ("productline", pa.string()),
    ("productscale", pa.string()),
    ("quantityinstock", pa.int64()),
    ("buyprice", pa.float64()),
    ("msrp", pa.float64()),
    ("productrating", pa.int64()),
])
FILE_SCHEMA = pa.schema([f for f in SCHEMA if f.name != PARTITION_COLUMN])
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"


class SourceSchemaError(ValueError):
    """A source table or column the join needs is missing; the message names it."""


def resolve_columns(columns_by_table: Mapping[str, list[str] | None]) -> dict[str, dict[str, str]]:
    """Map each required column to the source's spelling (MySQL and PostgreSQL differ in case)."""
    resolved: dict[str, dict[str, str]] = {}
    for table, required in REQUIRED_COLUMNS.items():
        present = columns_by_table.get(table)
        if present is None:
            raise SourceSchemaError(f"the source database has no {table!r} table (needed by the ratings join)")
        by_lower = {name.lower(): name for name in present}
        missing = [name for name in required if name.lower() not in by_lower]
        if missing:
            raise SourceSchemaError(f"source table {table!r} is missing column(s): {', '.join(missing)}")
        resolved[table] = {name: by_lower[name.lower()] for name in required}
    return resolved


def lab_join_statement(names: Mapping[str, Mapping[str, str]]) -> sa.Select:
    """The lab's join as one SQL statement (quoting per dialect), ordered by customer."""
    tables = {
        table: sa.table(table, *(sa.column(actual) for actual in names[table].values()))
        for table in REQUIRED_COLUMNS
    }
    r, p, c = tables["ratings"], tables["products"], tables["customers"]
    col = {table: (lambda name, t=table: tables[t].c[names[t][name]]) for table in tables}
    return (
        sa.select(
            col["ratings"]("customerNumber").label("customernumber"),
            col["customers"]("city").label("city"),
            col["customers"]("state").label("state"),
            col["customers"]("postalCode").label("postalcode"),
            col["customers"]("country").label("country"),
            col["customers"]("creditLimit").label("creditlimit"),
            col["ratings"]("productCode").label("productcode"),
            col["products"]("productLine").label("productline"),
            col["products"]("productScale").label("productscale"),
            col["products"]("quantityInStock").label("quantityinstock"),
            col["products"]("buyPrice").label("buyprice"),
            col["products"]("MSRP").label("msrp"),
            col["ratings"]("productRating").label("productrating"),
        )
        .select_from(
            r.join(p, col["products"]("productCode") == col["ratings"]("productCode"))
            .join(c, col["customers"]("customerNumber") == col["ratings"]("customerNumber"))
        )
        .order_by(col["ratings"]("customerNumber"), col["ratings"]("productCode"))
    )


def _select(names: Mapping[str, Mapping[str, str]], table: str, columns: Mapping[str, str]) -> sa.Select:
    selectable = sa.table(table, *(sa.column(names[table][c]) for c in columns))
    return sa.select(*(selectable.c[names[table][c]].label(alias) for c, alias in columns.items()))


def ratings_statement(names: Mapping[str, Mapping[str, str]]) -> sa.Select:
    """The ratings, ordered by customer so each partition arrives in one piece."""
    statement = _select(names, "ratings", RATINGS_COLUMNS)
    ratings = statement.selected_columns
    return statement.order_by(ratings.customernumber, ratings.productcode)


def typed(frame: pd.DataFrame, table: str = "ratings") -> pd.DataFrame:
    """Columns cast to the documented types (DECIMAL -> float64, ids and counts -> int64, text -> str).

    A NULL in an integer column or a value that is not a number fails, naming the table, the column and the
    row's key.
    """
    types = {f.name: f.type for f in SCHEMA}
    out = frame.copy()
    for column in out.columns:
        kind = types[column]
        if pa.types.is_floating(kind) or pa.types.is_integer(kind):
            numbers = pd.to_numeric(out[column], errors="coerce")
            bad = numbers.isna() & (out[column].notna() | pa.types.is_integer(kind))
            if bad.any():
                row = out[bad].iloc[0]
                key = ", ".join(f"{k}={_shown(row[k])}" for k in ("customernumber", "productcode") if k in out.columns)
                raise SourceSchemaError(
                    f"source table {table!r}, column {column}: {_shown(row[column])} is not a valid "
                    f"{'integer' if pa.types.is_integer(kind) else 'number'} (row with {key or 'no key'})")
            out[column] = numbers.astype("int64" if pa.types.is_integer(kind) else "float64")
        else:
            out[column] = out[column].astype("object").where(out[column].notna(), None)
    return out


def _shown(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "NULL"
    return repr(value.item() if hasattr(value, "item") else value)


def dimension_frames(source, names: Mapping[str, Mapping[str, str]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(products, customers): every product's and customer's attributes, typed like the training data."""
    names = names or resolve_columns({t: source.table_columns(t) for t in REQUIRED_COLUMNS})
    frames = []
    for table, columns in (("products", PRODUCT_COLUMNS), ("customers", CUSTOMER_COLUMNS)):
        chunks = list(source.stream(_select(names, table, columns)))
        frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=list(columns.values()))
        frames.append(typed(frame, table))
    return frames[0], frames[1]


def joined_chunks(source, names: Mapping[str, Mapping[str, str]], chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The lab's join, chunk by chunk: streamed ratings joined to the dimension tables in memory."""
    products, customers = dimension_frames(source, names)
    products = products.drop_duplicates("productcode").set_index("productcode")
    customers = customers.drop_duplicates("customernumber").set_index("customernumber")
    for chunk in prefetched(source.stream(ratings_statement(names), chunk_rows)):
        ratings = typed(chunk, "ratings")
        joined = ratings.join(products, on="productcode", how="inner").join(customers, on="customernumber", how="inner")
        yield joined[[f.name for f in SCHEMA]]


def to_arrow(chunk: pd.DataFrame) -> pa.Table:
    """One chunk of typed join rows (see `typed`) as an Arrow table with the documented schema."""
    return pa.Table.from_pandas(chunk[[f.name for f in SCHEMA]], schema=SCHEMA, preserve_index=False)


@dataclass
class PartitionedWrite:
    """Writes one run's output under `prefix`: `begin`, `write` chunks, then `finish` (which removes what a
    previous run left) or `abort` (which removes what this run wrote).

    Partition files are encoded and stored by a few threads (Parquet encoding and file I/O release the
    GIL), at most `in_flight` at a time, so memory stays bounded; the content fingerprint is still taken
    in file order.
    """

    store: ArtifactStore
    prefix: str
    run_tag: str
    workers: int = 4
    in_flight: int = 256
    files: list[str] = field(default_factory=list)
    rows: int = 0
    ratings: Counter = field(default_factory=Counter)
    products: set = field(default_factory=set)
    customers: set = field(default_factory=set)
    content: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    _pool: ThreadPoolExecutor | None = None
    _pending: deque = field(default_factory=deque)

    def _store_part(self, key: str, part: pa.Table) -> str:
        sink = io.BytesIO()
        pq.write_table(part, sink, compression="snappy")  # the codec Spark and Glue write by default
        data = sink.getvalue()
        self.store.write_bytes(key, data, durable=False)  # made durable together, before the manifest
        return hashlib.sha256(data).hexdigest()

    def _settle(self, keep: int) -> None:
        while len(self._pending) > keep:
            customer, future = self._pending.popleft()
            self.content.update(f"{customer}:{future.result()}\n".encode())

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="parquet-writer")
        ids = table.column(PARTITION_COLUMN).to_numpy()
        # rows arrive ordered by customer: cut the chunk where the customer changes
        boundaries = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
        body = table.drop_columns([PARTITION_COLUMN])
        for start, end in zip(boundaries, boundaries[1:]):
            customer = int(ids[start])
            key = join_key(self.prefix, f"{PARTITION_COLUMN}={customer}", f"part-{self.run_tag}-{len(self.files):05d}.parquet")
            self._pending.append((customer, self._pool.submit(self._store_part, key, body.slice(start, end - start))))
            self.files.append(key)
            self.customers.add(customer)
            self._settle(self.in_flight)
        self.rows += table.num_rows
        counts = pc.value_counts(table.column("productrating"))
        self.ratings.update({int(v["values"]): int(v["counts"]) for v in counts.to_pylist()})
        self.products.update(pc.unique(table.column("productcode")).to_pylist())

    def begin(self) -> None:
        """Withdraw `_SUCCESS`: from here until `finish`, the folder is being rewritten."""
        self.store.delete([join_key(self.prefix, SUCCESS)])

    def abort(self) -> None:
        """Remove what this run wrote; the previous run's files and manifest stay as they were (and are
        marked complete again). Nothing is removed once this run's manifest is written."""
        self._shutdown()
        if published_by(self.store, self.prefix, self.run_tag):
            return
        self.store.delete(self.files)
        if self.store.exists(join_key(self.prefix, MANIFEST)):
            self.store.write_bytes(join_key(self.prefix, SUCCESS), b"")

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def finish(self, source: str) -> dict:
        """Make the files durable, write the manifest and `_SUCCESS`, then delete what earlier runs wrote."""
        self._settle(0)
        self._shutdown()
        self.store.sync()
        counts = {"rows": self.rows, "customers": len(self.customers), "products": len(self.products),
                  "rating_histogram": {str(k): self.ratings[k] for k in sorted(self.ratings)}}
        return publish(self.store, self.prefix, self.files, counts, source, self.run_tag, self.content.hexdigest())


def publish(store: ArtifactStore, prefix: str, files: list[str], counts: Mapping, source: str, run_tag: str,
            fingerprint: str, engine: str = "inprocess") -> dict:
    """Write the manifest of `files` (this run's, already in place under `prefix`) and `_SUCCESS`, then remove
    what the manifest replaced. Readers follow the manifest, which lists exactly this run's files from the
    moment it is written. Shared by every engine.

    Removed: the files of the manifest replaced, and files no manifest lists (a killed run's, staged or moved)
    once they are `ORPHAN_AGE` old; never a file a run still in progress may be about to publish. Once the
    manifest is written the run has succeeded: a failure to remove is logged in the result, not raised."""
    manifest_key, success_key = join_key(prefix, MANIFEST), join_key(prefix, SUCCESS)
    previous = _listed_files(store, prefix)
    manifest = {
        "rows": int(counts["rows"]),
        "customers": int(counts["customers"]),
        "products": int(counts["products"]),
        "rating_histogram": {str(k): int(v) for k, v in counts["rating_histogram"].items()},
        "partition_column": PARTITION_COLUMN,
        "schema": {f.name: str(f.type) for f in SCHEMA},
        "files": [key[len(prefix.rstrip("/")) + 1:] for key in files],
        "source": source,
        "run_tag": run_tag,
        "fingerprint": fingerprint,
        "engine": engine,
    }
    store.write_json(manifest_key, manifest)
    store.write_bytes(success_key, b"")
    keep = set(files) | {manifest_key, success_key}
    cutoff = datetime.now(timezone.utc) - ORPHAN_AGE
    stale = [info.key for info in store.list(prefix.rstrip("/") + "/")
             if info.key not in keep and (info.key in previous or info.last_modified < cutoff)]
    try:
        store.delete(stale)
    except Exception as exc:  # the next run removes them: they are listed by no manifest
        return {**manifest, "stale_files_removed": 0, "stale_files_left": f"{len(stale)} ({type(exc).__name__}: {exc})"}
    return {**manifest, "stale_files_removed": len(stale)}


ORPHAN_AGE = timedelta(hours=24)  # a file no manifest lists is a killed run's once this old (no run lasts a day)


def _listed_files(store: ArtifactStore, prefix: str) -> set[str]:
    """The keys the current manifest lists (none when there is none)."""
    if not store.exists(join_key(prefix, MANIFEST)):
        return set()
    return {join_key(prefix, relative) for relative in store.read_json(join_key(prefix, MANIFEST))["files"]}


def published_by(store: ArtifactStore, prefix: str, run_tag: str) -> bool:
    """Whether the current manifest is `run_tag`'s: its files must then never be rolled back."""
    key = join_key(prefix, MANIFEST)
    return store.exists(key) and store.read_json(key).get("run_tag") == run_tag


# --- the Spark and Glue engines (the job: recsys_assets/ratings_etl_spark.py) -------------------------------

STAGING = "_staging"  # under the output prefix; a leading underscore: Spark, Hive and Athena skip it
_SPARK_KINDS = {pa.int64(): "int64", pa.float64(): "double", pa.string(): "string"}


def job_contract(names: Mapping[str, Mapping[str, str]]) -> dict:
    """What the Spark job needs to produce this engine's output: per table, the source's spelling of each
    column and its output name; the output columns and types, in order; the partition column."""
    columns = {"ratings": RATINGS_COLUMNS, "products": PRODUCT_COLUMNS, "customers": CUSTOMER_COLUMNS}
    return {
        "columns": {table: {names[table][source]: out for source, out in mapping.items()}
                    for table, mapping in columns.items()},
        "schema": [[f.name, _SPARK_KINDS[f.type]] for f in SCHEMA],
        "partition_column": PARTITION_COLUMN,
        "partition_source": names["ratings"]["customerNumber"],
    }


def staging_prefix(prefix: str, run_tag: str) -> str:
    return join_key(prefix, STAGING, run_tag)


def publish_staged(store: ArtifactStore, prefix: str, run_tag: str, counts: Mapping, source: str,
                   engine: str) -> dict:
    """Move a job's staged files (`<prefix>/_staging/<run_tag>/customernumber=N/*.parquet`) into place under
    this engine's names, then `publish`. On failure before the manifest is written, the files moved are
    removed and the previous output stays whole (its manifest never stopped listing it); the staged files
    are removed either way."""
    staged = staging_prefix(prefix, run_tag).rstrip("/") + "/"
    moved: list[str] = []
    try:
        by_customer = []
        for key in (info.key for info in store.list(staged) if info.key.endswith(".parquet")):
            folder = key[len(staged):].split("/", 1)[0]
            name, _, value = folder.partition("=")
            if name != PARTITION_COLUMN or not value.lstrip("-").isdigit():
                raise SourceSchemaError(f"staged file {key} is not under a {PARTITION_COLUMN}=<number> folder")
            by_customer.append((int(value), key))
        by_customer.sort()
        if len({customer for customer, _key in by_customer}) != int(counts["customers"]):
            raise SourceSchemaError(f"the job reported {counts['customers']} customers but staged files for "
                                    f"{len({c for c, _k in by_customer})} under {store.uri(staged)}")
        store.delete([join_key(prefix, SUCCESS)])  # being rewritten until the manifest is
        targets = [join_key(prefix, f"{PARTITION_COLUMN}={customer}", f"part-{run_tag}-{number:05d}.parquet")
                   for number, (customer, _key) in enumerate(by_customer)]
        moved = targets
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="publish") as pool:  # S3: a copy per file
            digests = list(pool.map(store.move, [key for _customer, key in by_customer], targets))
        content = hashlib.sha256()
        for (customer, _key), digest in zip(by_customer, digests):
            content.update(f"{customer}:{digest}\n".encode())
        store.sync()
        return publish(store, prefix, targets, counts, source, run_tag, content.hexdigest(), engine)
    except BaseException:
        if not published_by(store, prefix, run_tag):
            store.delete(moved)
            if store.exists(join_key(prefix, MANIFEST)):
                store.write_bytes(join_key(prefix, SUCCESS), b"")
        raise
    finally:
        store.delete_prefix(staged)


def write_partitioned(chunks: Iterable[pd.DataFrame], store: ArtifactStore, prefix: str, run_tag: str,
                      source: str) -> dict:
    """Stream typed `chunks` of join rows (ordered by customer) into hive-partitioned Parquet; memory holds
    one chunk at a time. On failure this run's files are removed and the previous output stays whole."""
    writer = PartitionedWrite(store, prefix, run_tag)
    writer.begin()
    try:
        for chunk in chunks:
            writer.write(to_arrow(chunk))
        return writer.finish(source)
    except BaseException:
        writer.abort()
        raise


def prefetched(chunks: Iterable[pd.DataFrame], depth: int = 2) -> Iterator[pd.DataFrame]:
    """Read the next chunks on a thread while the caller works on the current one: decoding rows from the
    database overlaps with joining and writing Parquet. At most `depth` chunks wait in memory."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        queue.put(chunk, timeout=0.5)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            failure.append(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # releases the source's cursor and connection now, not at garbage collection
            queue.put(done)

    thread = threading.Thread(target=produce, name="ratings-prefetch", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                queue.get_nowait()
            except Empty:
                pass
            thread.join(timeout=0.1)
