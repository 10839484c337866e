"""No password in any error, log line or stored event, whatever the connection strings hold: settings that
cannot be parsed are refused by name, drivers' messages are masked, and a failed run leaves nothing of them
in Dagster's storage (event log, compute logs) or on the console."""

import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from resources.credentials import credential_fragments, scrub
from resources.notifier import LocalNotifier, NotificationError
from resources.postgres import ExternalPostgresDatabase
from resources.readonly import ReadOnlyUrlDatabase
from resources.settings import PROJECT_ROOT, ConfigurationError, PlatformSettings
from resources.source_db import SqlSourceDatabase
from tests.conftest import free_port

PASSWORD = "Sup3rSecretPw"
HOSTILE = [
    f"postgresql://app:{PASSWORD}%zz@db.example.com/bank",  # a broken percent-escape: libpq echoes the token
    f"postgresql://app:{PASSWORD} x@db.example.com/bank",  # a space in the password
    f"postgresql://app:{PASSWORD}@[::1/bank",  # an unterminated IPv6 host: libpq echoes the whole URI
    f"app:{PASSWORD} host=db.example.com",  # neither a URL nor key=value pairs
    f"postgresql://app:{PASSWORD}@db.example.com/bank?bogus=1",  # an unknown parameter
    f"password='{PASSWORD} host=db.example.com",  # an unterminated quote
    f"app:{PASSWORD}@db.example.com://bank",  # the password where the scheme should be
    f"mysql+pymysql://app:p@{PASSWORD}@db.example.com/classicmodels",  # an unencoded '@' in the password
    f"mysql+pymysql://app:{PASSWORD}@db.example.com:notaport/classicmodels",
    PASSWORD,
    f"postgresql://app:Zq9/{PASSWORD}@127.0.0.1:1/mldp",  # a raw '/': libpq takes 'Zq9' for a port, the rest for a database
    f"postgresql://app:correct@{PASSWORD}@127.0.0.1:1/mldp",  # a raw '@': the rest shows as a host
]
URL_SETTINGS = ["DATABASE_URL", "READONLY_DATABASE_URL", "SOURCE_DATABASE_URL", "DAGSTER_PG_URL", "NOTIFY_WEBHOOK_URL"]


def everything_said(exc: BaseException) -> str:
    """The error as Dagster would store it: message, causes and contexts, and the traceback."""
    return "".join(traceback.format_exception(exc))


# The PostgreSQL URLs with an odd password (a stray %-escape, a space) or parameter that SQLAlchemy parses
# happily: as SOURCE_DATABASE_URL they are accepted, and fail at connection time, masked.
WELL_FORMED_FOR_SQLALCHEMY = {HOSTILE[0], HOSTILE[1], HOSTILE[4]}


@pytest.mark.parametrize("setting", URL_SETTINGS)
@pytest.mark.parametrize("value", HOSTILE)
def test_an_unusable_url_setting_is_refused_by_name_without_its_value(setting, value):
    if setting == "SOURCE_DATABASE_URL" and value in WELL_FORMED_FOR_SQLALCHEMY:
        PlatformSettings.from_env({setting: value})
        return
    with pytest.raises(ConfigurationError) as info:
        PlatformSettings.from_env({setting: value})
    assert str(info.value).startswith(setting) and PASSWORD not in everything_said(info.value)


@pytest.mark.parametrize("value", HOSTILE)
def test_the_resources_never_echo_a_password(value):
    databases = [ExternalPostgresDatabase(url=value), ReadOnlyUrlDatabase(url=value)]
    for database in databases:
        assert PASSWORD not in database.describe()
    with pytest.raises(Exception) as info:
        with databases[0].connect(autocommit=True):
            pass
    assert PASSWORD not in everything_said(info.value)
    with pytest.raises(Exception) as info:
        databases[1].query("SELECT 1")
    assert PASSWORD not in everything_said(info.value)
    source = SqlSourceDatabase(source_url=value)
    assert PASSWORD not in source.describe()
    with pytest.raises(Exception) as info:
        source.table_columns("customers")
    assert PASSWORD not in everything_said(info.value)


