"""The ratings ETL's Spark engine (local Spark through Dagster Pipes) on the real classicmodels data in MariaDB:
the same output as the lab's CSV and as the in-process engine, and failures that leave the last good output."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from benchmarks.harness import mysql_connection
import recsys_assets as recsys
from recsys_assets.assets import TRAINING_PREFIX
from resources.etl_engine import RatingsEtlEngine
from resources.settings import SPARK_JDBC_JARS
from resources.source_db import SqlSourceDatabase
from tests.test_ratings_etl import canonical, lab_csv, read_partitioned

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

    spark_rows = canonical(read_partitioned(local_artifacts, TRAINING_PREFIX))
    inprocess = type(local_artifacts)(root=str(tmp_path / "inprocess"))
    materialize(classicmodels_mysql, inprocess, RatingsEtlEngine())
    inprocess_rows = canonical(read_partitioned(inprocess, TRAINING_PREFIX))
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
    materialize(classicmodels_mysql, local_artifacts, RatingsEtlEngine())  # the last good output (any engine's)
    before = files_of(local_artifacts)
    with a_bad_rating(classicmodels_mysql, customer=112, value="five"):  # one poison value among 2,532 good ones
        result = materialize(classicmodels_mysql, local_artifacts, spark_engine(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
    assert "the Spark job failed" in message and "column productrating" in message and "'five'" in message
    assert "customernumber=112" in message
    assert files_of(local_artifacts) == before  # nothing staged left, nothing replaced


@contextmanager
def a_bad_rating(source_url: str, customer: int, value: str | None):
    """One of `customer`'s ratings set to `value` (the column made text for it), put back as it was after."""
    database = source_url.rsplit("/", 1)[1]
    with mysql_connection(database) as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                       "AND TABLE_NAME = 'ratings' AND COLUMN_NAME = 'productRating'", (database,))
        column_type, nullable = cursor.fetchone()
        definition = f"{column_type}{'' if nullable == 'YES' else ' NOT NULL'}"
        cursor.execute("SELECT productCode, productRating FROM ratings WHERE customerNumber = %s "
                       "ORDER BY productCode LIMIT 1", (customer,))
        product, original = cursor.fetchone()
        cursor.execute("ALTER TABLE ratings MODIFY productRating VARCHAR(10)")
        cursor.execute("UPDATE ratings SET productRating = %s WHERE customerNumber = %s AND productCode = %s",
                       (value, customer, product))
        conn.commit()
    try:
        yield
    finally:
        with mysql_connection(database) as conn:
            cursor = conn.cursor()
            cursor.execute("UPDATE ratings SET productRating = %s WHERE customerNumber = %s AND productCode = %s",
                           (original, customer, product))
            cursor.execute(f"ALTER TABLE ratings MODIFY productRating {definition}")
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


# --- the glue engine: PipesGlueClient against moto, the job run by local Spark --------------------------------


class LocalGlueEngine(RatingsEtlEngine):
    """The `glue` engine with Glue played locally (tests/glue_support.py)."""

    workdir: str

    def glue_client(self):
        from tests.glue_support import LocalGlue

        return LocalGlue(super().glue_client(), self.s3_client(), self.endpoint_url, Path(self.workdir))


@pytest.fixture
def glue_setup(moto, boto_client, s3_artifacts, tmp_path):
    from tests.conftest import REGION
    from tests.glue_support import create_job

    location = create_job(boto_client("glue"), boto_client("s3"), s3_artifacts.bucket, s3_artifacts.prefix)
    engine = LocalGlueEngine(engine="glue", pipes_bucket=s3_artifacts.bucket,
                             pipes_prefix=f"{s3_artifacts.prefix}/pipes/", region_name=REGION, endpoint_url=moto,
                             glue_worker_type="G.2X", glue_workers=3, workdir=str(tmp_path))
    return engine, location


PASSWORD = "S3cr3t-p@ss:w/rd?#%&;x"


