"""What every benchmark shares: a throw-away folder for the run (its embedded PostgreSQL server is stopped
and the folder removed at the end, whatever happens), the platform settings for that folder, and peak RSS."""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.embedded_postgres import stop_embedded_server  # noqa: E402
from resources.settings import PlatformSettings  # noqa: E402


@contextmanager
def scratch_folder(name: str, keep: Path | None = None) -> Iterator[Path]:
    """A new temporary folder (or `keep`, which is left in place) holding the run's data."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=f"mldp-bench-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        stop_embedded_server(work / "postgres")
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def settings_for(work: Path) -> PlatformSettings:
    """The platform's settings with the run's folder as DATA_DIR (DATASETS_DIR still taken from the environment)."""
    return PlatformSettings.from_env({"DATA_DIR": str(work), "DATASETS_DIR": os.environ.get("DATASETS_DIR", "")})


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> int:
    """Peak resident memory so far, in MB (of this process, or of its finished children)."""
    return round(resource.getrusage(who).ru_maxrss / 1024)
