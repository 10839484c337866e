"""Streaming recommendations: session events -> hourly enriched records, exactly once.

Reference: the recommender lab's streaming path (Kinesis data stream -> Firehose with a transformation
Lambda -> S3 under `YYYY/MM/DD/HH/`). Here:

1. `session_events_sensor` reads new events since its cursor (the stream checkpoint), archives them as raw
   batches under `raw_events/YYYY/MM/DD/HH/<shard>-<first>-<last>.jsonl` (a replay from the same
   checkpoint rewrites the same batch), and only then returns its new cursor, adding each hour the batch
   touched as a partition of `session_events`, recording it as materialised, and requesting a run of its
   `recommendations` partition: one run per archived batch (its run key names the batch), so events archived
   while a run of their hour reads the archive get a run of their own, queued behind it (the pool runs one at
   a time). Declarative automation was tried here and lost such events: a condition cannot tell a run that
   read the archive before a batch landed from one that read it after.
2. `recommendations` recomputes from that hour's archived events and the live
   embeddings, in micro-batches, and replaces `recommendations/YYYY/MM/DD/HH/recommendations-<hour>.jsonl`
   and `dead_letter/YYYY/MM/DD/HH/dead-letter-<hour>.jsonl` in one write each. Events are deduplicated by
   (shard, sequence), so a crash anywhere loses nothing and duplicates nothing, and re-materialising an hour
   (a backfill, a replay after a model change) reproduces it.

The archive itself (its layout, writing and reading batches, dead letters, the user tower of a version) is
`recsys_assets.stream_archive`, which imports no Dagster; this module holds the assets, `recommendations_job`
is in `recsys_assets.jobs` and `session_events_sensor` in `recsys_assets.sensors`.
"""

import json
from collections import Counter

import dagster as dg
import numpy as np

from recsys_assets import enrichment
from recsys_assets.enrichment import DEFAULT_K, Enriched
from recsys_assets.stream_archive import (
    DEAD_LETTER_PREFIX,
    archived_records,
    dead_letter_line,
    embedder_for,
    hour_folder,
    oversize_reason,
    partition_hour,
)
from resources import drift, freshness
from resources.artifacts import ArtifactStore, join_key
from resources.metadata import artifact_link, count_table, tidy
from resources.item_index import LiveItems
from resources.pgvector import PgVectorStore
from resources.settings import PlatformSettings

# One partition per hour that events arrived in (UTC, "2026-11-26-14:00"), added by session_events_sensor when it
# archives the hour's first events: the catalogue lists the hours that have data, from wherever the stream
# starts, with no empty hours before it or between bursts. The hour in progress is a partition as soon as it has
# events, so they are enriched while it lasts.
SESSION_HOURS = dg.DynamicPartitionsDefinition(name="session_hours")
OUTPUT_PREFIX = "recommendations"
MAX_EVENTS_PER_TICK = 20_000
GROUP = "streaming"


def enrich_with_live_model(items, artifacts: ArtifactStore, pgvector: PgVectorStore, k: int = DEFAULT_K,
                           batch_size: int = 500, max_bytes: int | None = None) -> tuple[str, Enriched, list[float]]:
    """`enrichment.enrich_with_live_model` with the towers of `artifacts`, the live version's items ranked in
    memory (`resources.item_index`) up to `pgvector.in_memory_max_items` items."""
    return enrichment.enrich_with_live_model(items, lambda version: embedder_for(artifacts, version),
                                             LiveItems(pgvector, pgvector.in_memory_max_items), k, batch_size,
                                             max_bytes)


def count_lines(artifacts: ArtifactStore, key: str) -> int:
    return len(artifacts.read_text(key).splitlines()) if artifacts.exists(key) else 0


session_events = dg.AssetSpec(
    "session_events",
    group_name=GROUP,
    partitions_def=SESSION_HOURS,
    kinds={"json"},
    description="Session events as they arrived on the stream (Kinesis, or the local stream), archived by "
                "`session_events_sensor` under `raw_events/YYYY/MM/DD/HH/` in batches named by shard and sequence "
                "range: one partition per hour that has events, materialised each time new events of the hour are "
                "archived.",
)

class RecommendationsConfig(dg.Config):
    k: int = DEFAULT_K
    batch_size: int = 500


