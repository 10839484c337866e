"""The Dagster instance's home: SQLite under `DAGSTER_HOME` by default, PostgreSQL when `DAGSTER_PG_URL`
is set (dagster-postgres; the URL itself stays in the environment, dagster.yaml only names the variable)."""

from __future__ import annotations

import shutil
from pathlib import Path

from resources.settings import PROJECT_ROOT, PlatformSettings

TEMPLATES = PROJECT_ROOT / "deploy"
# the instance files `mldp dev` / `mldp demo` write (dagster.ecs.yaml is the image's own, never written here)
LOCAL_TEMPLATES = ("dagster.sqlite.yaml", "dagster.postgres.yaml")


def instance_template(settings: PlatformSettings) -> Path:
    return TEMPLATES / ("dagster.postgres.yaml" if settings.dagster_pg_url else "dagster.sqlite.yaml")


def prepare_dagster_home(settings: PlatformSettings) -> Path:
    """Create the instance folder and write its dagster.yaml for the configured storage; returns the folder.

    A dagster.yaml that is not one of the project's templates was written by the user and is left alone.
    """
    home = settings.dagster_home or settings.data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    ours = {(TEMPLATES / name).read_text() for name in LOCAL_TEMPLATES}
    if not target.exists() or target.read_text() in ours:
        shutil.copyfile(instance_template(settings), target)
    return home
