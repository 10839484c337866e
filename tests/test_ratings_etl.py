"""The ratings ETL on the real classicmodels data in MariaDB, and on bad sources."""

import io

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from benchmarks.harness import mysql_connection
import recsys_assets as recsys
from recsys_assets import ratings_etl
from recsys_assets.assets import TRAINING_PREFIX
from resources.artifacts import join_key
from resources.etl_engine import RatingsEtlEngine
from resources.source_db import SourceDatabaseError, SqlSourceDatabase

ETL = [recsys.source_ratings, recsys.source_customers, recsys.source_products, recsys.ratings_training_data,
       recsys.ratings_training_data_not_empty, recsys.recsys_catalog, recsys.recsys_model]


def run_etl(source, artifacts, chunk_rows=50_000, raise_on_error=True, selection=None):
    return dg.materialize(
        ETL, resources={"source_db": source, "artifacts": artifacts, "sagemaker": None, "registry": None,
                        "ratings_etl_engine": RatingsEtlEngine()},
        selection=selection or dg.AssetSelection.assets(recsys.ratings_training_data),
        run_config=dg.RunConfig({"ratings_training_data": recsys.assets.RatingsEtlConfig(chunk_rows=chunk_rows)}),
        raise_on_error=raise_on_error,
    )


def lab_csv(datasets_dir) -> pd.DataFrame:
    return pd.read_csv(datasets_dir / "classicmodels" / "ratings_ml_training_dataset.csv",
                       keep_default_na=False, na_values={"state": [""], "postalcode": [""]})


def read_partitioned(store, prefix: str) -> pd.DataFrame:
    """The published training data as one DataFrame (the files listed in its manifest, partition column restored)."""
    manifest = store.read_json(join_key(prefix, ratings_etl.MANIFEST))
    frames = []
    for relative in manifest["files"]:
        customer = int(relative.split("/", 1)[0].split("=", 1)[1])
        table = pq.read_table(io.BytesIO(store.read_bytes(join_key(prefix, relative))))
        frames.append(table.to_pandas().assign(**{ratings_etl.PARTITION_COLUMN: customer}))
    if not frames:
        empty = ratings_etl.FILE_SCHEMA.empty_table().to_pandas()
        return empty.assign(**{ratings_etl.PARTITION_COLUMN: pd.Series(dtype="int64")})
    return pd.concat(frames, ignore_index=True)[[f.name for f in ratings_etl.SCHEMA]]


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[f.name for f in ratings_etl.SCHEMA]].sort_values(["customernumber", "productcode"]).reset_index(drop=True)


def test_real_data_matches_the_labs_output(classicmodels_mysql, local_artifacts, datasets_dir):
    source = SqlSourceDatabase(source_url=classicmodels_mysql)
    result = run_etl(source, local_artifacts, chunk_rows=500)  # several chunks, customers split across them
    meta = result.asset_materializations_for_node("ratings_training_data")[0].metadata
    assert (meta["rows"].value, meta["customers"].value, meta["products"].value) == (2532, 98, 109)

    written = read_partitioned(local_artifacts, TRAINING_PREFIX)
    expected = lab_csv(datasets_dir)
    ours, theirs = canonical(written), canonical(expected)
    assert len(ours) == len(theirs) == 2532
    for column in ("customernumber", "quantityinstock", "productrating"):
        assert ours[column].dtype == "int64" and (ours[column] == theirs[column]).all(), column
    for column in ("creditlimit", "buyprice", "msrp"):
        assert ours[column].dtype == "float64" and (ours[column] - theirs[column]).abs().max() < 1e-9, column
    for column in ("city", "state", "postalcode", "country", "productcode", "productline", "productscale"):
        assert ours[column].fillna("").tolist() == theirs[column].fillna("").tolist(), column

    # hive layout: one folder per customer, the partition column in the path only
    folders = {info.key.split("/")[1] for info in local_artifacts.list(TRAINING_PREFIX + "/") if "=" in info.key}
    assert folders == {f"customernumber={c}" for c in expected.customernumber.unique()}
    some_file = next(i.key for i in local_artifacts.list(TRAINING_PREFIX + "/") if i.key.endswith(".parquet"))
    assert "customernumber" not in local_artifacts.read_parquet(some_file).columns
    assert local_artifacts.exists(f"{TRAINING_PREFIX}/_SUCCESS")


def test_a_rerun_replaces_the_output_completely(classicmodels_mysql, local_artifacts):
    source = SqlSourceDatabase(source_url=classicmodels_mysql)
    run_etl(source, local_artifacts)
    first = {i.key for i in local_artifacts.list(TRAINING_PREFIX + "/")}
    dropped = 103
    with mysql_connection(sa.make_url(classicmodels_mysql).database) as conn:
        conn.cursor().execute("CREATE TABLE ratings_backup AS SELECT * FROM ratings")
        conn.cursor().execute("DELETE FROM ratings WHERE customerNumber = %s", (dropped,))
    try:
        result = run_etl(source, local_artifacts)
    finally:
        with mysql_connection(sa.make_url(classicmodels_mysql).database) as conn:
            conn.cursor().execute("DELETE FROM ratings")
            conn.cursor().execute("INSERT INTO ratings SELECT * FROM ratings_backup")
            conn.cursor().execute("DROP TABLE ratings_backup")
    second = {i.key for i in local_artifacts.list(TRAINING_PREFIX + "/")}
    assert not (first & second) - {f"{TRAINING_PREFIX}/_manifest.json", f"{TRAINING_PREFIX}/_SUCCESS"}
    assert not any(f"customernumber={dropped}/" in key for key in second)  # no stale partition
    written = read_partitioned(local_artifacts, TRAINING_PREFIX)
    assert dropped not in set(written.customernumber)
    meta = result.asset_materializations_for_node("ratings_training_data")[0].metadata
    assert meta["stale_files_removed"].value == len(first) - 2


