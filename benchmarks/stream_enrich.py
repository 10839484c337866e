"""Benchmark: session events through the project's enrichment path against the embedded PostgreSQL.

Two catalogues: the lab's size (its training data when present, about 110 items and 100 customers; demo
data otherwise) and 100,000 items. For each: N events (default 100,000) enriched in micro-batches
(`enrich_in_batches`: per batch one user-tower pass) -> events/s and p50/p99 ms per micro-batch, through the
project's path (the live version's item vectors held in memory, exact top-k in numpy: `LiveItems`) and the
previous one (each micro-batch's queries in pgvector: one round trip for all recommendations and one for all
similar items, HNSW on the large catalogue); the naive way (one query per event for each lookup) measured on a
sample in the same run, with the ratios; and recall@5 of the similar items against exact cosine search in
numpy. One JSON line.

    .venv/bin/python benchmarks/stream_enrich.py [--events 100000] [--batch 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import publish_and_load, scratch_folder, settings_for, training_frame  # noqa: E402

import numpy as np  # noqa: E402

from recsys_assets.embeddings import EmbeddingRows  # noqa: E402
from recsys_assets.enrichment import chosen_item, enrich_in_batches, parse_event  # noqa: E402
from recsys_assets.session_events import make_events  # noqa: E402
from recsys_assets.stream_archive import embedder_for  # noqa: E402
from resources.artifacts import LocalArtifactStore  # noqa: E402
from resources.item_index import LiveItems  # noqa: E402
from resources.pgvector import PgVectorStore  # noqa: E402
from resources.postgres import EmbeddedPostgresDatabase  # noqa: E402

K = 5


def enrich_all(payloads, embedder, store, batch: int) -> tuple[float, list[float], int]:
    started = time.perf_counter()
    outcome, latencies = enrich_in_batches(list(enumerate(payloads)), embedder, store, K, batch)
    return time.perf_counter() - started, latencies, len(outcome.records)


def one_query_per_event(payloads, embedder, store) -> float:
    """The naive enrichment: each event embedded, recommended and matched on its own."""
    started = time.perf_counter()
    for payload in payloads:
        event = parse_event(payload)
        vectors, _notes = embedder.embed([event])
        store.recommend_for_embedding(vectors[0], K, [i["product_code"] for i in event["browse_history"]])
        code = chosen_item(event)
        if code:
            store.similar_items(code, K)
    return len(payloads) / (time.perf_counter() - started)


def similar_recall(store, codes: list[str], ids: np.ndarray, vectors: np.ndarray) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    position = {code: i for i, code in enumerate(ids)}
    answers = store.similar_items_batch(codes, K, version=store.active_version(store.item_table))
    recalls = []
    for code, answer in zip(codes, answers):
        index = position[code]
        distance = 1 - unit @ unit[index]
        distance[index] = np.inf
        exact = set(ids[np.argpartition(distance, K)[:K]])
        recalls.append(len(exact & {item for item, _d in answer}) / K)
    return float(np.mean(recalls))


def measure(name, store, embedder, products, item_vectors, customers, events, batch, baseline_sample) -> dict:
    """The project's path (the live version's items ranked in memory, `LiveItems`), the previous one (every
    micro-batch's queries in pgvector, two round trips) and the naive one (a query per lookup), same events."""
    payloads = make_events(products, customers, events, seed=1)
    chosen = [c for c in dict.fromkeys(chosen_item(json.loads(p)) for p in payloads[:2_000]) if c]
    figures = {"catalogue": name, "items": len(products), "events": events, "batch_size": batch}
    for path, items in (("", LiveItems(store)), ("pgvector_", store)):
        started = time.perf_counter()
        enrich_all(payloads[:batch], embedder, items, batch)  # warm-up: connections, plans; the items read
        warm_up = time.perf_counter() - started
        seconds, latencies, enriched = enrich_all(payloads, embedder, items, batch)
        figures.update({
            f"{path}events_per_second": round(events / seconds),
            f"{path}batch_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            f"{path}batch_p99_ms": round(float(np.percentile(latencies, 99)), 2),
            f"{path}similar_items_recall_at_5": round(similar_recall(items, chosen, np.asarray(products, dtype=object),
                                                                     item_vectors), 4),
            f"{path}first_batch_seconds": round(warm_up, 3),
        })
        figures["enriched"] = enriched
    baseline = one_query_per_event(payloads[:baseline_sample], embedder, store)
    figures.update({
        "one_query_per_event_events_per_second": round(baseline),
        "baseline_sample": baseline_sample,
        "speedup_vs_pgvector_batches": round(figures["events_per_second"] / figures["pgvector_events_per_second"], 1),
        "speedup_vs_one_query_per_event": round(figures["events_per_second"] / baseline, 1),
    })
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--large-items", type=int, default=100_000)
    parser.add_argument("--baseline-sample", type=int, default=2_000)
    parser.add_argument("--ef-search", type=int, default=PgVectorStore.model_fields["ef_search"].default)
    args = parser.parse_args()
    with scratch_folder("stream") as work:
        db = EmbeddedPostgresDatabase(data_dir=str(work / "postgres"), database="bench_stream")
        artifacts = LocalArtifactStore(root=str(work / "artifacts"))
        frame = training_frame(settings_for(work).datasets_dir)
        lab = PgVectorStore(db=db)
        trained = publish_and_load(frame, artifacts, lab, "bench-lab")
        embedder = embedder_for(artifacts, "bench-lab")
        customers = frame.drop_duplicates("customernumber")[["customernumber", "city", "country", "creditlimit"]]
        results = [measure("lab", lab, embedder, trained["products"]["productcode"].tolist(), trained["item_vectors"],
                           customers, args.events, args.batch, args.baseline_sample)]
        lab.close()

        rng = np.random.default_rng(100)
        codes = np.array([f"P{i:07d}" for i in range(args.large_items)], dtype=object)
        vectors = rng.normal(size=(args.large_items, 32)).astype(np.float32)
        large = PgVectorStore(db=db, item_table="item_emb_large", user_table="user_emb_large", ef_search=args.ef_search)
        # generated items under the tower's version: queries check that items and user tower are of one version
        report = large.load_embeddings(large.item_table, EmbeddingRows(codes, vectors, "generated"), 32,
                                       version="bench-lab")
        results.append(measure(f"{args.large_items:,} items", large, embedder, codes.tolist(), vectors,
                               customers, args.events, args.batch, args.baseline_sample))
        results[-1]["index_build_seconds"] = report.index_seconds
        results[-1]["ef_search"] = args.ef_search
        large.close()
        line = {
            "benchmark": "stream_enrich",
            "results": results,
            "targets_met": {
                "lab_events_per_second>=5000": results[0]["events_per_second"] >= 5_000,
                "large_events_per_second>=10000": results[1]["events_per_second"] >= 10_000,
                "large_recall_at_5>=0.99": results[1]["similar_items_recall_at_5"] >= 0.99,
                "large_batch_p99_ms<250": results[1]["batch_p99_ms"] < 250,
            },
        }
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