@dg.asset(
    group_name=GROUP,
    partitions_def=SESSION_HOURS,
    deps=[session_events, "item_embeddings", "user_embeddings"],
    kinds={"pgvector", "json"},
    freshness_policy=freshness.hourly_recommendations(),
    pool="recsys_recommendations",
    check_specs=[
        dg.AssetCheckSpec("events_reconcile", asset="recommendations",
                          description="events in = enriched + dead-lettered, counted in the written files"),
        dg.AssetCheckSpec("recommendations_drift", asset="recommendations",
                          description="Catalogue coverage and score distribution of the hour's recommendations, and "
                                      "the share of events from cities and countries the model never saw "
                                      "(DRIFT_COVERAGE_*, DRIFT_UNSEEN_*)."),
    ],
)
def recommendations(context: dg.AssetExecutionContext, config: RecommendationsConfig, artifacts: ArtifactStore,
                    pgvector: PgVectorStore) -> dg.MaterializeResult:
    """One hour of session events enriched with recommended and similar items, in Firehose's layout:
    `recommendations/YYYY/MM/DD/HH/` (and `dead_letter/YYYY/MM/DD/HH/` with reasons)."""
    hour = partition_hour(context.partition_key)
    records, duplicates = archived_records(artifacts, hour)
    version, outcome, latencies = enrich_with_live_model([(r, r.data) for r in records if not r.oversize_bytes],
                                                         artifacts, pgvector, config.k, config.batch_size)
    outcome.rejected.extend((r, oversize_reason(r)) for r in records if r.oversize_bytes)
    lines = [json.dumps(record, separators=(",", ":")) + "\n" for _r, record in outcome.records]
    dead = [json.dumps(dead_letter_line(record, reason)) + "\n" for record, reason in outcome.rejected]
    reasons = Counter(reason.split(":")[0] for _r, reason in outcome.rejected)
    stamp = hour.strftime("%Y-%m-%d-%H")
    output_key = join_key(OUTPUT_PREFIX, hour_folder(hour), f"recommendations-{stamp}.jsonl")
    dead_key = join_key(DEAD_LETTER_PREFIX, hour_folder(hour), f"dead-letter-{stamp}.jsonl")
    for key, content in ((output_key, lines), (dead_key, dead)):
        if content:
            artifacts.write_text(key, "".join(content))  # the hour's file replaced in one write
        else:
            artifacts.delete([key])
    written, dead_written = count_lines(artifacts, output_key), count_lines(artifacts, dead_key)
    reconciled = len(records) == written + dead_written
    catalogue = pgvector.row_count(pgvector.item_table) if outcome.records else 0
    drift_numbers, drift_check = recommendations_drift([record for _r, record in outcome.records], catalogue, config.k)
    return dg.MaterializeResult(
        metadata=tidy({
            "hour": stamp,
            "events_in": len(records),
            "enriched": len(lines),
            "partially_enriched": outcome.partial,
            "dead_lettered": len(dead),
            "duplicates_dropped": duplicates,
            "model_version": version,
            "micro_batches": len(latencies),
            "batch_p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies else 0.0,
            "batch_p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else 0.0,
            "dead_letter_reasons": count_table(dict(reasons), "reason", "events"),
            **{name: value for name, value in drift_numbers.items() if name != "events_enriched"},
            "output": artifact_link(artifacts.uri(output_key)),
        }),
        check_results=[
            dg.AssetCheckResult(
                check_name="events_reconcile", passed=reconciled,
                metadata={"events_in": len(records), "enriched_in_file": written, "dead_lettered_in_file": dead_written},
            ),
            drift_check,
        ],
    )


def recommendations_drift(records: list[dict], catalogue: int, k: int) -> tuple[dict, dg.AssetCheckResult]:
    """How the hour's recommendations look next to the catalogue and the training data: (the numbers, also
    the asset's metadata so the UI plots them hour after hour; the `recommendations_drift` check's result).

    - `catalogue_coverage`: distinct items recommended / items in the live catalogue; judged as
      `coverage_of_possible`, distinct items / the most the hour could show (min(catalogue, events x k)), so a
      quiet hour is not a low one. A model that recommends the same few items to everyone drives it down.
    - `score_*`: the cosine similarity of the recommended items (mean, 10th, 50th, 90th percentile).
    - `unseen_city_share`, `unseen_country_share`: events whose city or country the model never saw (their
      features are ignored, so they get the recommendations of an average customer).
    """
    settings = PlatformSettings.from_env()
    events = len(records)
    items = {item["id"] for record in records for item in record["recommended_items"]}
    scores = np.array([item["score"] for record in records for item in record["recommended_items"]], dtype=float)
    notes = [" ".join(record["enrichment"]["notes"]) for record in records]
    unseen = {name: sum(f"{name} " in n and "not seen in training" in n for n in notes) / events if events else 0.0
              for name in ("city", "country")}
    possible = min(catalogue, events * k)
    metadata = tidy({
        "events_enriched": events,
        "distinct_items_recommended": len(items),
        "catalogue_items": catalogue,
        "catalogue_coverage": len(items) / catalogue if catalogue else 0.0,
        "coverage_of_possible": len(items) / possible if possible else 0.0,
        **({f"score_{name}": float(value) for name, value in (
            ("mean", scores.mean()), ("p10", np.percentile(scores, 10)), ("p50", np.percentile(scores, 50)),
            ("p90", np.percentile(scores, 90)))} if len(scores) else {}),
        "unseen_city_share": unseen["city"],
        "unseen_country_share": unseen["country"],
    })
    if events < settings.drift_min_sample:
        return metadata, dg.AssetCheckResult(
            check_name="recommendations_drift", passed=True, metadata=metadata,
            description=f"not judged: {events} events enriched, fewer than DRIFT_MIN_SAMPLE ({settings.drift_min_sample})")
    coverage = drift.Thresholds(*settings.drift_coverage, higher_is_worse=False)
    shares = drift.Thresholds(*settings.drift_unseen)
    findings = {
        f"coverage of the possible {metadata['coverage_of_possible']} (warn at {coverage.warn}, error at "
        f"{coverage.error})": coverage.level(metadata["coverage_of_possible"]),
        **{f"unseen {name} share {metadata[f'unseen_{name}_share']} (warn from {shares.warn}, error from "
           f"{shares.error})": shares.level(metadata[f"unseen_{name}_share"]) for name in ("city", "country")},
    }
    level = drift.worst(list(findings.values()))
    flagged = [text for text, found in findings.items() if found]
    return metadata, dg.AssetCheckResult(
        check_name="recommendations_drift", passed=level is None, metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR if level == "ERROR" else dg.AssetCheckSeverity.WARN,
        description="; ".join(flagged) if flagged else "; ".join(findings),
    )
