"""The recommender workflow's jobs."""

import dagster as dg

from recsys_assets.assets import embeddings_tables, ratings_training_data, recsys_catalog, recsys_model
from recsys_assets.streaming import recommendations

recsys_training_job = dg.define_asset_job(
    "recsys_training_job",
    selection=dg.AssetSelection.assets(ratings_training_data, recsys_catalog, recsys_model),
    description="Extract the ratings training data and the catalogue, train and publish the two-tower model.",
)
embeddings_load_job = dg.define_asset_job(
    "embeddings_load_job",
    selection=dg.AssetSelection.assets(embeddings_tables),
    description="Load a model version's item and user embeddings into the pgvector tables (staging and swap).",
)
recsys_pipeline_job = dg.define_asset_job(
    "recsys_pipeline_job",
    selection=dg.AssetSelection.groups("recsys"),
    description="The whole recommender batch pipeline, from the source tables to the embeddings tables.",
)


def embeddings_run_config(version: str) -> dg.RunConfig:
    """Run config that pins the embeddings tables to one model version."""
    from recsys_assets.assets import EmbeddingsVersionConfig

    return dg.RunConfig({"embeddings_tables": EmbeddingsVersionConfig(version=version)})


recommendations_job = dg.define_asset_job(
    "recommendations_job", selection=[recommendations],
    description="Enrich one hour of archived session events (requested by session_events_sensor for each batch it "
                "archives; by hand for a backfill, or an old hour after a model change).",
)
