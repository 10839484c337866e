"""Recommender batch pipeline as software-defined assets.

Reference: the recommender lab. A Glue Spark job joins MySQL `classicmodels` ratings, customers and
products into training data partitioned by customer; a data scientist trains a model and publishes 32-d
item and user embeddings, the model and its scalers to an ml-artifacts bucket; the embeddings are imported
into PostgreSQL + pgvector tables used for recommendations. Here:

    classicmodels/{ratings,customers,products} -> ratings_training_data -> recsys_model -> item_embeddings
                       {customers,products}    -> recsys_catalog ------^              -> user_embeddings

`item_embeddings` / `user_embeddings` (one step, `embeddings_tables`: the two tables of a version go live
together) load any complete version under `ml-artifacts/`, ours or one a data scientist dropped there
(`model_artifacts_sensor` requests the loads).
"""

import json
from pathlib import Path

import dagster as dg

from recsys_assets import embeddings, ratings_etl
from recsys_assets.model_code.training_defaults import TRAINING_DEFAULTS
from resources import freshness
from resources.artifacts import ArtifactStore, join_key
from resources.etl_engine import RatingsEtlEngine
from resources.metadata import artifact_link, markdown_mapping, metrics_table, tidy
from resources.model_registry import ModelRegistry
from resources.model_versions import new_version, publish_version
from resources.pgvector import PgVectorStore
from resources.sagemaker import MetricDefinition, SageMakerJobs
from resources.source_db import SourceDatabase
from resources.tracking import opt_in_tags

GROUP = "recsys"
MODEL_CODE_DIR = Path(__file__).with_name("model_code")
TRAINING_PREFIX = "ratings_ml_training"
CATALOG_PREFIX = "recsys/catalog"
# the multi-seed means (and standard deviations) that train.py prints
QUALITY_METRICS = ("validation_rmse", "validation_ndcg_at_5", "popularity_ndcg_at_5", "item_mean_ndcg_at_5",
                   "item_mean_baseline_rmse")
METRIC_DEFINITIONS = [
    MetricDefinition(name, rf"metric {name}=([0-9.eE+-]+)")
    for base in QUALITY_METRICS for name in (base, f"{base}_std")
]

source_ratings = dg.AssetSpec(["classicmodels", "ratings"], group_name=GROUP, kinds={"mysql"},
                              description="`ratings (customerNumber, productCode, productRating)` in the source.")
source_customers = dg.AssetSpec(["classicmodels", "customers"], group_name=GROUP, kinds={"mysql"},
                                description="The classicmodels `customers` table.")
source_products = dg.AssetSpec(["classicmodels", "products"], group_name=GROUP, kinds={"mysql"},
                               description="The classicmodels `products` table.")


class RatingsEtlConfig(dg.Config):
    chunk_rows: int = 50_000


def source_column_names(source_db: SourceDatabase) -> dict[str, dict[str, str]]:
    return ratings_etl.resolve_columns({t: source_db.table_columns(t) for t in ratings_etl.REQUIRED_COLUMNS})


@dg.asset(group_name=GROUP, deps=[source_ratings, source_customers, source_products], kinds={"sql", "parquet"},
          pool="ratings_etl")
