"""The embedded PostgreSQL server and the application-database resource."""

import subprocess
import sys

import psycopg
import pytest

from resources.postgres import (
    DatabaseUnavailableError,
    EmbeddedPostgresDatabase,
    ExternalPostgresDatabase,
    VectorExtensionUnavailableError,
    embedded_server_status,
    normalize_postgres_url,
    redact_url,
)


def test_embedded_server_is_postgres_18_with_pgvector(app_db):
    assert app_db.server_version().startswith("18.")
    assert app_db.ensure_vector_extension() == "0.8.5"
    with app_db.connect(register_vector=True) as conn:
        value = conn.execute("SELECT '[1,2,3]'::vector").fetchone()[0]
        assert value.to_list() == [1.0, 2.0, 3.0]  # the vector type is registered on the connection


def test_embedded_server_is_shared_and_data_survives_a_restart(tmp_path):
    """A second process attaches to the running server; after a stop the data is still there."""
    data_dir = tmp_path / "postgres"
    db = EmbeddedPostgresDatabase(data_dir=str(data_dir), database="keep")
    with db.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    assert "running" in embedded_server_status(data_dir)
    script = (
        "from resources.postgres import EmbeddedPostgresDatabase as E;"
        f"db=E(data_dir={str(data_dir)!r}, database='keep');"
        "c=db.connect(); print(c.execute('select x from kept').fetchone()[0])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "42"
    assert "running" in embedded_server_status(data_dir)  # the child's exit did not stop our server

    from resources.postgres import stop_embedded_server

    assert stop_embedded_server(data_dir)
    assert "stopped" in embedded_server_status(data_dir)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "42"
    # the child started the server and, being its last user, stopped it when it exited
    assert "stopped" in embedded_server_status(data_dir)


def test_urls_are_normalised_and_redacted():
    assert normalize_postgres_url("postgresql+psycopg://u:p@h:5/db") == "postgresql://u:p@h:5/db"
    assert normalize_postgres_url("postgres://u@h/db") == "postgresql://u@h/db"
    assert redact_url("postgresql://u:s3cret@h:5/db") == "postgresql://u@h:5/db"
    assert redact_url("postgresql://u@h/db?password=s3cret&sslmode=require") == "postgresql://u@h/db"
    assert redact_url("host=h port=5 user=u password=s3cret dbname=db") == "postgresql://u@h:5/db"
    assert redact_url("postgresql://u:s3cret@/db?host=/tmp/sock") == "postgresql://u@/db?host=/tmp/sock"
    assert "s3cret" not in redact_url("not a url password=s3cret")
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        normalize_postgres_url("mysql://u@h/db")


def test_unreachable_database_is_named_without_its_password():
    db = ExternalPostgresDatabase(url="postgresql://app:hunter2@127.0.0.1:1/bank?connect_timeout=2")
    with pytest.raises(DatabaseUnavailableError) as info:
        db.connect()
    message = str(info.value)
    assert "postgresql://app@127.0.0.1:1/bank" in message and "hunter2" not in message


def system_postgres_without_pgvector() -> str | None:
    url = "postgresql://postgres@127.0.0.1:5432/postgres?connect_timeout=2"
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    except psycopg.OperationalError:
        return None
    return None if row else url


def test_missing_pgvector_gives_a_clear_error():
    url = system_postgres_without_pgvector()
    if url is None:
        pytest.skip("needs a PostgreSQL server without pgvector on 127.0.0.1:5432 (this machine's system server)")
    with pytest.raises(VectorExtensionUnavailableError, match="pgvector is not installed on the server"):
        ExternalPostgresDatabase(url=url).ensure_vector_extension()
