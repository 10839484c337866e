"""A throw-away folder for a benchmark run: its embedded PostgreSQL server is stopped and the folder removed
at the end, whatever happens."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.postgres import stop_embedded_server  # noqa: E402


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
