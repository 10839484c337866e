"""Benchmark: the ratings ETL from MariaDB to hive-partitioned Parquet.

Generates N ratings (default 2,000,000 by 2,000 customers over 2,000 products) into the MariaDB server on
127.0.0.1:3306, with the classicmodels tables, and runs `ratings_training_data` (the project's asset,
through `dg.materialize`) at N/4 and N to show that peak memory stays flat as N grows. The naive way is
measured in the same run: `pandas.read_sql` of the whole join, then `DataFrame.to_parquet` partitioned by
customer. The Spark engine (`ETL_ENGINE=spark`: local[2], the job in a subprocess through Pipes) runs the
same N in the same run, with the Dagster process's peak RSS and Spark's JVM's (reported by the job) apart.
Each measurement runs in its own process so its peak RSS is its own. One JSON line.

    .venv/bin/python benchmarks/ratings_etl.py [--ratings 2000000] [--engines inprocess,spark]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import mysql_connection, peak_rss_mb, scratch_folder  # noqa: E402

from resources.settings import PlatformSettings  # noqa: E402

PRODUCTS = 2_000


def generate(database: str, ratings: int, customers: int) -> None:
    """classicmodels tables with `ratings` rows; ratings are made by MariaDB's sequence engine."""
    import numpy as np
    import sqlalchemy as sa

    from resources import classicmodels_demo as demo

    with mysql_connection() as conn:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")
        conn.cursor().execute(f"CREATE DATABASE `{database}`")
    engine = sa.create_engine(f"mysql+pymysql://root@127.0.0.1:3306/{database}")
    per_customer = max(ratings // customers, 1)
    tables = demo.generate(seed=11, n_products=PRODUCTS, n_customers=customers, raters=0, ratings_per_rater=0)
    tables["products"]["productCode"] = [f"P{i:05d}" for i in range(PRODUCTS)]
    tables["customers"]["customerNumber"] = np.arange(1, customers + 1)
    with engine.begin() as conn:
        demo.metadata.create_all(conn)
        for name in ("productlines", "products", "customers"):
            frame = tables[name]
            conn.execute(demo.metadata.tables[name].insert(), frame.astype(object).where(frame.notna(), None).to_dict("records"))
    engine.dispose()
    with mysql_connection(database) as conn:
        cur = conn.cursor()
        cur.execute("ALTER TABLE ratings ADD INDEX by_customer (customerNumber, productCode)")
        cur.execute(
            f"INSERT INTO ratings (customerNumber, productCode, productRating) "
            f"SELECT 1 + seq DIV {per_customer}, CONCAT('P', LPAD((seq * 7919) MOD {PRODUCTS}, 5, '0')), "
            f"1 + (seq * 31 + seq DIV 7) MOD 5 FROM seq_0_to_{ratings - 1}"
        )


def child_project(url: str, out: Path, engine: str = "inprocess") -> dict:
    import dagster as dg

    import recsys_assets as recsys
    from resources.artifacts import LocalArtifactStore
    from resources.etl_engine import RatingsEtlEngine
    from resources.settings import PlatformSettings
    from resources.source_db import SqlSourceDatabase

    settings = PlatformSettings.from_env()
    started = time.perf_counter()
    result = dg.materialize(
        [recsys.source_ratings, recsys.source_customers, recsys.source_products, recsys.ratings_training_data],
        resources={"source_db": SqlSourceDatabase(source_url=url), "artifacts": LocalArtifactStore(root=str(out)),
                   "ratings_etl_engine": RatingsEtlEngine(engine=engine, spark_master=settings.spark_master,
                                                          spark_driver_memory=settings.spark_driver_memory,
                                                          spark_jdbc_jars=settings.spark_jdbc_jars)},
        selection=dg.AssetSelection.assets(recsys.ratings_training_data),
    )
    seconds = time.perf_counter() - started
    metadata = {k: getattr(v, "value", v)
                for k, v in result.asset_materializations_for_node("ratings_training_data")[0].metadata.items()}
    job = {k[len("job_"):]: v for k, v in metadata.items() if k.startswith("job_") and isinstance(v, (int, float))}
    return {"rows": metadata["rows"], "seconds": seconds, **({"job": job} if job else {})}


def child_baseline(url: str, out: Path) -> dict:
    import pandas as pd
    import sqlalchemy as sa

    from recsys_assets import ratings_etl
    from resources.source_db import SqlSourceDatabase

    source = SqlSourceDatabase(source_url=url)
    statement = ratings_etl.lab_join_statement({t: {c: c for c in cols} for t, cols in ratings_etl.REQUIRED_COLUMNS.items()})
    started = time.perf_counter()
    with source.engine().connect() as conn:
        frame = pd.read_sql(sa.text(str(statement.compile(conn))), conn)
    frame.to_parquet(out, partition_cols=["customernumber"])
    return {"rows": len(frame), "seconds": time.perf_counter() - started}


def run_child(kind: str, url: str, engine: str = "inprocess") -> dict:
    with scratch_folder(f"etl-{kind}") as out:
        completed = subprocess.run([sys.executable, __file__, "--child", kind, "--url", url, "--out", str(out / "data"),
                                    "--engine", engine], capture_output=True, text=True)
        if completed.returncode != 0:
            raise SystemExit(f"the {kind} ({engine}) measurement failed:\n{completed.stderr[-3000:]}")
        return json.loads(completed.stdout.strip().splitlines()[-1])


def spark_missing() -> str | None:
    """Why the spark engine cannot run here, or None (the engine's own check, and Java on the PATH)."""
    from resources.etl_engine import RatingsEtlEngine

    return RatingsEtlEngine().spark_missing() or (None if shutil.which("java") else "no java: scripts/install_spark_runtime.sh")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=2_000_000)
    parser.add_argument("--customers", type=int, default=2_000, help="customers, hence Parquet partitions")
    parser.add_argument("--engines", default="inprocess,spark",
                        help="the project's engines to measure (spark needs scripts/install_spark_runtime.sh)")
    parser.add_argument("--child", choices=["project", "baseline"])
    parser.add_argument("--engine", default="inprocess")
    parser.add_argument("--url")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        if args.child == "project":
            outcome = child_project(args.url, Path(args.out), args.engine)
        else:
            outcome = child_baseline(args.url, Path(args.out))
        outcome["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(outcome))
        return 0

    sizes = [args.ratings // 4, args.ratings]
    databases = {n: f"bench_ratings_{n}" for n in sizes}
    try:
        for n, name in databases.items():
            started = time.perf_counter()
            generate(name, n, args.customers)
            print(f"generated {n:,} ratings in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        url = {n: f"mysql+pymysql://root@127.0.0.1:3306/{name}" for n, name in databases.items()}
        project = {n: run_child("project", url[n]) for n in sizes}
        baseline = run_child("baseline", url[args.ratings])
        engines = [e.strip() for e in args.engines.split(",") if e.strip() and e.strip() != "inprocess"]
        spark_reason = spark_missing() if "spark" in engines else None
        spark = run_child("project", url[args.ratings], "spark") if "spark" in engines and not spark_reason else None
    finally:
        with mysql_connection() as conn:
            for name in databases.values():
                conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    big = project[args.ratings]
    rate = big["rows"] / big["seconds"]
    baseline_rate = baseline["rows"] / baseline["seconds"]
    line = {
        "benchmark": "ratings_etl",
        "ratings": args.ratings,
        "customers": args.customers,
        "project": {str(n): {"rows_per_second": round(p["rows"] / p["seconds"]), "seconds": round(p["seconds"], 2),
                             "peak_rss_mb": p["peak_rss_mb"]} for n, p in project.items()},
        "baseline_read_sql_to_parquet": {"rows_per_second": round(baseline_rate), "seconds": round(baseline["seconds"], 2),
                                         "peak_rss_mb": baseline["peak_rss_mb"]},
        "speedup_vs_baseline": round(rate / baseline_rate, 2),
        "spark_local": ({"master": PlatformSettings.from_env().spark_master, "rows_per_second": round(spark["rows"] / spark["seconds"]),
                         "seconds": round(spark["seconds"], 2), "dagster_process_peak_rss_mb": spark["peak_rss_mb"],
                         "spark_jvm_peak_rss_mb": spark["job"].get("spark_jvm_peak_rss_mb"),
                         "job_python_peak_rss_mb": spark["job"].get("job_python_peak_rss_mb"),
                         "spark_session_seconds": spark["job"].get("spark_session_seconds"),
                         "join_and_write_seconds": spark["job"].get("join_and_write_seconds"),
                         "inprocess_speedup_vs_spark": round(rate / (spark["rows"] / spark["seconds"]), 2)}
                        if spark else {"skipped": spark_reason or "not asked (--engines)"}),
        "rss_growth_mb_from_quarter_to_full": project[args.ratings]["peak_rss_mb"] - project[sizes[0]]["peak_rss_mb"],
        "targets_met": {
            "rows_per_second>=100000": rate >= 100_000,
            "peak_rss_mb<=500": big["peak_rss_mb"] <= 500,
        },
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
