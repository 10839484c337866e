"""Read-only access: the provisioned role, a URL, and Secrets Manager credentials (moto). Writes are refused
by the server, not just by the client."""

import json
import time
import uuid

import pandas as pd
import psycopg
import pytest
from dagster_aws.secretsmanager import SecretsManagerResource

from resources.readonly import (
    ESCAPE_PROBES,
    ProvisionedReadOnlyDatabase,
    ReadOnlyRoleError,
    ReadOnlyUrlDatabase,
    ReadOnlyViolation,
    SecretConfigurationError,
    SecretsManagerReadOnlyDatabase,
    statement_start,
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
    with ro._session() as conn:  # a raw session, to show what the server itself refuses
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
    assert set(report.probes) == set(ESCAPE_PROBES)
    assert all(outcome.startswith("refused") for outcome in report.probes.values()), report.probes


def test_connection_report_flags_a_role_that_can_write(seeded):
    owner = ReadOnlyUrlDatabase(url=seeded.conninfo())  # the owner: read-only sessions, but write privileges
    report = owner.test_connection()
    assert report.transaction_read_only and report.can_write_any_table and not report.ok
    with pytest.raises(ReadOnlyViolation):
        owner.query("COMMIT; DELETE FROM accounts")  # no transaction control, one statement per call
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        owner.query("DELETE FROM accounts")  # the resource's transaction is read-only even for the owner


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


# --- escapes: nothing sent through the resource may last or block the application ----------------------


def server_state(app_db, role):
    """What an escape could change: large objects, the role's settings and password, advisory locks held."""
    with app_db.connect() as conn:
        return conn.execute(
            """
            SELECT (SELECT count(*) FROM pg_largeobject_metadata),
                   (SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole,
                           unnest(s.setconfig) c WHERE r.rolname = %(role)s),
                   (SELECT rolpassword FROM pg_authid WHERE rolname = %(role)s),
                   (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')
            """, {"role": role}).fetchone()


ESCAPES = [
    *ESCAPE_PROBES.values(),
    "COMMIT; SET default_transaction_read_only = off; COMMIT; SELECT lo_from_bytea(0, repeat('x', 1000)::bytea)",
    "/* a comment first */ -- and a line comment\n  commit; ALTER ROLE CURRENT_USER PASSWORD 'owned'",
    "ROLLBACK; SET default_transaction_read_only = off; ALTER ROLE CURRENT_USER SET statement_timeout = 0",
    "END; SELECT lo_create(0)",
    "PREPARE TRANSACTION 'held'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SELECT lo_from_bytea(0, 'x'::bytea)",
    "SELECT set_config('default_transaction_read_only', 'off', false), lo_create(0)",
    "SELECT 1; COMMIT",
    "DO $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); COMMIT; "
    "PERFORM lo_create(0); END $$",
]


@pytest.mark.parametrize("statement", ESCAPES)
def test_no_escape_through_the_resource_leaves_anything_behind(readonly, seeded, statement):
    readonly.query("SELECT 1")  # provisioned
    before = server_state(seeded, "analyst_ro")
    with pytest.raises((ReadOnlyViolation, psycopg.Error)):
        readonly.query(statement)
    with pytest.raises((ReadOnlyViolation, psycopg.Error)):
        list(readonly.query_chunks(statement))
    assert server_state(seeded, "analyst_ro") == before


def test_statement_start_skips_comments():
    assert statement_start("  /* a /* nested */ comment */ -- line\n\tCOMMIT") == "COMMIT"
    assert statement_start("-- only a comment") == ""


def test_an_advisory_lock_held_through_the_resource_blocks_nothing_of_the_platform(readonly, seeded):
    """A reader holding advisory locks on the keys the platform once used (and any other) while the
    write-back's audit table and the model registry's event log are created and written."""
    import threading

    from credit_assets import customer_store, population
    from resources.model_registry import LocalModelRegistry

    readonly.query("SELECT 1")
    keys = "hashtext('credit_limit_audit'), hashtext('model_packages'), hashtext('embedding_versions'), 1835296880"
    outcome = []

    def hold():
        try:
            readonly.query(f"SELECT (SELECT count(pg_advisory_lock(k)) FROM unnest(ARRAY[{keys}]) AS k), pg_sleep(30)")
        except psycopg.errors.QueryCanceled as exc:  # cancelled at the end of the test
            outcome.append(exc)

    holding = threading.Thread(target=hold)
    holding.start()
    try:
        with seeded.connect(autocommit=True) as conn:
            deadline = time.monotonic() + 20
            while conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone()[0] < 4:
                assert time.monotonic() < deadline, "the reader never took its locks"
                time.sleep(0.05)
        frame = population.customers(20, seed=1)
        with seeded.connect() as conn:
            customer_store.load_customers(conn, frame, replace=True)
            decisions = frame[["customer_id", "current_score", "current_limit"]].assign(
                new_score=700, new_limit=frame.current_limit, decision="DECLINED", reason="test", probability=0.5)
            result = customer_store.apply_decisions(conn, decisions, batch_id=str(uuid.uuid4()), model_version="m",
                                                    run_id=str(uuid.uuid4()))
        registry = LocalModelRegistry(db=seeded, env=f"lock{uuid.uuid4().hex[:6]}")
        package = registry.register("credit", model_version="v1", model_data_url="s3://b/k", metrics={},
                                    data_fingerprint="f")
        registry.approve(package.group, package.version, "fine")
        assert holding.is_alive()  # all of it done while the reader still held its locks
        assert result.updated == 20 and registry.find("credit", "v1").status == "Approved"
    finally:
        with seeded.connect(autocommit=True) as conn:
            conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'analyst_ro'")
        holding.join(timeout=30)
    assert outcome  # it was still holding them until cancelled


# --- provisioning refuses a role that can do more than read -------------------------------------------


def role_facts(app_db, role):
    with app_db.connect() as conn:
        return conn.execute(
            "SELECT r.rolsuper, (SELECT array_agg(c) FROM pg_db_role_setting s, unnest(s.setconfig) c "
            "WHERE s.setrole = r.oid) FROM pg_roles r WHERE r.rolname = %s", (role,)).fetchone()


def test_a_privileged_existing_role_is_refused_and_left_unchanged(seeded):
    with seeded.connect() as conn:
        superuser = conn.execute("SELECT current_user").fetchone()[0]
    before = role_facts(seeded, superuser)
    assert before[0]  # the embedded server's own superuser, as READONLY_ROLE=postgres would name it
    with pytest.raises(ReadOnlyRoleError, match=rf"READONLY_ROLE '{superuser}' already exists .*SUPERUSER.*left unchanged"):
        ProvisionedReadOnlyDatabase(primary=seeded, role=superuser).query("SELECT 1")
    assert role_facts(seeded, superuser) == before
    with seeded.connect() as conn:  # the platform still writes
        conn.execute("INSERT INTO accounts VALUES (99, 'still', 1)")
        conn.execute("DELETE FROM accounts WHERE id = 99")
        conn.commit()


@pytest.mark.parametrize("grant, power", [
    ("GRANT INSERT, UPDATE ON accounts TO {role}", "table privileges INSERT, UPDATE"),
    ("GRANT pg_write_all_data TO {role}", "member of pg_write_all_data"),
    ("ALTER ROLE {role} CREATEDB", "CREATEDB"),
    ("GRANT CREATE ON SCHEMA public TO {role}", "schema privileges beyond USAGE"),
    ("ALTER TABLE accounts OWNER TO {role}", "owner of database objects"),
    ("GRANT UPDATE (balance), INSERT (id) ON accounts TO {role}", "column privileges INSERT, UPDATE"),
    ("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT, DELETE ON TABLES TO {role}",
     "default privileges DELETE, INSERT"),
    ("GRANT SET ON PARAMETER session_replication_role TO {role}", "privileges on functions, large objects"),
    ("CREATE FUNCTION wipe_{role}() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'DELETE FROM accounts'; "
     "REVOKE EXECUTE ON FUNCTION wipe_{role}() FROM PUBLIC; GRANT EXECUTE ON FUNCTION wipe_{role}() TO {role}",
     "privileges on functions, large objects"),
    ("SELECT lo_create(0) AS oid \\gset", None),  # replaced below: a large object the role may update
])
def test_an_existing_role_with_more_than_reading_is_refused(seeded, grant, power):
    role = f"hostile_{uuid.uuid4().hex[:8]}"
    with seeded.connect(autocommit=True) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'accounts'").fetchone()[0]
        conn.execute(f"CREATE ROLE {role} LOGIN")
        if power is None:  # a large object the role may write
            oid = conn.execute("SELECT lo_create(0)").fetchone()[0]
            conn.execute(f"GRANT UPDATE ON LARGE OBJECT {oid} TO {role}")
            power = "privileges on functions, large objects"
        else:
            conn.execute(grant.format(role=role))
    try:
        with pytest.raises(ReadOnlyRoleError, match=power):
            ProvisionedReadOnlyDatabase(primary=seeded, role=role).query("SELECT 1")
        assert role_facts(seeded, role)[1] is None  # no default_transaction_read_only set: never altered
    finally:
        with seeded.connect(autocommit=True) as conn:
            conn.execute(f"ALTER TABLE accounts OWNER TO {owner}")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"REVOKE ALL ON PARAMETER session_replication_role FROM {role}")
            conn.execute(f"DROP FUNCTION IF EXISTS wipe_{role}()")
            conn.execute(f"DROP ROLE {role}")


def test_an_existing_role_that_only_reads_is_taken(seeded):
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with seeded.connect(autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON accounts TO {role}")
    ro = ProvisionedReadOnlyDatabase(primary=seeded, role=role)
    assert ro.query("SELECT count(*) AS n FROM accounts")["n"].iloc[0] == 2
    assert ro.test_connection().ok


def test_a_reader_cannot_hold_the_tables_longer_than_its_statement_timeout(seeded):
    """A long query, or a `query_chunks` left half-read, ends after the timeout, and its locks with it."""
    readonly = ProvisionedReadOnlyDatabase(primary=seeded, role="analyst_ro", statement_timeout_seconds=1)
    with pytest.raises(psycopg.errors.QueryCanceled):
        readonly.query("SELECT pg_sleep(30)")
    chunks = readonly.query_chunks("SELECT g FROM generate_series(1, 10000) g", chunk_rows=10)
    next(chunks)  # a notebook that read one chunk and went to lunch
    with seeded.connect(autocommit=True) as conn:  # the server ends the session, and its lock on the table
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'analyst_ro'").fetchone()[0]:
            assert time.monotonic() < deadline, "the idle read-only session was never ended"
            time.sleep(0.1)
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
        list(chunks)
