"""The embedded PostgreSQL server and the application-database resource."""

import json
import os
import signal
import subprocess
import sys

import psycopg
import pytest

from resources.embedded_postgres import embedded_server_status
from resources.postgres import (
    DatabaseUnavailableError,
    EmbeddedPostgresDatabase,
    ExternalPostgresDatabase,
    VectorExtensionUnavailableError,
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

    from resources.embedded_postgres import stop_embedded_server

    assert stop_embedded_server(data_dir)
    assert "stopped" in embedded_server_status(data_dir)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "42"
    # the child started the server and, being its last user, stopped it when it exited
    assert "stopped" in embedded_server_status(data_dir)


ATTACH_AND_QUERY = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as started from a terminal, whatever started the suite
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from resources.postgres import EmbeddedPostgresDatabase
db = EmbeddedPostgresDatabase(data_dir=sys.argv[1], database="shared")
deadline = time.monotonic() + float(sys.argv[2])
with db.connect() as conn:
    while True:  # in use until the very end: a server stopped under it fails the query
        assert conn.execute("select 40 + 2").fetchone()[0] == 42
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
print("ok", flush=True)
if len(sys.argv) > 3:
    time.sleep(600)  # killed here, without detaching
"""


def attach(data_dir, seconds: float, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ATTACH_AND_QUERY, str(data_dir), str(seconds), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_processes_coming_and_going_at_once_never_lose_the_server_under_one_still_using_it(tmp_path):
    """Users attach and leave at the same moments, each querying up to its last instant: none ever finds the
    server stopped under it, and the last one to leave stops it."""
    data_dir = tmp_path / "postgres"
    for wave in range(2):
        users = [attach(data_dir, seconds) for seconds in (0.0, 0.5, 1.0, 1.5, 0.2, 0.8)]
        outcomes = [(user.wait(timeout=120), *user.communicate()) for user in users]
        assert all(code == 0 and out.strip() == "ok" for code, out, _err in outcomes), (wave, outcomes)
        assert "stopped" in embedded_server_status(data_dir), wave


def test_users_that_died_without_leaving_do_not_keep_the_server_running(tmp_path):
    """A user killed with SIGKILL never detaches, and a pid in the users list may since belong to another
    process: neither counts, so the last live user still stops the server."""
    data_dir = tmp_path / "postgres"
    killed = attach(data_dir, 0.1, "then-wait")
    assert killed.stdout.readline().strip() == "ok"
    killed.kill()
    killed.wait()
    users = json.loads((data_dir / ".handle_pids.json").read_text())
    assert [pid for pid, _started in users] == [killed.pid]
    # this process's own pid, recorded with another start time: a process that had the number before
    (data_dir / ".handle_pids.json").write_text(json.dumps([*users, [os.getpid(), 1.0]]))
    assert "running" in embedded_server_status(data_dir)
    last = attach(data_dir, 0.1)
    assert last.wait(timeout=120) == 0, last.communicate()
    assert "stopped" in embedded_server_status(data_dir)


def test_a_process_whose_fork_handlers_break_forked_children_starts_and_stops_the_server(tmp_path):
    """Dagster's code server evaluates sensors in gRPC threads, and gRPC's fork handlers can crash a child
    forked from it before the child runs anything (pg_ctl "died with SIGSEGV", about one start in eight).
    Starting the server must not fork the calling process: here a fork handler that aborts every forked
    child stands in for gRPC's, deterministically."""
    data_dir = tmp_path / "postgres"
    script = f"""
import ctypes, os, subprocess
libc = ctypes.CDLL(None)
assert libc.__register_atfork(None, None, libc.abort, None) == 0
# armed: a child forked from this process dies of it (what running pg_ctl as another user does)
assert subprocess.run(["/bin/true"], user=os.getuid()).returncode == -6
from resources.postgres import EmbeddedPostgresDatabase
with EmbeddedPostgresDatabase(data_dir={str(data_dir)!r}, database="forks").connect() as conn:
    print(conn.execute("select 40 + 2").fetchone()[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr[-3000:]
    assert "stopped" in embedded_server_status(data_dir)  # and it stopped the server at exit


def test_a_user_whose_server_was_stopped_and_started_again_is_counted_again(tmp_path):
    """`mldp services stop` while this process is attached, then another process starts the server again:
    this process's next use attaches it again, so that the other one's exit does not stop it under it."""
    from resources.embedded_postgres import embedded_server, stop_embedded_server

    data_dir = tmp_path / "postgres"
    db = EmbeddedPostgresDatabase(data_dir=str(data_dir), database="again")
    db.connect().close()
    assert stop_embedded_server(data_dir)
    other = attach(data_dir, 0.1, "then-wait")
    try:
        assert other.stdout.readline().strip() == "ok"  # the server runs again, started by the other process
        with db.connect() as conn:
            users = json.loads((data_dir / ".handle_pids.json").read_text())
            assert os.getpid() in [pid for pid, _started in users]
            other.send_signal(signal.SIGINT)
            assert other.wait(timeout=60) != 0  # ended by the KeyboardInterrupt, through its exit handlers
            assert conn.execute("select 42").fetchone()[0] == 42  # still served
        assert "running" in embedded_server_status(data_dir)
        assert embedded_server(data_dir) is embedded_server(data_dir)
    finally:
        other.kill()
        stop_embedded_server(data_dir)


def test_sigterm_ends_a_user_through_its_exit_handlers_so_the_last_one_stops_the_server(tmp_path):
    data_dir = tmp_path / "postgres"
    user = attach(data_dir, 0.1, "then-wait")
    try:
        assert user.stdout.readline().strip() == "ok"
        user.send_signal(signal.SIGTERM)
        assert user.wait(timeout=60) == 128 + signal.SIGTERM, user.communicate()[1][-2000:]
        assert "stopped" in embedded_server_status(data_dir)
    finally:
        user.kill()


def test_a_stale_pid_file_naming_another_process_neither_blocks_nor_stops_it(tmp_path):
    """After a crash, postmaster.pid may name a process that now is something else: another folder's server
    (which must not be taken for ours, nor stopped) or any other program (which must not block a start)."""
    from resources.embedded_postgres import stop_embedded_server

    ours, theirs = tmp_path / "ours" / "postgres", tmp_path / "theirs" / "postgres"
    for folder in (ours, theirs):
        EmbeddedPostgresDatabase(data_dir=str(folder), database="stale").connect().close()
    stop_embedded_server(ours)
    template = (theirs / "postmaster.pid").read_text().splitlines()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        for impostor in (int(template[0]), sleeper.pid):  # their postmaster, then an unrelated program
            (ours / "postmaster.pid").write_text("\n".join([str(impostor), *template[1:]]) + "\n")
            done = subprocess.run([sys.executable, "-c", ATTACH_AND_QUERY, str(ours), "0.1"], capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
            assert "stopped" in embedded_server_status(ours)  # ours started and, at its user's exit, stopped
            assert "running" in embedded_server_status(theirs)  # theirs untouched
    finally:
        sleeper.kill()
        stop_embedded_server(theirs)


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