class FailingAfterOneChunk(SqlSourceDatabase):
    """The real source, with the connection lost after the first chunk of ratings."""

    def stream(self, statement, chunk_rows=50_000):
        for number, chunk in enumerate(super().stream(statement, chunk_rows)):
            if number == 1 and "productRating" in str(statement):
                raise ConnectionError("lost connection to the source during the ratings read")
            yield chunk


def test_a_failed_rerun_leaves_the_previous_output_whole(classicmodels_mysql, local_artifacts):
    run_etl(SqlSourceDatabase(source_url=classicmodels_mysql), local_artifacts)
    before = {i.key: local_artifacts.read_bytes(i.key) for i in local_artifacts.list(TRAINING_PREFIX + "/")}
    result = run_etl(FailingAfterOneChunk(source_url=classicmodels_mysql), local_artifacts, chunk_rows=500,
                     raise_on_error=False)
    assert not result.success
    after = {i.key: local_artifacts.read_bytes(i.key) for i in local_artifacts.list(TRAINING_PREFIX + "/")}
    assert after == before  # none of the failed run's files, all of the previous run's
    assert len(read_partitioned(local_artifacts, TRAINING_PREFIX)) == 2532


def test_missing_table_and_column_are_named(mariadb, local_artifacts):
    name = "classicmodels_broken_test"
    with mysql_connection() as conn:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.cursor().execute(f"CREATE DATABASE `{name}`")
    try:
        with mysql_connection(name) as conn:
            cur = conn.cursor()
            cur.execute("CREATE TABLE customers (customerNumber int, city varchar(50), state varchar(50), "
                        "postalCode varchar(15), country varchar(50), creditLimit decimal(10,2))")
            cur.execute("CREATE TABLE products (productCode varchar(15), productLine varchar(50), "
                        "productScale varchar(10), quantityInStock smallint, buyPrice decimal(10,2))")
        source = SqlSourceDatabase(source_url=f"mysql+pymysql://root@127.0.0.1:3306/{name}")
        with pytest.raises(ratings_etl.SourceSchemaError, match="the source database has no 'ratings' table"):
            recsys.assets.source_column_names(source)
        with mysql_connection(name) as conn:
            conn.cursor().execute("CREATE TABLE ratings (customerNumber int, productCode varchar(15), productRating int)")
        with pytest.raises(ratings_etl.SourceSchemaError, match="source table 'products' is missing column\\(s\\): MSRP"):
            recsys.assets.source_column_names(source)
        with mysql_connection(name) as conn:
            conn.cursor().execute("ALTER TABLE products ADD COLUMN MSRP decimal(10,2)")
        # an empty ratings table: the asset writes nothing to train on and its blocking check stops the model
        result = run_etl(source, local_artifacts, raise_on_error=False,
                         selection=dg.AssetSelection.assets(recsys.ratings_training_data, recsys.recsys_model))
        [check] = result.get_asset_check_evaluations()
        assert not check.passed and check.metadata["rows"].value == 0
        assert "nothing to train on" in check.description
        assert not result.asset_materializations_for_node("recsys_model")
    finally:
        with mysql_connection() as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_values_of_the_wrong_type_are_named():
    frame = pd.DataFrame({"customernumber": [103, None], "productcode": ["S10_1", "S10_2"], "productrating": [5, 4]})
    with pytest.raises(ratings_etl.SourceSchemaError,
                       match=r"source table 'ratings', column customernumber: NULL is not a valid integer "
                             r"\(row with customernumber=NULL, productcode='S10_2'\)"):
        ratings_etl.typed(frame, "ratings")
    prices = pd.DataFrame({"productcode": ["S10_1"], "buyprice": ["cheap"]})
    with pytest.raises(ratings_etl.SourceSchemaError, match=r"'products', column buyprice: 'cheap' is not a valid number"):
        ratings_etl.typed(prices, "products")
    assert ratings_etl.typed(pd.DataFrame({"creditlimit": [None, "21000.00"]}), "customers")["creditlimit"].isna().tolist() == [True, False]


def test_unreachable_source_is_named_without_password(local_artifacts):
    source = SqlSourceDatabase(source_url="mysql+pymysql://etl:s3cret@127.0.0.1:1/classicmodels?connect_timeout=2")
    with pytest.raises(SourceDatabaseError) as info:
        source.table_columns("ratings")
    assert "127.0.0.1:1/classicmodels" in str(info.value) and "s3cret" not in str(info.value)
