"""The Dagster instance's home: SQLite under `DAGSTER_HOME` by default, PostgreSQL when `DAGSTER_PG_URL`
is set (dagster-postgres; the URL itself stays in the environment, dagster.yaml only names the variable)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from resources.settings import PROJECT_ROOT, PlatformSettings

TEMPLATES = PROJECT_ROOT / "deploy"
# the instance files `mldp dev` / `mldp demo` write (dagster.ecs.yaml is the image's own, never written here)
LOCAL_TEMPLATES = ("dagster.sqlite.yaml", "dagster.postgres.yaml")


def instance_template(settings: PlatformSettings) -> Path:
    return TEMPLATES / ("dagster.postgres.yaml" if settings.dagster_pg_url else "dagster.sqlite.yaml")


# The first line of every dagster.yaml the project writes: such a file is rewritten from the current template,
# so a home set up by an earlier version gets what the new one needs (the freshness daemon, say).
MARKER = ("# Written by mldp from deploy/{name}; rewritten when the project's template changes. Delete this line "
          "to keep your own edits.\n")
# The SHA-256 of the templates' texts before they carried the marker (written into homes by earlier versions)
EARLIER_TEMPLATES = {
    "98d227c9811871b74dcde8004b05127ddb6fa98b2fcbb563b24e4322407a99ca",  # dagster.sqlite.yaml
    "33a5ce89af12858389fc7977545cd7e0b384d103386c2725a4068f5b028a8bf8",
    "7d7a990b60e9bc4f0feb758a1d5637eed396594d4be44a379743d7c8f554b310",
    "7925546e2fc2c1eb4131c70187772550440420ca97694cef178b8da974316c21",
    "fa8aa7967b51156833fc858651236f49bc67e1eb13781aa608c8cd212291e572",  # dagster.postgres.yaml
    "f715a6601ff0949d7783810bace9c6c9b13874dcf4bf821b4084af32c19c339e",
    "767839a8741e34e2341a1ad4b21a2ae44bf13b779d7599ab0413b046eeed622e",
    "023880f1b9b1c4a7e2fd51aa070d2aa584c87f5726a5f49756d87b404cb8ce11",
}


def written_by_the_project(text: str) -> bool:
    """Whether a dagster.yaml is one the project wrote (and may rewrite), not the user's own."""
    return text.startswith(MARKER.split("{name}")[0]) or hashlib.sha256(text.encode()).hexdigest() in EARLIER_TEMPLATES


def prepare_dagster_home(settings: PlatformSettings) -> Path:
    """Create the instance folder and write its dagster.yaml for the configured storage; returns the folder.

    A dagster.yaml the project wrote (by this version or an earlier one) is rewritten from the current
    template; one the user wrote, or edited and took the marker line out of, is left alone.
    """
    home = settings.dagster_home or settings.data_dir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or written_by_the_project(target.read_text()):
        template = instance_template(settings)
        target.write_text(MARKER.format(name=template.name) + template.read_text())
    return home