def ratings_training_data(context: dg.AssetExecutionContext, config: RatingsEtlConfig, source_db: SourceDatabase,
                          artifacts: ArtifactStore, ratings_etl_engine: RatingsEtlEngine) -> dg.MaterializeResult:
    """The lab's ratings join as Parquet under `ratings_ml_training/`, hive-partitioned by customernumber.

    `ETL_ENGINE=inprocess` (default): ratings are streamed through a server-side cursor in chunks and joined
    to the customers and products tables in memory (memory does not grow with the ratings). `spark` / `glue`:
    the same join as a Spark job (local, or AWS Glue) launched through Dagster Pipes, which stages its files;
    they are then moved into place here. Either way a rerun replaces the previous output completely,
    `_manifest.json` lists exactly the current files, and a failed run leaves the previous output whole.
    """
    names = source_column_names(source_db)
    run_tag = context.run.run_id[:8]
    job_metadata: dict = {}
    if ratings_etl_engine.engine == "inprocess":
        chunks = ratings_etl.joined_chunks(source_db, names, config.chunk_rows)
        manifest = ratings_etl.write_partitioned(chunks, artifacts, TRAINING_PREFIX, run_tag, source_db.describe())
    else:
        job_metadata = ratings_etl_engine.run_job(context, artifacts, ratings_etl.staging_prefix(TRAINING_PREFIX, run_tag),
                                                  ratings_etl.job_contract(names), source_db.url())
        manifest = ratings_etl.publish_staged(artifacts, TRAINING_PREFIX, run_tag, job_metadata, source_db.describe(),
                                              ratings_etl_engine.engine)
    context.log.info(f"{manifest['rows']:,} ratings of {manifest['customers']} customers written "
                     f"({ratings_etl_engine.engine} engine)")
    return dg.MaterializeResult(
        metadata={
            "engine": ratings_etl_engine.engine,
            **{f"job_{key}": value for key, value in job_metadata.items()
               if key not in ("rows", "customers", "products", "rating_histogram")},
            "rows": manifest["rows"],
            "customers": manifest["customers"],
            "products": manifest["products"],
            "rating_histogram": dg.MetadataValue.md(markdown_mapping(manifest["rating_histogram"], "rating", "count")),
            "files": len(manifest["files"]),
            "stale_files_removed": manifest["stale_files_removed"],
            "fingerprint": manifest["fingerprint"],
            "source": manifest["source"],
            "uri": artifact_link(artifacts.uri(TRAINING_PREFIX), folder=True),
        }
    )


@dg.asset_check(asset=ratings_training_data, blocking=True)
def ratings_training_data_not_empty(artifacts: ArtifactStore) -> dg.AssetCheckResult:
    """There are ratings to train on (an empty ratings table stops the pipeline here, not in training)."""
    manifest = artifacts.read_json(join_key(TRAINING_PREFIX, ratings_etl.MANIFEST))
    passed = manifest["rows"] > 0
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"rows": manifest["rows"], "customers": manifest["customers"]},
        description=None if passed else "the source's ratings table is empty: there is nothing to train on",
    )


@dg.asset(group_name=GROUP, deps=[source_customers, source_products], kinds={"sql", "parquet"})
def recsys_catalog(source_db: SourceDatabase, artifacts: ArtifactStore) -> dg.MaterializeResult:
    """Every product's and customer's tower features, so that all of them get embeddings (not only those
    with ratings): `recsys/catalog/products.parquet` and `customers.parquet`."""
    products, customers = ratings_etl.dimension_frames(source_db)
    artifacts.write_parquet(join_key(CATALOG_PREFIX, "products.parquet"), products)
    artifacts.write_parquet(join_key(CATALOG_PREFIX, "customers.parquet"), customers)
    return dg.MaterializeResult(metadata={"products": len(products), "customers": len(customers),
                                          "uri": artifact_link(artifacts.uri(CATALOG_PREFIX), folder=True)})


TRACKING_TAGS = opt_in_tags(  # opt the training job in to the tracking sync (mlops_assets.tracking)
    project_name="recommender", project_user="personalisation",
    project_description="classicmodels recommendations: two-tower embeddings served from pgvector",
    model_name="two-tower-recommender", model_type="torch-two-tower")


# what the user tower's code/inference.py reads and answers
SERVING_CONTENT_TYPES = ("application/json", "application/jsonlines")


class RecsysModelConfig(dg.Config):
    """`recsys_assets/model_code/train.py`'s hyperparameters (see `two_tower.py`); the job's own defaults,
    written once in `model_code/training_defaults.py`."""

    embedding_dim: int = TRAINING_DEFAULTS["embedding_dim"]
    hidden: int = TRAINING_DEFAULTS["hidden"]
    epochs: int = TRAINING_DEFAULTS["epochs"]
    lr: float = TRAINING_DEFAULTS["lr"]
    factor_l2: str = TRAINING_DEFAULTS["factor_l2"]  # candidates for the factors' penalty, chosen on an inner split
    inner_fraction: float = TRAINING_DEFAULTS["inner_fraction"]
    validation_fraction: float = TRAINING_DEFAULTS["validation_fraction"]
    eval_seeds: int = TRAINING_DEFAULTS["eval_seeds"]  # held-out splits scored: mean and standard deviation
    seed: int = TRAINING_DEFAULTS["seed"]


