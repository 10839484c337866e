"""The ratings ETL's Spark engine (local Spark through Dagster Pipes) on the real classicmodels data in MariaDB:
the same output as the lab's CSV and as the in-process engine, and failures that leave the last good output."""

from __future__ import annotations

import io

import dagster as dg
import pyarrow.parquet as pq
import pytest

import recsys_assets as recsys
from recsys_assets import ratings_etl
from recsys_assets.assets import TRAINING_PREFIX
from resources.etl_engine import RatingsEtlEngine
from resources.settings import SPARK_JDBC_JARS
from resources.source_db import SqlSourceDatabase
from tests.mysql_support import mysql_connection
from tests.test_ratings_etl import canonical, lab_csv

pytest.importorskip("pyspark", reason="the spark extra is not installed (scripts/install_spark_runtime.sh)")
pytestmark = pytest.mark.mysql

ETL = [recsys.source_ratings, recsys.source_customers, recsys.source_products, recsys.ratings_training_data]


def spark_engine(**overrides) -> RatingsEtlEngine:
    return RatingsEtlEngine(**{"engine": "spark", "spark_master": "local[2]", "spark_jdbc_jars": SPARK_JDBC_JARS,
                               **overrides})


def materialize(source_url, artifacts, engine, raise_on_error=True):
    return dg.materialize(ETL, resources={"source_db": SqlSourceDatabase(source_url=source_url), "artifacts": artifacts,
                                          "ratings_etl_engine": engine},
                          selection=dg.AssetSelection.assets(recsys.ratings_training_data),
                          raise_on_error=raise_on_error)


def files_of(store) -> dict[str, bytes]:
    return {info.key: store.read_bytes(info.key) for info in store.list(TRAINING_PREFIX + "/")}


def test_spark_writes_what_the_lab_and_the_in_process_engine_write(classicmodels_mysql, local_artifacts, tmp_path,
                                                                  datasets_dir):
    result = materialize(classicmodels_mysql, local_artifacts, spark_engine())
    meta = {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node("ratings_training_data")[0]
            .metadata.items()}
    assert (meta["rows"], meta["customers"], meta["products"], meta["engine"]) == (2532, 98, 109, "spark")
    assert meta["job_spark_master"] == "local[2]" and meta["job_spark_version"].startswith("3.5")

    spark_rows = canonical(ratings_etl.read_partitioned(local_artifacts, TRAINING_PREFIX))
    inprocess = type(local_artifacts)(root=str(tmp_path / "inprocess"))
    materialize(classicmodels_mysql, inprocess, RatingsEtlEngine())
    inprocess_rows = canonical(ratings_etl.read_partitioned(inprocess, TRAINING_PREFIX))
    lab = canonical(lab_csv(datasets_dir))
    assert spark_rows.dtypes.to_dict() == inprocess_rows.dtypes.to_dict()
    assert spark_rows.equals(inprocess_rows)
    for column in lab.columns:  # value for value, as the in-process engine's own test checks
        if lab[column].dtype.kind == "f":
            assert (spark_rows[column] - lab[column]).abs().max() < 1e-9, column
        else:
            assert spark_rows[column].fillna("").tolist() == lab[column].fillna("").tolist(), column

    ours, theirs = (store.read_json(f"{TRAINING_PREFIX}/_manifest.json") for store in (local_artifacts, inprocess))
    same = ("rows", "customers", "products", "rating_histogram", "partition_column", "schema", "source")
    assert {k: ours[k] for k in same} == {k: theirs[k] for k in same}
    assert (ours["engine"], theirs["engine"]) == ("spark", "inprocess")
    assert [f.split("/")[0] for f in ours["files"]] == [f.split("/")[0] for f in theirs["files"]]
    layout = {key.rsplit("/", 1)[-1] if "=" not in key else key.split("/")[1] for key in files_of(local_artifacts)}
    assert layout == {"_manifest.json", "_SUCCESS"} | {f"customernumber={c}" for c in lab.customernumber.unique()}
    first = local_artifacts.read_bytes(f"{TRAINING_PREFIX}/{ours['files'][0]}")
    schema = pq.read_schema(io.BytesIO(first))
    assert schema.names == theirs_schema_names(inprocess, theirs) and "customernumber" not in schema.names
    assert pq.ParquetFile(io.BytesIO(first)).metadata.row_group(0).column(0).compression == "SNAPPY"


def theirs_schema_names(store, manifest) -> list[str]:
    return pq.read_schema(io.BytesIO(store.read_bytes(f"{TRAINING_PREFIX}/{manifest['files'][0]}"))).names


def test_a_failed_spark_run_names_the_cause_and_leaves_the_last_good_output(classicmodels_mysql, local_artifacts):
    materialize(classicmodels_mysql, local_artifacts, spark_engine())
    before = files_of(local_artifacts)
    database = classicmodels_mysql.rsplit("/", 1)[1]
    with mysql_connection(database) as conn:  # a rating that is not a number, in a batch of good ones
        conn.cursor().execute("ALTER TABLE ratings MODIFY productRating VARCHAR(10)")
        conn.cursor().execute("UPDATE ratings SET productRating = 'five' WHERE customerNumber = 112 LIMIT 1")
        conn.commit()
    try:
        result = materialize(classicmodels_mysql, local_artifacts, spark_engine(), raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
        assert "the Spark job failed" in message and "column productrating" in message and "'five'" in message
        assert "customernumber=112" in message
        assert files_of(local_artifacts) == before  # nothing staged left, nothing replaced
    finally:
        with mysql_connection(database) as conn:
            conn.cursor().execute("UPDATE ratings SET productRating = '5' WHERE productRating = 'five'")
            conn.cursor().execute("ALTER TABLE ratings MODIFY productRating INT")
            conn.commit()


def test_missing_jdbc_drivers_and_a_socket_source_are_named(classicmodels_mysql, local_artifacts, tmp_path):
    result = materialize(classicmodels_mysql, local_artifacts, spark_engine(spark_jdbc_jars=str(tmp_path / "x.jar")),
                         raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "JDBC driver(s) missing" in str(failure.step_failure_data.user_failure_data) + failure.message
    socket_url = "mysql+pymysql://root@/classicmodels?unix_socket=/run/mysqld/mysqld.sock"
    result = materialize(socket_url, local_artifacts, spark_engine(), raise_on_error=False)
    assert not result.success
    assert not local_artifacts.list(TRAINING_PREFIX + "/")
