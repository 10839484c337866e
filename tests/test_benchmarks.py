"""Each benchmark still runs through the project's current code at a tiny size and prints its one JSON
line, with its own figures and (where it has one) the naive baseline's. The values are not judged here:
they mean something only at full size on a quiet machine; what is checked is that no benchmark has rotted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# per benchmark: tiny arguments, and the figures its line must carry (the project's and the naive baseline's)
TINY = {
    "credit_batch": (["--customers", "3000", "--baseline-sample", "200"],
                     ["writeback_rows_per_second", "baseline_per_row_update_rows_per_second", "writeback_speedup",
                      "peak_rss_mb"]),
    "embeddings_load": (["--items", "2000", "--dims", "32"],
                        ["results.0.vectors_per_second", "results.0.executemany_vectors_per_second",
                         "results.0.speedup_vs_executemany"]),
    "knn_query": (["--items", "2000", "--queries", "40", "--batch", "10", "--ef-search", "40"],
                  ["results.0.p50_ms", "results.0.recall_at_10", "results.0.batched_ms_per_query"]),
    "stream_enrich": (["--events", "1000", "--large-items", "3000", "--baseline-sample", "100"],
                      ["results.0.events_per_second", "results.0.one_query_per_event_events_per_second",
                       "results.1.similar_items_recall_at_5", "results.1.pgvector_events_per_second"]),
    "recommendations_api": (["--seconds", "1", "--large-items", "3000", "--calls", "100"],
                            ["results.0.http.concurrency_32.items_from_user.requests_per_second",
                             "results.0.in_process_bound.items_from_user.calls_per_second",
                             "results.1.pgvector_per_query_concurrency_32.items_from_item.requests_per_second"]),
    "recsys_quality": (["--seeds", "2", "--epochs", "20"],
                       ["model.ndcg_at_5.mean", "model.rmse.mean", "baselines.popularity.ndcg_at_5.mean",
                        "baselines.item_mean.ndcg_at_5.mean", "baselines.item_mean.rmse.mean"]),
    "scorecard_quality": (["--generated-rows", "3000", "--gbm-seeds", "1"],
                          ["scorecard_validation_gini", "gbm_validation_gini", "logistic_validation_gini",
                           "generated_data.scorecard_validation_auc"]),
    "ratings_etl": (["--ratings", "20000", "--customers", "40"],
                    ["project.20000.rows_per_second", "baseline_read_sql_to_parquet.rows_per_second",
                     "speedup_vs_baseline", "spark_local.rows_per_second", "spark_local.spark_jvm_peak_rss_mb"]),
}


def figure(line: dict, path: str) -> float:
    value = line
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


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
    for path in keys:  # every figure is there and is a positive number
        assert figure(line, path) > 0, (path, line)