@pytest.fixture
def reader_with_password(classicmodels_mysql):
    """A source user with a password full of URL-special characters, allowed to read the database; its URL."""
    from urllib.parse import quote

    database = classicmodels_mysql.rsplit("/", 1)[1]
    with mysql_connection() as conn:
        conn.cursor().execute("CREATE OR REPLACE USER 'etl_reader'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        conn.cursor().execute(f"GRANT SELECT ON `{database}`.* TO 'etl_reader'@'%'")
    yield f"mysql+pymysql://etl_reader:{quote(PASSWORD, safe='')}@127.0.0.1:3306/{database}"
    with mysql_connection() as conn:
        conn.cursor().execute("DROP USER IF EXISTS 'etl_reader'@'%'")


def test_glue_runs_the_job_through_pipes_and_writes_what_the_other_engines_write(classicmodels_mysql, reader_with_password,
                                                                     s3_artifacts, glue_setup, boto_client, tmp_path):
    engine, location = glue_setup
    boto_client("secretsmanager").create_secret(Name="mldp/source", SecretString=json.dumps(
        {"username": "etl_reader", "password": PASSWORD}))
    engine = LocalGlueEngine(**{**engine.model_dump(), "glue_source_secret_id": "mldp/source"})
    result = materialize(reader_with_password, s3_artifacts, engine)
    for event in result.all_events:  # the password is in no event (its URL-quoted form neither)
        assert PASSWORD not in str(event) and "S3cr3t" not in str(event)
    assert not [f for f in Path(engine.workdir).glob("*.log") if "S3cr3t" in f.read_text(errors="replace")]
    meta = {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node("ratings_training_data")[0]
            .metadata.items()}
    assert (meta["rows"], meta["customers"], meta["engine"]) == (2532, 98, "glue")
    assert meta["job_AWS Glue Job Run ID"].startswith("jr_") and meta["job_AWS Glue Job Name"] == "mldp-ratings-etl"
    # the script Glue ran is this code's, uploaded to the job's script location before the run
    bucket, _, key = location.removeprefix("s3://").partition("/")
    uploaded = boto_client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert uploaded == (Path(recsys.__file__).parent / "ratings_etl_spark.py").read_bytes()
    from tests.glue_support import started_runs

    started = started_runs(Path(engine.workdir))[-1]
    assert (started["WorkerType"], started["NumberOfWorkers"]) == ("G.2X", 3)
    assert "--dagster-pipes-context" in started["Arguments"] and "--dagster-pipes-messages" in started["Arguments"]
    assert not any("S3cr3t" in value for value in started["Arguments"].values())
    assert started["Arguments"]["--source-secret-id"] == "mldp/source"

    # what the in-process engine writes (and so, by the first test, what the spark engine writes)
    glue_rows = canonical(read_partitioned(s3_artifacts, TRAINING_PREFIX))
    inprocess = type_local(tmp_path)
    materialize(classicmodels_mysql, inprocess, RatingsEtlEngine())
    assert glue_rows.equals(canonical(read_partitioned(inprocess, TRAINING_PREFIX)))
    manifest = s3_artifacts.read_json(f"{TRAINING_PREFIX}/_manifest.json")
    assert manifest["engine"] == "glue" and len(manifest["files"]) == 98
    # nothing left behind: no staging, no Pipes context or message chunks
    keys = [o["Key"] for o in boto_client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if "/_staging/" in k or "/pipes/" in k]


def type_local(tmp_path):
    from resources.artifacts import LocalArtifactStore

    return LocalArtifactStore(root=str(tmp_path / "spark"))


def test_a_failed_glue_run_surfaces_glues_message_and_leaves_the_last_good_output(classicmodels_mysql, s3_artifacts,
                                                                                 glue_setup):
    engine, _location = glue_setup
    materialize(classicmodels_mysql, s3_artifacts, RatingsEtlEngine())  # the last good output (any engine's)
    before = files_of(s3_artifacts)
    with a_bad_rating(classicmodels_mysql, customer=119, value=None):
        result = materialize(classicmodels_mysql, s3_artifacts, engine, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.user_failure_data) + failure.step_failure_data.error.message
    assert "the Glue job failed" in message and "FAILED" in message
    assert "column productrating: NULL is not a valid integer" in message and "customernumber=119" in message
    assert files_of(s3_artifacts) == before


def test_a_glue_job_that_does_not_exist_is_named(classicmodels_mysql, s3_artifacts, glue_setup):
    engine, _location = glue_setup
    missing = LocalGlueEngine(**{**engine.model_dump(), "glue_job_name": "no-such-job"})
    result = materialize(classicmodels_mysql, s3_artifacts, missing, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no Glue job 'no-such-job' (GLUE_ETL_JOB_NAME)" in str(failure.step_failure_data.user_failure_data)


@pytest.fixture
def postgres_source():
    """The demo classicmodels tables in a database of their own on a PostgreSQL server reached over TCP (the
    machine's, 127.0.0.1:5432: JDBC cannot use the embedded server's socket); its URL."""
    import uuid

    import psycopg
    import sqlalchemy as sa

    from resources import classicmodels_demo

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432: {exc}")
    name = f"classicmodels_spark_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = sa.create_engine(url)
    classicmodels_demo.ensure_loaded(engine, 7)
    engine.dispose()
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_spark_reads_a_postgresql_source_as_the_in_process_engine_does(postgres_source, local_artifacts, tmp_path):
    materialize(postgres_source, local_artifacts, spark_engine())
    inprocess = type_local(tmp_path)
    materialize(postgres_source, inprocess, RatingsEtlEngine())
    spark_rows, inprocess_rows = (canonical(read_partitioned(store, TRAINING_PREFIX))
                                  for store in (local_artifacts, inprocess))
    assert len(spark_rows) > 1000 and spark_rows.equals(inprocess_rows)


def test_a_glue_run_whose_source_secret_is_missing_fails_with_the_jobs_message(classicmodels_mysql, s3_artifacts,
                                                                              glue_setup, boto_client):
    engine, _location = glue_setup
    secretless = LocalGlueEngine(**{**engine.model_dump(), "glue_source_secret_id": "mldp/no-such-secret"})
    result = materialize(classicmodels_mysql, s3_artifacts, secretless, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.user_failure_data)
    assert "the Glue job failed" in message and "ResourceNotFoundException" in message, message
    assert not s3_artifacts.list(TRAINING_PREFIX + "/")  # nothing published, nothing staged left


def test_an_empty_ratings_table_publishes_an_empty_output_as_the_in_process_engine_does(classicmodels_mysql,
                                                                                        local_artifacts):
    database = classicmodels_mysql.rsplit("/", 1)[1]
    with mysql_connection(database) as conn:
        conn.cursor().execute("RENAME TABLE ratings TO ratings_kept")
        conn.cursor().execute("CREATE TABLE ratings LIKE ratings_kept")
    try:
        result = dg.materialize(ETL + [recsys.ratings_training_data_not_empty],
                                resources={"source_db": SqlSourceDatabase(source_url=classicmodels_mysql),
                                           "artifacts": local_artifacts, "ratings_etl_engine": spark_engine()},
                                selection=dg.AssetSelection.assets(recsys.ratings_training_data), raise_on_error=False)
    finally:
        with mysql_connection(database) as conn:
            conn.cursor().execute("DROP TABLE ratings")
            conn.cursor().execute("RENAME TABLE ratings_kept TO ratings")
    manifest = local_artifacts.read_json(f"{TRAINING_PREFIX}/_manifest.json")
    assert (manifest["rows"], manifest["files"], manifest["engine"]) == (0, [], "spark")
    [check] = result.get_asset_check_evaluations()
    assert not check.passed  # the blocking check stops the pipeline here, as with the in-process engine
