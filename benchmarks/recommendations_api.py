"""Benchmark: the recommendations API (`mldp serve`, one worker) under a real HTTP load generator.

wrk (Debian's package, installed by scripts/install_debian_package.sh when absent) drives each of the lab's
three endpoints at concurrency 1 and 32, on the lab's catalogue (its training data when present, demo data
otherwise) and on 100,000 items: requests/s and p50/p99 latency per endpoint, answers checked to be 200. The
same queries called in-process on `LiveRecommender` are the bound (what HTTP costs on top); the naive
baseline is the same server with every query sent to pgvector (`ITEM_INDEX_MAX_ITEMS=0`), at concurrency 32.
One JSON line.

    .venv/bin/python benchmarks/recommendations_api.py [--seconds 5] [--large-items 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import publish_and_load, scratch_folder, settings_for, training_frame  # noqa: E402

import numpy as np  # noqa: E402

from recsys_assets.embeddings import EmbeddingRows  # noqa: E402
from recsys_assets.live_model import ArtifactTowers  # noqa: E402
from recsys_assets.recommender import LiveRecommender  # noqa: E402
from resources.artifact_keys import version_prefix  # noqa: E402
from resources.artifacts import LocalArtifactStore  # noqa: E402
from resources.item_index import LiveItems  # noqa: E402
from resources.pgvector import PgVectorStore  # noqa: E402
from resources.postgres import EmbeddedPostgresDatabase  # noqa: E402

ENDPOINTS = ("user_embeddings", "items_from_user", "items_from_item")

# wrk's script: requests drawn in turn from a list written by this benchmark; at the end one JSON line with the
# figures (latencies in microseconds) and the count of answers that were not 200
WRK_SCRIPT = """
local requests, n, threads = {}, 0, {}
bad = 0  -- per thread (a global of each thread's state, read back by done)
for line in io.lines(os.getenv("REQUESTS")) do
  local method, path, body = line:match("^(%u+) (%S+) ?(.*)$")
  requests[#requests + 1] = wrk.format(method, path, {["Content-Type"] = "application/json"},
                                       body ~= "" and body or nil)
end
setup = function(thread) threads[#threads + 1] = thread end
request = function() n = n % #requests + 1; return requests[n] end
response = function(status) if status ~= 200 then bad = bad + 1 end end
done = function(summary, latency, _requests)
  local not_200 = 0
  for _, thread in ipairs(threads) do not_200 = not_200 + thread:get("bad") end
  io.write(string.format('{"requests": %d, "seconds": %.3f, "p50_us": %d, "p99_us": %d, "errors": %d, ' ..
    '"socket_errors": %d}\\n', summary.requests, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(99), not_200, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
"""


def wrk_binary() -> str:
    if not shutil.which("wrk"):
        subprocess.run([str(ROOT / "scripts" / "install_debian_package.sh"), "wrk", "wrk"], check=False)
    found = shutil.which("wrk")
    if not found:
        sys.exit("benchmarks/recommendations_api.py needs wrk (Debian's package `wrk`), and it could not be installed")
    return found


def request_lines(customers, products, embeddings) -> dict[str, list[str]]:
    users = [{"city": str(c.city), "country": str(c.country), "creditlimit": float(c.creditlimit or 0)}
             for c in customers.itertuples()]
    return {
        "user_embeddings": [f"POST /user_embeddings {json.dumps([user])}" for user in users],
        "items_from_user": [f"POST /items_from_user?limit=5 {json.dumps(e)}" for e in embeddings],
        "items_from_item": [f"GET /items_from_item?item_id={code}&limit=5" for code in products[:5000]],
    }


def load(wrk: str, port: int, lines: list[str], concurrency: int, seconds: int, work: Path) -> dict:
    requests = work / "requests.txt"
    requests.write_text("\n".join(lines) + "\n")
    script = work / "requests.lua"
    script.write_text(WRK_SCRIPT)
    threads = 1 if concurrency == 1 else 2
    done = subprocess.run([wrk, "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--latency",
                           "-s", str(script), f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                          env={**os.environ, "REQUESTS": str(requests)}, timeout=seconds + 60)
    try:
        figures = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"wrk gave no figures: {done.stdout[-2000:]} {done.stderr[-2000:]}") from None
    return {"requests_per_second": round(figures["requests"] / figures["seconds"]),
            "p50_ms": round(figures["p50_us"] / 1000, 3), "p99_ms": round(figures["p99_us"] / 1000, 3),
            "non_200": figures["errors"], "socket_errors": figures["socket_errors"]}


def in_process(recommender: LiveRecommender, lines: dict[str, list[str]], calls: int) -> dict:
    """The same queries called directly: calls/s and p50/p99 per call."""
    bound = {}
    for endpoint in ENDPOINTS:
        timings = []
        for line in (lines[endpoint] * (calls // len(lines[endpoint]) + 1))[:calls]:
            method, path, *body = line.split(" ", 2)
            began = time.perf_counter()
            if endpoint == "items_from_item":
                recommender.items_from_item(path.split("item_id=")[1].split("&")[0], "5")
            elif endpoint == "user_embeddings":
                recommender.user_embeddings(json.loads(body[0]))
            else:
                recommender.items_from_user(json.loads(body[0]), "5")
            timings.append(time.perf_counter() - began)
        bound[endpoint] = {"calls_per_second": round(len(timings) / sum(timings)),
                           "p50_ms": round(float(np.percentile(timings, 50)) * 1000, 3),
                           "p99_ms": round(float(np.percentile(timings, 99)) * 1000, 3)}
    return bound


class Server:
    def __init__(self, work: Path, env: dict) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = open(work / f"serve-{self.port}.log", "w")
        self.process = subprocess.Popen([str(Path(sys.executable).with_name("mldp")), "serve", "--port", str(self.port),
                                         "--no-access-log", "--log-level", "warning"], env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def ready_with(self, version: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2) as answer:
                    status = json.loads(answer.read())
                    if status["model_version"] == version:
                        return status
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the API did not serve version {version} within {timeout:g} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="each load's duration")
    parser.add_argument("--large-items", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=5_000, help="in-process calls per endpoint (the bound)")
    args = parser.parse_args()
    wrk = wrk_binary()
    with scratch_folder("api") as work:
        settings = settings_for(work)
        db = EmbeddedPostgresDatabase(data_dir=str(settings.embedded_postgres_dir))  # the API's embedded default
        artifacts = LocalArtifactStore(root=settings.artifacts_uri)
        frame = training_frame(settings.datasets_dir)
        store = PgVectorStore(db=db)
        trained = publish_and_load(frame, artifacts, store, "bench-lab")
        customers = frame.drop_duplicates("customernumber")[["city", "country", "creditlimit"]]
        towers = ArtifactTowers(settings)
        rng = np.random.default_rng(7)
        codes = np.array([f"P{i:07d}" for i in range(args.large_items)], dtype=object)
        large_vectors = rng.normal(size=(args.large_items, 32)).astype(np.float32)
        env = {**os.environ, "DATA_DIR": str(work), "DATASETS_DIR": str(settings.datasets_dir),
               "RECOMMENDER_REFRESH_SECONDS": "0.5"}
        for name in ("DATABASE_URL", "READONLY_DATABASE_URL", "READONLY_DATABASE_SECRET_ID", "ARTIFACTS_URI",
                     "ITEM_INDEX_MAX_ITEMS"):
            env.pop(name, None)
        results = []
        server = Server(work, env)
        try:
            for catalogue, version, products in (("lab", "bench-lab", trained["products"]["productcode"].tolist()),
                                                 (f"{args.large_items:,} items", "bench-large", codes.tolist())):
                if version == "bench-large":  # the lab's tower, over a generated catalogue, as a new live version
                    shutil.copytree(Path(settings.artifacts_uri) / version_prefix("bench-lab"),
                                    Path(settings.artifacts_uri) / version_prefix(version))
                    store.load_version(version, {
                        store.item_table: EmbeddingRows(codes, large_vectors, "generated"),
                        store.user_table: EmbeddingRows(np.arange(3, dtype=np.int64), large_vectors[:3], "generated")},
                        32)
                status = server.ready_with(version)
                embedded = towers.embedder(version).embed(
                    [{"city": c.city, "country": c.country, "credit_limit": float(c.creditlimit or 0)}
                     for c in customers.itertuples()])[0]
                embeddings = [{"embedding": [round(float(v), 7) for v in vector], "model_version": version}
                              for vector in embedded]
                lines = request_lines(customers, products, embeddings)
                http = {f"concurrency_{c}": {e: load(wrk, server.port, lines[e], c, args.seconds, work) for e in ENDPOINTS}
                        for c in (1, 32)}
                local = LiveRecommender(LiveItems(PgVectorStore(db=db)), towers.embedder)
                local.refresh()
                results.append({"catalogue": catalogue, "items": len(products), "items_from": status["items_from"],
                                "http": http, "in_process_bound": in_process(local, lines, args.calls)})
                local.items.close()
        finally:
            server.stop()
        # the naive way: every query in pgvector (ITEM_INDEX_MAX_ITEMS=0), on the large catalogue, concurrency 32
        naive = Server(work, {**env, "ITEM_INDEX_MAX_ITEMS": "0"})
        try:
            status = naive.ready_with("bench-large")
            results[-1]["pgvector_per_query_concurrency_32"] = {
                e: load(wrk, naive.port, lines[e], 32, args.seconds, work) for e in ("items_from_user", "items_from_item")}
            results[-1]["pgvector_per_query_concurrency_32"]["items_from"] = status["items_from"]
        finally:
            naive.stop()
        store.close()
        lab = results[0]["http"]
        line = {
            "benchmark": "recommendations_api",
            "wrk": subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.split()[1],
            "results": results,
            "targets_met": {
                "lab_p99_ms<10_at_concurrency_1": all(lab["concurrency_1"][e]["p99_ms"] < 10 for e in ENDPOINTS),
                "lab_requests_per_second>=1500_at_concurrency_32":
                    all(lab["concurrency_32"][e]["requests_per_second"] >= 1500 for e in ENDPOINTS),
                "every_answer_200": all(r["http"][c][e]["non_200"] == 0 and r["http"][c][e]["socket_errors"] == 0
                                        for r in results for c in r["http"] for e in ENDPOINTS),
            },
        }
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
