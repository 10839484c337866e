"""The ratings ETL as a PySpark job: the same join, columns and types as the in-process engine
(`recsys_assets.ratings_etl`), for the `spark` engine (local mode, in a subprocess) and the `glue` engine
(this file is the AWS Glue job's script).

It reads `ratings`, `customers` and `products` over JDBC, joins them as the lab does (inner joins, the two
small tables broadcast), casts every column to the output contract, checks the values the in-process engine
checks (a NULL or non-number in an integer column fails the run, naming table, column and row), and writes
snappy Parquet partitioned by customer to a *staging* location: a local folder or `s3://...`. Nothing is
published here: the Dagster asset moves the staged files into place, writes the manifest and `_SUCCESS`, and
removes the previous run's files (`ratings_etl.publish_staged`), so a failed job never touches the last good
output. The counts the manifest needs (rows, customers, products, the rating histogram) are read back from
what was written and reported to Dagster through Pipes, with the timings.

The contract (source column spellings, output names and types) comes from the asset as JSON (`--contract`),
built from `ratings_etl`'s definitions: the columns are defined once, there.

Runs without `awsglue`: Glue's own arguments (`--JOB_NAME`, `--JOB_RUN_ID`, ...) are accepted and ignored.
Credentials never travel as arguments: `ETL_SOURCE_USER` / `ETL_SOURCE_PASSWORD` in the environment (spark), or
`--source-secret-id`, a Secrets Manager secret with `username` and `password` (glue).

    python ratings_etl_spark.py --contract '{...}' --source-url jdbc:mysql://host:3306/classicmodels \\
        --output /path/to/_staging/run [--master local[2]] [--jars a.jar,b.jar] [--stage-locally]

Only pyspark, dagster-pipes and (for S3) boto3 are imported: Glue receives this one file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SPARK_TYPES = {"int64": "long", "double": "double", "string": "string"}
# JDBC driver classes: Glue 5 carries MySQL Connector/J and PostgreSQL's driver; a local run passes Debian's MariaDB
# driver for MySQL sources (`--mysql-driver`), which reads MySQL and MariaDB under jdbc:mysql: URLs
DRIVERS = {"mysql": "com.mysql.cj.jdbc.Driver", "postgresql": "org.postgresql.Driver"}


class EtlJobError(RuntimeError):
    """A problem with the source data or the settings; the message names the table, column or setting."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--contract", required=True, help="JSON: tables, source columns, output schema")
    parser.add_argument("--source-url", required=True, help="JDBC URL without credentials")
    parser.add_argument("--source-secret-id", default="", help="Secrets Manager secret with username/password")
    parser.add_argument("--output", required=True, help="staging folder or s3:// prefix, replaced by this run")
    parser.add_argument("--master", default="", help="Spark master for local runs (Glue sets its own)")
    parser.add_argument("--jars", default="", help="comma-separated JDBC driver jars (local runs)")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--read-partitions", type=int, default=1, help="parallel JDBC reads of ratings")
    parser.add_argument("--mysql-driver", default=DRIVERS["mysql"], help="JDBC driver class for jdbc:mysql: sources")
    parser.add_argument("--stage-locally", action="store_true",
                        help="write to a local folder, then upload to --output (Spark without an S3 filesystem)")
    args, _ignored = parser.parse_known_args(argv)  # Glue's and Dagster Pipes' own arguments
    return args


def open_pipes():
    """Dagster Pipes: over S3 when launched by Glue (`--dagster-pipes-context` among the arguments), else
    the environment's channel (a subprocess of the Dagster step)."""
    from dagster_pipes import (PipesCliArgsParamsLoader, PipesS3ContextLoader, PipesS3MessageWriter,
                               open_dagster_pipes)

    if "--dagster-pipes-context" in sys.argv:
        import boto3

        s3 = boto3.client("s3")
        return open_dagster_pipes(params_loader=PipesCliArgsParamsLoader(), context_loader=PipesS3ContextLoader(client=s3),
                                  message_writer=PipesS3MessageWriter(client=s3, interval=1))
    return open_dagster_pipes()


def credentials(args: argparse.Namespace) -> dict[str, str]:
    if args.source_secret_id:
        import boto3

        secret = boto3.client("secretsmanager").get_secret_value(SecretId=args.source_secret_id)["SecretString"]
        try:
            values = json.loads(secret)
        except ValueError:
            raise EtlJobError(f"secret {args.source_secret_id}: not JSON with username and password") from None
        if not isinstance(values, dict) or "username" not in values:
            raise EtlJobError(f"secret {args.source_secret_id}: no 'username' field")
        return {"user": str(values["username"]), "password": str(values.get("password") or "")}
    return {"user": os.environ.get("ETL_SOURCE_USER", ""), "password": os.environ.get("ETL_SOURCE_PASSWORD", "")}