def test_a_refused_connection_masks_the_password_it_carried():
    port = free_port()  # nothing listens there
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/bank?connect_timeout=2"
    with pytest.raises(Exception) as info:
        ReadOnlyUrlDatabase(url=url).query("SELECT 1")
    said = everything_said(info.value)
    assert PASSWORD not in said and f"127.0.0.1:{port}" in said


def test_credential_fragments_cover_the_shapes_of_a_password():
    assert PASSWORD in credential_fragments(f"postgresql://u:{PASSWORD}@h/db")
    assert PASSWORD in credential_fragments(f"mysql://u:p@{PASSWORD}@h/db")  # what a first-'@' parser calls the host
    assert PASSWORD in credential_fragments(f"host=h password={PASSWORD} port=1")
    assert PASSWORD in credential_fragments(f"postgresql://u@h/db?password={PASSWORD}&x=1")
    assert scrub(f"token {PASSWORD}%41 refused", f"postgresql://u:{PASSWORD}%41@h/db") == "token *** refused"


def test_webhook_failures_never_show_the_webhook(tmp_path):
    port = free_port()
    for url in (f"http://127.0.0.1:{port}/services/{PASSWORD}", f"hooks/{PASSWORD}",
                f"http://127.0.0.1:{port}/hook?token={PASSWORD} x"):
        notifier = LocalNotifier(path=str(tmp_path / "n.jsonl"), webhook_url=url, attempts=1)
        with pytest.raises(NotificationError) as info:
            notifier.publish("subject", "message")
        assert PASSWORD not in everything_said(info.value)
        assert PASSWORD not in notifier.describe()


def run_failing_jobs(tmp_path, value: str) -> tuple[str, Path]:
    """In a process of its own, as `dagster job execute` would: the credit scoring batch reading through a
    read-only URL and the ratings ETL reading a source URL, both `value`, recorded in a persistent instance."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    script = f"""
import dagster as dg
import credit_assets as credit
import recsys_assets as recsys
from resources.artifacts import LocalArtifactStore
from resources.postgres import ExternalPostgresDatabase
from resources.readonly import ReadOnlyUrlDatabase
from resources.etl_engine import RatingsEtlEngine
from resources.source_db import SqlSourceDatabase

value = {value!r}
artifacts = LocalArtifactStore(root={str(tmp_path / "artifacts")!r})
with dg.DagsterInstance.get() as instance:
    for assets, resources in (
        ([credit.bank_customers, credit.eligible_customers],
         {{"readonly_db": ReadOnlyUrlDatabase(url=value), "artifacts": artifacts}}),
        ([credit.bank_customers, credit.eligible_customers],
         {{"readonly_db": ReadOnlyUrlDatabase(url="postgresql://ro:{PASSWORD}@127.0.0.1:{free_port()}/b"),
           "artifacts": artifacts}}),
        ([recsys.source_ratings, recsys.source_customers, recsys.source_products, recsys.ratings_training_data],
         {{"source_db": SqlSourceDatabase(source_url=value), "artifacts": artifacts,
           "ratings_etl_engine": RatingsEtlEngine()}}),
    ):
        result = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
        assert not result.success
"""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr, home


@pytest.mark.parametrize("value", [HOSTILE[0], HOSTILE[2], HOSTILE[3], HOSTILE[7], HOSTILE[10]])
def test_a_failed_run_leaves_no_password_in_dagsters_storage_or_on_the_console(tmp_path, value):
    console, home = run_failing_jobs(tmp_path, value)
    assert "STEP_FAILURE" in console  # the runs did fail, and said so
    assert PASSWORD not in console
    stored = [path for path in home.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in stored) and any("compute_logs" in str(path) for path in stored)
    leaking = [str(path) for path in stored if PASSWORD.encode() in path.read_bytes()]
    assert leaking == []


def test_a_code_location_with_an_unusable_url_fails_by_the_settings_name(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": HOSTILE[0]}
    done = subprocess.run([sys.executable, "-c", "import definitions"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ConfigurationError: DATABASE_URL cannot be parsed" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
