"""Benchmark: loading N embeddings (default 100,000) at dimension 32 and 128 into pgvector tables.

Measures the project's path (`PgVectorStore.load_embeddings`: COPY BINARY into a staging table, validation
in SQL, swap) in vectors/s, the HNSW index build separately, parsing the lab's CSV format, and psycopg's
`executemany` INSERT into an equivalent table in the same run, with the ratio. One JSON line.

    .venv/bin/python benchmarks/embeddings_load.py [--items 100000] [--dims 32 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import scratch_folder  # noqa: E402

import numpy as np  # noqa: E402
from psycopg import sql  # noqa: E402

from recsys_assets.embeddings import EmbeddingRows, parse_embeddings_csv  # noqa: E402
from recsys_assets.model_code.two_tower import embeddings_csv  # noqa: E402
from resources.pgvector import PgVectorStore  # noqa: E402
from resources.postgres import EmbeddedPostgresDatabase  # noqa: E402


def executemany_rate(store: PgVectorStore, rows: EmbeddingRows, dim: int) -> float:
    conn = store.connection()
    conn.execute("DROP TABLE IF EXISTS bench_executemany")
    conn.execute(sql.SQL("CREATE TABLE bench_executemany (id varchar PRIMARY KEY, embedding vector({}))").format(
        sql.Literal(dim)))
    started = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany("INSERT INTO bench_executemany (id, embedding) VALUES (%s, %s)",
                        list(zip(rows.ids.tolist(), rows.vectors)))
    seconds = time.perf_counter() - started
    conn.execute("DROP TABLE bench_executemany")
    return len(rows) / seconds


def measure(store: PgVectorStore, n: int, dim: int) -> dict:
    rng = np.random.default_rng(dim)
    ids = np.array([f"S{i:07d}" for i in range(n)], dtype=object)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    csv_bytes = embeddings_csv(ids.tolist(), vectors).encode()
    started = time.perf_counter()
    rows = parse_embeddings_csv(csv_bytes, "item_embeddings.csv", dimension=dim)
    parse_seconds = time.perf_counter() - started
    table = f"bench_emb_{dim}"
    store.load_embeddings(table, rows, dim, version="warm-up")  # the first load creates the live table
    report = store.load_embeddings(table, rows, dim, version="measured")
    staged = report.load_seconds + report.swap_seconds
    baseline = executemany_rate(store, rows, dim)
    rate = n / staged
    return {
        "dim": dim,
        "vectors": n,
        "load_validate_swap_seconds": round(staged, 3),
        "vectors_per_second": round(rate),
        "index_build_seconds": report.index_seconds,
        "csv_parse_seconds": round(parse_seconds, 3),
        "csv_parse_vectors_per_second": round(n / parse_seconds),
        "executemany_vectors_per_second": round(baseline),
        "speedup_vs_executemany": round(rate / baseline, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()
    with scratch_folder("emb") as work:
        store = PgVectorStore(db=EmbeddedPostgresDatabase(data_dir=str(work / "postgres"), database="bench_emb"),
                              retention=0)
        results = [measure(store, args.items, dim) for dim in args.dims]
        store.close()
        by_dim = {r["dim"]: r for r in results}
        line = {
            "benchmark": "embeddings_load",
            "items": args.items,
            "results": results,
            "targets_met": {
                "dim32_vectors_per_second>=150000": by_dim.get(32, {}).get("vectors_per_second", 0) >= 150_000,
                "dim32_speedup_vs_executemany>=4": by_dim.get(32, {}).get("speedup_vs_executemany", 0) >= 4,
            },
        }
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