def spark_session(args: argparse.Namespace):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("ratings-etl")
    if args.master:  # a local run; on Glue the session is Glue's
        builder = (builder.master(args.master)
                   .config("spark.ui.enabled", "false")
                   .config("spark.driver.memory", args.driver_memory)
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.sql.shuffle.partitions", "8")
                   # plain files: no .crc companions, no Spark _SUCCESS (the asset writes the real one)
                   .config("spark.hadoop.fs.file.impl", "org.apache.hadoop.fs.RawLocalFileSystem"))
        if args.jars:
            builder = builder.config("spark.jars", args.jars)  # local jars only: nothing is downloaded
    builder = builder.config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
    return builder.getOrCreate()


def jdbc_reader(spark, args: argparse.Namespace, login: dict[str, str]):
    kind = args.source_url.split(":", 2)[1] if args.source_url.startswith("jdbc:") else ""
    if kind not in DRIVERS:
        raise EtlJobError(f"--source-url must be a jdbc:mysql:// or jdbc:postgresql:// URL, not {args.source_url!r}")
    drivers = {**DRIVERS, "mysql": args.mysql_driver}

    def read(table: str, columns: list[str], partition_column: str | None = None):
        quote = "`" if kind == "mysql" else '"'
        listed = ", ".join(f"{quote}{c}{quote}" for c in columns)
        reader = (spark.read.format("jdbc").option("url", args.source_url).option("driver", drivers[kind])
                  .option("user", login["user"]).option("password", login["password"]).option("fetchsize", 10_000)
                  .option("dbtable", f"(select {listed} from {quote}{table}{quote}) as t"))
        if partition_column and args.read_partitions > 1:
            bounds = (spark.read.format("jdbc").option("url", args.source_url).option("driver", drivers[kind])
                      .option("user", login["user"]).option("password", login["password"])
                      .option("query", f"select min({quote}{partition_column}{quote}) as lo, "
                                       f"max({quote}{partition_column}{quote}) as hi from {quote}{table}{quote}")
                      .load().first())
            if bounds is not None and bounds["lo"] is not None:
                reader = (reader.option("partitionColumn", partition_column).option("lowerBound", int(bounds["lo"]))
                          .option("upperBound", int(bounds["hi"]) + 1).option("numPartitions", args.read_partitions))
        return reader.load()

    return read