def quality_table(metrics: dict) -> str:
    """The model next to the baselines on the held-out splits: mean ± standard deviation over the seeds."""
    rows = [("model", "validation_ndcg_at_5", "validation_rmse"),
            ("popularity (most rated first)", "popularity_ndcg_at_5", None),
            ("item mean", "item_mean_ndcg_at_5", "item_mean_baseline_rmse"),
            ("global mean", None, "global_mean_baseline_rmse"),
            ("customer mean", None, "user_mean_baseline_rmse")]

    def cell(name):
        if name is None or name not in metrics:
            return "-"
        return f"{metrics[name]:.4f} ± {metrics.get(name + '_std', 0.0):.4f}"

    lines = [f"{metrics.get('evaluation_seeds', 1)} held-out splits, mean ± standard deviation", "",
             "| | NDCG@5 | RMSE |", "|---|---|---|"]
    lines += [f"| {label} | {cell(ndcg)} | {cell(rmse)} |" for label, ndcg, rmse in rows]
    return "\n".join(lines)


@dg.asset(group_name=GROUP, deps=[ratings_training_data, recsys_catalog], kinds={"torch", "sagemaker"},
          freshness_policy=freshness.training_cadence())
def recsys_model(context: dg.AssetExecutionContext, config: RecsysModelConfig, sagemaker: SageMakerJobs,
                 artifacts: ArtifactStore, registry: ModelRegistry) -> dg.MaterializeResult:
    """The two-tower recommender, trained as a SageMaker script-mode job (`recsys_assets/model_code`) and
    published in the lab's layout under `ml-artifacts/<version>/`: embeddings CSVs, `model/`, JSON
    scalers, and `manifest.json` last (version, dimension, row counts, metrics, data fingerprint). Registered
    in the model registry as PendingManualApproval."""
    data = artifacts.read_json(join_key(TRAINING_PREFIX, ratings_etl.MANIFEST))
    version = new_version(context.run.run_id)
    hyperparameters = config.model_dump()
    job = sagemaker.train(
        job_name=f"recsys-model-{version}", source_dir=MODEL_CODE_DIR, entry_point="train.py",
        channels={"train": TRAINING_PREFIX, "catalog": CATALOG_PREFIX}, hyperparameters=hyperparameters,
        output_prefix="sagemaker/training",
        tags={**TRACKING_TAGS, "model_version": version, "dagster_run_id": context.run.run_id},
        metric_definitions=METRIC_DEFINITIONS, log=context.log.debug,
    )
    model_dir = Path(job.model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    # the registered model is served from its model.tar.gz: only one the serving container can load goes on
    sagemaker.check_model_archive(artifacts.key_from_uri(job.model_data_uri))
    files = {path.relative_to(model_dir).as_posix(): path for path in sorted(model_dir.rglob("*"))
             if path.is_file() and path.relative_to(model_dir).parts[0] != "code"}  # the lab's layout
    manifest = publish_version(artifacts, embeddings.ARTIFACTS_PREFIX, version, files, {
        "model": "two-tower",
        "dimension": config.embedding_dim,
        "rows": {"item_embeddings": metrics["item_embeddings"], "user_embeddings": metrics["user_embeddings"]},
        "metrics": metrics,
        "training_data": {"uri": artifacts.uri(TRAINING_PREFIX), "fingerprint": data["fingerprint"], "rows": data["rows"]},
        "training_job": job.name,
        "hyperparameters": hyperparameters,
        "sagemaker_model_data_uri": job.model_data_uri,
    })
    package = registry.register(
        "recsys", model_version=version, model_data_url=job.model_data_uri,
        metrics={k: metrics[k] for k in ("validation_rmse", "validation_ndcg_at_5", "popularity_ndcg_at_5")},
        data_fingerprint=data["fingerprint"], description=f"two-tower recommender {version}, trained by {job.name}",
        content_types=SERVING_CONTENT_TYPES,
    )
    return dg.MaterializeResult(
        metadata=tidy({
            "model_version": version,
            "model_package": package.arn,
            # the status it was registered with; each later change is an observation with its approval_status
            "registered_as": package.status,
            **{name: metrics[name] for base in QUALITY_METRICS for name in (base, f"{base}_std")},
            "evaluation_seeds": metrics["evaluation_seeds"],
            "quality": dg.MetadataValue.md(quality_table(metrics)),
            "targets_met": dg.MetadataValue.json(metrics["evaluation"]["targets_met"]),
            "item_embeddings": metrics["item_embeddings"],
            "user_embeddings": metrics["user_embeddings"],
            "metrics": dg.MetadataValue.md(metrics_table(metrics)),
            "training_job": job.name,
            "files": len(manifest["files"]),
            "uri": artifact_link(artifacts.uri(embeddings.version_prefix(version)), folder=True),
        })
    )


class EmbeddingsVersionConfig(dg.Config):
    """Which `ml-artifacts/<version>` to load; empty: the model registry's choice (the newest Approved
    version, or the newest registered one with MODEL_VERSION_POLICY=newest). A version named here must pass
    the same policy (Approved; or not Rejected, registered or not, under `newest`)."""

    version: str = ""


TABLE_FILES = {"item_embeddings": embeddings.ITEM_FILE, "user_embeddings": embeddings.USER_FILE}


@dg.multi_asset(
    specs=[
        dg.AssetSpec("item_embeddings", group_name=GROUP, deps=[recsys_model, "model_registry"],
                     kinds={"postgres", "pgvector"}, freshness_policy=freshness.training_cadence(),
                     description="`item_emb (id varchar primary key, embedding vector(32))` with an HNSW cosine "
                                 "index, from a model version's `embeddings/item_embeddings.csv`."),
        dg.AssetSpec("user_embeddings", group_name=GROUP, deps=[recsys_model, "model_registry"],
                     kinds={"postgres", "pgvector"}, freshness_policy=freshness.training_cadence(),
                     description="`user_emb (id int primary key, embedding vector(32))` with an HNSW cosine "
                                 "index, from a model version's `embeddings/user_embeddings.csv`."),
    ],
    can_subset=False,
    pool="recsys_embeddings",
)
def embeddings_tables(context: dg.AssetExecutionContext, config: EmbeddingsVersionConfig, artifacts: ArtifactStore,
                      pgvector: PgVectorStore, registry: ModelRegistry):
    """The item and user embeddings tables of one model version, which go live together or not at all: both
    files are read and checked against the manifest, both tables staged, validated and indexed, then both
    swapped in one transaction. A corrupt file of either leaves both live tables as they were."""
    package = registry.resolve("recsys", config.version)  # a named version must pass the version policy too
    version = package.model_version if package else config.version
    complete = embeddings.complete_version(artifacts, version)
    if complete is None:
        raise embeddings.EmbeddingsFileError(
            f"model version {version!r} is not complete under {artifacts.uri(embeddings.ARTIFACTS_PREFIX)} (a version "
            "needs manifest.json listing files that are all present)")
    rows = {asset: embeddings.read_embeddings(artifacts, version, complete.manifest, relative)
            for asset, relative in TABLE_FILES.items()}
    dimensions = {asset: r.dimension for asset, r in rows.items()}
    if len(set(dimensions.values())) != 1:
        raise embeddings.EmbeddingsFileError(f"model version {version}: the item and user embeddings differ in "
                                             f"dimension ({dimensions})")
    tables = {"item_embeddings": pgvector.item_table, "user_embeddings": pgvector.user_table}
    reports = pgvector.load_version(version, {tables[a]: r for a, r in rows.items()}, dimensions["item_embeddings"])
    for asset, table in tables.items():
        report = reports[table]
        context.log.info(f"{table}: version {version} live with {report.rows:,} rows"
                         + (" (already live, nothing to do)" if report.skipped else ""))
        if report.left_tables:
            context.log.warning(f"{table}: the replaced copies {', '.join(report.left_tables)} of version {version} are "
                                "still read by someone and were left in place: drop them once they are not")
        yield dg.MaterializeResult(
            asset_key=asset,
            metadata=tidy({
                "version": version,
                "rows": report.rows,
                "dimension": report.dimension,
                "load_seconds": report.load_seconds,
                "index_seconds": report.index_seconds,
                "swap_seconds": report.swap_seconds,
                "previous_version": report.previous_version or "",
                "dropped_tables": ", ".join(report.dropped_tables) or "none",
                "already_live": report.skipped,
                "model_package": f"{package.arn} ({package.status})" if package else "not registered",
                "source": rows[asset].source,
            }),
        )
