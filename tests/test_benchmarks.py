"""Each benchmark still runs through the project's current code, at a tiny size, and prints its one JSON
line with the naive baseline beside it. The figures themselves are not checked here (they belong to full-
size runs on a quiet machine); what is checked is that the benchmarks have not rotted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

TINY = {
    "credit_batch": (["--customers", "3000", "--baseline-sample", "200"],
                     ["writeback_rows_per_second", "baseline_per_row_update_rows_per_second", "peak_rss_mb"]),
    "embeddings_load": (["--items", "2000", "--dims", "32"], ["results", "targets_met"]),
    "knn_query": (["--items", "2000", "--queries", "40", "--batch", "10", "--ef-search", "40"], ["items", "dim"]),
    "stream_enrich": (["--events", "1000", "--large-items", "3000", "--baseline-sample", "100"],
                      ["results", "targets_met"]),
    "ratings_etl": (["--ratings", "20000", "--customers", "40"], ["project", "ratings"]),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_and_prints_one_json_line(name, request, datasets_dir, tmp_path):
    if name == "ratings_etl":
        request.getfixturevalue("mariadb")  # needs the MariaDB server (required under CI)
    args, keys = TINY[name]
    env = {**os.environ, "DATASETS_DIR": str(datasets_dir), "TMPDIR": str(tmp_path)}
    completed = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args], capture_output=True,
                               text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stdout
    line = json.loads(lines[0])
    assert line["benchmark"] == name
    assert all(key in line for key in keys), line
