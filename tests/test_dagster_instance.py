"""The Dagster instance: SQLite by default, PostgreSQL (dagster-postgres) when DAGSTER_PG_URL is set."""

import os

import dagster as dg
import psycopg

from platform_cli.dagster_instance import prepare_dagster_home
from resources.postgres import ensure_database, with_database
from resources.settings import PlatformSettings


@dg.asset
def heartbeat() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"beat": 1})


def test_default_instance_is_sqlite(tmp_path):
    home = prepare_dagster_home(PlatformSettings.from_env({"DATA_DIR": str(tmp_path)}))
    assert home == tmp_path / "dagster_home"
    instance = dg.DagsterInstance.from_config(str(home))
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    assert instance.get_settings("freshness") == {"enabled": True}  # the freshness daemon evaluates the policies


def test_every_shipped_instance_enables_freshness():
    import yaml

    from platform_cli.dagster_instance import TEMPLATES

    for name in ("dagster.sqlite.yaml", "dagster.postgres.yaml", "dagster.ecs.yaml"):
        assert yaml.safe_load((TEMPLATES / name).read_text())["freshness"] == {"enabled": True}, name


def test_a_home_an_earlier_version_set_up_gets_the_current_template(tmp_path):
    from platform_cli.dagster_instance import TEMPLATES

    home = tmp_path / "dagster_home"
    home.mkdir()
    current = (TEMPLATES / "dagster.sqlite.yaml").read_text()
    freshness = current[current.index("# The freshness daemon"):current.index("enabled: true\n") + len("enabled: true\n")]
    (home / "dagster.yaml").write_text(current.replace(freshness, ""))  # as the version before freshness wrote it
    prepare_dagster_home(PlatformSettings.from_env({"DATA_DIR": str(tmp_path)}))
    written = (home / "dagster.yaml").read_text()
    assert written.startswith("# Written by mldp from deploy/dagster.sqlite.yaml") and written.endswith(current)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_settings("freshness") == {"enabled": True}
    # a file the user took the marker line out of is theirs from then on
    (home / "dagster.yaml").write_text(written.split("\n", 1)[1] + "# my own edit\n")
    prepare_dagster_home(PlatformSettings.from_env({"DATA_DIR": str(tmp_path)}))
    assert (home / "dagster.yaml").read_text().endswith("# my own edit\n")


def test_user_written_dagster_yaml_is_left_alone(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("# mine\ntelemetry:\n  enabled: true\n")
    prepare_dagster_home(PlatformSettings.from_env({"DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(home)}))
    assert (home / "dagster.yaml").read_text().startswith("# mine")


def test_postgres_instance_records_runs(tmp_path, pg_server, monkeypatch):
    admin = pg_server.get_uri()
    ensure_database(admin, "dagster_instance_test")
    url = with_database(admin, "dagster_instance_test")
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    home = prepare_dagster_home(PlatformSettings.from_env({"DATA_DIR": str(tmp_path), "DAGSTER_PG_URL": url}))
    assert "env: DAGSTER_PG_URL" in (home / "dagster.yaml").read_text()  # the URL itself is not written down
    assert url not in (home / "dagster.yaml").read_text()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize([heartbeat], instance=instance)
        assert result.success
        with psycopg.connect(url) as conn:
            runs = conn.execute("SELECT run_id, status FROM runs").fetchall()
            materialized = conn.execute(
                "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'").fetchone()[0]
        assert (result.run_id, "SUCCESS") in runs
        assert materialized == 1
        assert instance.get_latest_materialization_event(dg.AssetKey("heartbeat")) is not None
    assert os.environ["DAGSTER_PG_URL"] == url
