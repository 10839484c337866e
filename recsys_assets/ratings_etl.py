"""The recommender lab's ETL (a Glue Spark job) as plain Python: join ratings, customers and products, and
write Parquet hive-partitioned by customer.

    select r.customerNumber, c.city, c.state, c.postalCode, c.country, c.creditLimit,
           r.productCode, p.productLine, p.productScale, p.quantityInStock, p.buyPrice, p.MSRP,
           r.productRating
    from ratings r join products p on p.productCode = r.productCode
    join customers c on c.customerNumber = r.customerNumber

Output columns are the lab's, in lower case (as Glue writes them). Types are fixed whatever the source
dialect returns: ids and counts are int64 (``customernumber``, ``quantityinstock``, ``productrating``),
money is float64 (``creditlimit``, ``buyprice``, ``msrp``; the source's DECIMAL(10,2) values are exact in
float64 at these magnitudes), everything else is a string. ``customernumber`` is the partition column: it
lives in the folder name (``customernumber=103/``), not inside the files, as Spark and Glue do.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from resources.artifacts import ArtifactStore, join_key

REQUIRED_COLUMNS: dict[str, list[str]] = {
    "ratings": ["customerNumber", "productCode", "productRating"],
    "products": ["productCode", "productLine", "productScale", "quantityInStock", "buyPrice", "MSRP"],
    "customers": ["customerNumber", "city", "state", "postalCode", "country", "creditLimit"],
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


def join_statement(names: Mapping[str, Mapping[str, str]]) -> sa.Select:
    """The lab's join, ordered by customer so each partition arrives in one piece; quoting per dialect."""
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


CATALOG_COLUMNS = {
    "products": {"productCode": "productcode", "productLine": "productline", "productScale": "productscale",
                 "quantityInStock": "quantityinstock", "buyPrice": "buyprice", "MSRP": "msrp"},
    "customers": {"customerNumber": "customernumber", "city": "city", "country": "country",
                  "creditLimit": "creditlimit"},
}


def catalog_frames(source) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every product's and customer's tower features from the source, typed like the training data."""
    names = resolve_columns({t: source.table_columns(t) for t in REQUIRED_COLUMNS})
    frames = []
    for table, columns in CATALOG_COLUMNS.items():
        selectable = sa.table(table, *(sa.column(names[table][c]) for c in columns))
        statement = sa.select(*(selectable.c[names[table][c]].label(alias) for c, alias in columns.items()))
        chunks = list(source.stream(statement))
        frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=list(columns.values()))
        types = {f.name: f.type for f in SCHEMA}
        for column in frame.columns:
            if pa.types.is_floating(types[column]):
                frame[column] = pd.to_numeric(frame[column]).astype("float64")
            elif pa.types.is_integer(types[column]):
                frame[column] = pd.to_numeric(frame[column]).astype("int64")
        frames.append(frame)
    return frames[0], frames[1]


def to_arrow(chunk: pd.DataFrame) -> pa.Table:
    """One chunk of join rows with the documented types (Decimal -> float64, ints -> int64)."""
    columns = {}
    for field_ in SCHEMA:
        values = chunk[field_.name]
        if pa.types.is_floating(field_.type):
            values = pd.to_numeric(values, errors="raise").astype("float64")
        elif pa.types.is_integer(field_.type):
            values = pd.to_numeric(values, errors="raise").astype("int64")
        else:
            values = values.astype("object").where(values.notna(), None)
        columns[field_.name] = pa.array(values, type=field_.type, from_pandas=True)
    return pa.table(columns, schema=SCHEMA)


@dataclass
class PartitionedWrite:
    """Writes one run's output under `prefix` and, when finished, removes everything a previous run left."""

    store: ArtifactStore
    prefix: str
    run_tag: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    ratings: Counter = field(default_factory=Counter)
    products: set = field(default_factory=set)
    customers: set = field(default_factory=set)
    content: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        ids = table.column(PARTITION_COLUMN).to_numpy()
        # rows arrive ordered by customer: cut the chunk where the customer changes
        boundaries = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(ids)]
        for start, end in zip(boundaries, boundaries[1:]):
            customer = int(ids[start])
            part = table.slice(start, end - start).drop_columns([PARTITION_COLUMN])
            key = join_key(self.prefix, f"{PARTITION_COLUMN}={customer}", f"part-{self.run_tag}-{len(self.files):05d}.parquet")
            sink = io.BytesIO()
            pq.write_table(part, sink, compression="zstd")
            data = sink.getvalue()
            self.store.write_bytes(key, data)
            self.content.update(f"{customer}:{len(data)}:".encode() + data)
            self.files.append(key)
            self.customers.add(customer)
        self.rows += table.num_rows
        self.ratings.update(table.column("productrating").to_pylist())
        self.products.update(table.column("productcode").unique().to_pylist())

    def finish(self, source: str) -> dict:
        """Delete what earlier runs wrote, then write the manifest and ``_SUCCESS`` (last)."""
        keep = set(self.files) | {join_key(self.prefix, MANIFEST), join_key(self.prefix, SUCCESS)}
        stale = [info.key for info in self.store.list(self.prefix.rstrip("/") + "/") if info.key not in keep]
        self.store.delete(stale)
        manifest = {
            "rows": self.rows,
            "customers": len(self.customers),
            "products": len(self.products),
            "rating_histogram": {str(k): self.ratings[k] for k in sorted(self.ratings)},
            "partition_column": PARTITION_COLUMN,
            "schema": {f.name: str(f.type) for f in SCHEMA},
            "files": [key[len(self.prefix.rstrip("/")) + 1:] for key in self.files],
            "source": source,
            "run_tag": self.run_tag,
            "fingerprint": self.content.hexdigest(),
            "stale_files_removed": len(stale),
        }
        self.store.write_json(join_key(self.prefix, MANIFEST), manifest)
        self.store.write_bytes(join_key(self.prefix, SUCCESS), b"")
        return manifest


def write_partitioned(chunks: Iterable[pd.DataFrame], store: ArtifactStore, prefix: str, run_tag: str,
                      source: str) -> dict:
    """Stream `chunks` of join rows into hive-partitioned Parquet; memory holds one chunk at a time."""
    writer = PartitionedWrite(store, prefix, run_tag)
    for chunk in chunks:
        writer.write(to_arrow(chunk))
    return writer.finish(source)


def read_partitioned(store: ArtifactStore, prefix: str) -> pd.DataFrame:
    """The dataset as one DataFrame (the files listed in its manifest, partition column restored)."""
    manifest = store.read_json(join_key(prefix, MANIFEST))
    frames = []
    for relative in manifest["files"]:
        customer = int(relative.split("/", 1)[0].split("=", 1)[1])
        table = pq.read_table(io.BytesIO(store.read_bytes(join_key(prefix, relative))))
        frames.append(table.to_pandas().assign(**{PARTITION_COLUMN: customer}))
    if not frames:
        return FILE_SCHEMA.empty_table().to_pandas().assign(**{PARTITION_COLUMN: pd.Series(dtype="int64")})
    return pd.concat(frames, ignore_index=True)[[f.name for f in SCHEMA]]



