"""Read-only access: the provisioned role, a URL, and Secrets Manager credentials (moto). Writes are refused
by the server, not just by the client."""

import json

import pandas as pd
import psycopg
import pytest
from dagster_aws.secretsmanager import SecretsManagerResource

from resources.readonly import (
    ProvisionedReadOnlyDatabase,
    ReadOnlyUrlDatabase,
    SecretConfigurationError,
    SecretsManagerReadOnlyDatabase,
)

REGION = "us-east-1"


@pytest.fixture(scope="module")
def seeded(app_db):
    with app_db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        conn.execute("INSERT INTO accounts VALUES (1, 'ada', 10.5), (2, 'bob', 20)")
    return app_db


@pytest.fixture(scope="module")
def readonly(seeded):
    return ProvisionedReadOnlyDatabase(primary=seeded, role="analyst_ro")


def socket_params(app_db):
    return psycopg.conninfo.conninfo_to_dict(app_db.conninfo())


def balance_total(app_db):
    with app_db.connect() as conn:
        return conn.execute("SELECT count(*), sum(balance) FROM accounts").fetchone()


def test_query_returns_a_dataframe_with_params(readonly):
    frame = readonly.query("SELECT id, owner FROM accounts WHERE balance > %(min)s ORDER BY id", {"min": 15})
    assert isinstance(frame, pd.DataFrame)
    assert frame.to_dict("records") == [{"id": 2, "owner": "bob"}]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO accounts VALUES (3, 'eve', 1)",
        "UPDATE accounts SET balance = 0",
        "DELETE FROM accounts",
        "CREATE TABLE scratch (x int)",
        "COMMIT; INSERT INTO accounts VALUES (4, 'mallory', 1)",
    ],
)
def test_writes_are_refused_by_the_server(readonly, seeded, statement):
    before = balance_total(seeded)
    with pytest.raises(psycopg.errors.Error) as info:
        readonly.query(statement)
    assert isinstance(info.value, (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction))
    assert balance_total(seeded) == before


def assert_role_cannot_write(ro, app_db):
    """Even a session that switches read-only transactions off is refused: the role has no privilege."""
    before = balance_total(app_db)
    with ro.connect() as conn:
        conn.read_only = False
        conn.autocommit = True
        conn.execute("SET default_transaction_read_only = off")
        assert conn.execute("SHOW transaction_read_only").fetchone()[0] == "off"
        for statement in ("INSERT INTO accounts VALUES (5, 'trudy', 1)", "DELETE FROM accounts",
                          "UPDATE accounts SET owner = 'x'", "CREATE TABLE scratch (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert balance_total(app_db) == before


def test_the_role_lacks_write_privileges_even_outside_read_only_transactions(readonly, seeded):
    assert_role_cannot_write(readonly, seeded)


def test_tables_created_later_are_readable(readonly, seeded):
    readonly.query("SELECT 1")  # provisions the role
    with seeded.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE later (x int)")
        conn.execute("INSERT INTO later VALUES (7)")
    assert readonly.query("SELECT x FROM later")["x"].tolist() == [7]


def test_connection_report(readonly):
    report = readonly.test_connection()
    assert report.user == "analyst_ro"
    assert report.transaction_read_only and not report.can_write_any_table and report.ok


def test_connection_report_flags_a_role_that_can_write(seeded):
    owner = ReadOnlyUrlDatabase(url=seeded.conninfo())  # the owner: read-only sessions, but write privileges
    report = owner.test_connection()
    assert report.transaction_read_only and report.can_write_any_table and not report.ok
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        owner.query("COMMIT; DELETE FROM accounts")  # every transaction of the session starts read-only


def test_query_chunks_streams_large_results(readonly):
    chunks = list(readonly.query_chunks("SELECT g AS n FROM generate_series(1, 2500) g", chunk_rows=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert chunks[-1]["n"].iloc[-1] == 2500


def test_readonly_url(readonly, seeded):
    readonly.query("SELECT 1")  # provisions the role this URL logs in as
    params = socket_params(seeded)
    url = f"postgresql://analyst_ro@/{params['dbname']}?host={params['host']}"
    ro = ReadOnlyUrlDatabase(url=url)
    assert ro.query("SELECT count(*) AS n FROM accounts")["n"].iloc[0] == 2
    with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
        ro.query("DELETE FROM accounts")
    assert_role_cannot_write(ro, seeded)


def test_secrets_manager_credentials(readonly, seeded, moto, boto_client):
    readonly.query("SELECT 1")
    params = socket_params(seeded)
    boto_client("secretsmanager").create_secret(Name="bank/replica", SecretString=json.dumps({
        "host": params["host"], "port": 5432, "username": "analyst_ro", "password": "not-checked-by-trust-auth",
        "dbname": params["dbname"], "engine": "postgres",
    }))
    ro = SecretsManagerReadOnlyDatabase(
        secret_id="bank/replica", secretsmanager=SecretsManagerResource(region_name=REGION, endpoint_url=moto))
    assert ro.query("SELECT owner FROM accounts ORDER BY id")["owner"].tolist() == ["ada", "bob"]
    assert ro.test_connection().ok
    assert_role_cannot_write(ro, seeded)


@pytest.mark.parametrize(
    "secret, message",
    [
        ({"host": "h", "username": "u", "dbname": "d", "password": ""}, "missing key(s) 'password'"),
        ({"host": "h", "password": "TOPSECRET", "username": "u"}, "missing key(s) 'dbname (or database)'"),
        ({"username": "u", "password": "TOPSECRET", "database": "d"}, "missing key(s) 'host'"),
        ({"host": "h", "username": "u", "password": "TOPSECRET", "database": "d", "port": "abc"}, "non-numeric 'port'"),
        ("not json TOPSECRET", "is not a JSON object"),
    ],
)
def test_bad_secrets_name_the_key_never_the_values(moto, boto_client, secret, message):
    body = secret if isinstance(secret, str) else json.dumps(secret)
    boto_client("secretsmanager").create_secret(Name="bank/replica", SecretString=body)
    ro = SecretsManagerReadOnlyDatabase(
        secret_id="bank/replica", secretsmanager=SecretsManagerResource(region_name=REGION, endpoint_url=moto))
    with pytest.raises(SecretConfigurationError) as info:
        ro.query("SELECT 1")
    assert message in str(info.value) and "bank/replica" in str(info.value)
    assert "TOPSECRET" not in str(info.value)


def test_missing_secret(moto):
    ro = SecretsManagerReadOnlyDatabase(
        secret_id="nope", secretsmanager=SecretsManagerResource(region_name=REGION, endpoint_url=moto))
    with pytest.raises(SecretConfigurationError, match="secret 'nope' does not exist"):
        ro.query("SELECT 1")