def transform(read, contract: dict):
    """The lab's join with the contract's names and types; a value the contract cannot hold fails the run."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    columns = contract["columns"]  # table -> {source column: output column}
    frames = {}
    for table, mapping in columns.items():
        key = contract["partition_source"] if table == "ratings" else None
        frame = read(table, list(mapping), key)
        frames[table] = frame.select(*(F.col(f"`{source}`").alias(out) for source, out in mapping.items()))
    ratings, products, customers = frames["ratings"], frames["products"], frames["customers"]
    joined = (ratings.join(F.broadcast(products.dropDuplicates(["productcode"])), "productcode")
              .join(F.broadcast(customers.dropDuplicates(["customernumber"])), "customernumber"))
    origin = {out: table for table, mapping in columns.items() for out in mapping.values()}
    # read once: the checks and the write see the same rows (the source is not read again for the write)
    joined = joined.persist(StorageLevel.MEMORY_AND_DISK)
    typed, checks = [], []
    for name, kind in contract["schema"]:
        value = F.col(name).cast(SPARK_TYPES[kind])
        typed.append(value.alias(name))
        if kind == "int64":  # a NULL or a non-number in an integer column
            checks.append((name, F.col(name).isNull() | value.isNull()))
        elif kind == "double":  # a value present that is not a number
            checks.append((name, F.col(name).isNotNull() & value.isNull()))
    kinds = dict(contract["schema"])
    # one pass for every check: the first bad row, with which of its columns is bad
    flags = [F.when(bad, F.lit(name)) for name, bad in checks]
    first_bad = (joined.select("*", F.coalesce(*flags).alias("__bad")).where(F.col("__bad").isNotNull())
                 .orderBy("customernumber", "productcode").first())
    if first_bad is not None:
        name = first_bad["__bad"]
        shown = "NULL" if first_bad[name] is None else repr(first_bad[name])
        raise EtlJobError(f"source table {origin[name]!r}, column {name}: {shown} is not a valid "
                          f"{'integer' if kinds[name] == 'int64' else 'number'} (row with customernumber="
                          f"{first_bad['customernumber']!r}, productcode={first_bad['productcode']!r})")
    return joined.select(*typed)


def stage(spark, frame, output: str, partition_column: str, stage_locally: bool) -> tuple[list[str], dict]:
    """Parquet (snappy), one folder per customer, one file per folder, rows ordered by product, written to
    `output` (replaced); returns the files written (relative to `output`; not listed on S3) and the counts
    of what was written, read back."""
    target = tempfile.mkdtemp(prefix="ratings-etl-staging-") if stage_locally else output
    try:
        (frame.repartition(partition_column).sortWithinPartitions(partition_column, "productcode")
         .write.mode("overwrite").option("compression", "snappy").partitionBy(partition_column).parquet(target))
        # read back with the frame's schema: an empty output (no ratings) has no file to infer one from
        stats = counts(spark.read.schema(frame.schema).parquet(target), partition_column)
        files = [] if target.startswith("s3://") else sorted(
            str(p.relative_to(target)) for p in Path(target).rglob("*.parquet"))
        if stage_locally:
            upload(Path(target), files, output)
        return files, stats
    finally:
        if stage_locally:
            shutil.rmtree(target, ignore_errors=True)


def upload(root: Path, files: list[str], output: str) -> None:
    import boto3

    if not output.startswith("s3://"):
        raise EtlJobError(f"--stage-locally uploads to an s3:// --output, not {output!r}")
    bucket, _, prefix = output[len("s3://"):].partition("/")
    s3 = boto3.client("s3")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: s3.upload_file(str(root / f), bucket, f"{prefix.rstrip('/')}/{f}"), files))


def counts(frame, partition_column: str) -> dict:
    from pyspark.sql import functions as F

    totals = frame.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct(partition_column).alias("customers"),
                       F.countDistinct("productcode").alias("products")).first()
    histogram = {str(r["productrating"]): int(r["count"])
                 for r in frame.groupBy("productrating").count().orderBy("productrating").collect()}
    return {"rows": int(totals["rows"]), "customers": int(totals["customers"]), "products": int(totals["products"]),
            "rating_histogram": histogram}


def memory(spark) -> dict:
    """Peak resident memory of Spark's JVM (the driver; in local mode, the executors too) and of this Python
    process, in MB, where /proc tells (Linux)."""
    import resource

    figures = {"job_python_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    try:
        pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                figures["spark_jvm_peak_rss_mb"] = round(int(line.split()[1]) / 1024)
    except Exception:  # not Linux, or no access to the JVM's /proc entry: the figure is left out
        pass
    return figures


def summary(exc: BaseException) -> str:
    """One line for people: a Java exception's own message rather than py4j's stack trace."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:1000]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with open_pipes() as pipes:
        try:
            run(pipes, args)
        except Exception as exc:
            reason = summary(exc)
            error_file = pipes.extras.get("error_file") if hasattr(pipes, "extras") else None
            if error_file:
                Path(error_file).write_text(reason)
            print(f"ratings ETL failed: {reason}", file=sys.stderr, flush=True)  # Glue's ErrorMessage
            raise
    return 0


def run(pipes, args: argparse.Namespace) -> None:
    contract = json.loads(args.contract)
    started = time.perf_counter()
    spark = spark_session(args)
    try:
        session_seconds = time.perf_counter() - started
        frame = transform(jdbc_reader(spark, args, credentials(args)), contract)
        began = time.perf_counter()
        files, stats = stage(spark, frame, args.output, contract["partition_column"], args.stage_locally)
        written = time.perf_counter() - began
        pipes.log.info(f"{stats['rows']:,} ratings of {stats['customers']} customers staged at {args.output}")
        pipes.report_asset_materialization(metadata={
            **{key: value for key, value in stats.items() if key != "rating_histogram"},
            "rating_histogram_json": json.dumps(stats["rating_histogram"]),
            **({"staged_files": len(files)} if files else {}),
            "staging": args.output,
            "spark_version": spark.version,
            "spark_master": spark.sparkContext.master,
            "spark_session_seconds": round(session_seconds, 2),
            "join_and_write_seconds": round(written, 2),
            "job_seconds": round(time.perf_counter() - started, 2),
            **memory(spark),
        })
    finally:
        if args.master:
            spark.stop()




if __name__ == "__main__":
    sys.exit(main())
