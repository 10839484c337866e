"""The recommender's Dagster definitions (`recsys_assets.defs`)."""

import dagster as dg

from recsys_assets.assets import (
    embeddings_tables,
    ratings_training_data,
    ratings_training_data_not_empty,
    recsys_catalog,
    recsys_model,
    source_customers,
    source_products,
    source_ratings,
)
from recsys_assets.jobs import embeddings_load_job, recommendations_job, recsys_pipeline_job, recsys_training_job
from recsys_assets.schedules import recsys_retraining_schedule
from recsys_assets.sensors import model_artifacts_sensor, session_events_sensor
from recsys_assets.streaming import recommendations, session_events

defs = dg.Definitions(
    assets=[source_ratings, source_customers, source_products, ratings_training_data, recsys_catalog, recsys_model,
            embeddings_tables, session_events, recommendations],
    asset_checks=[ratings_training_data_not_empty],
    jobs=[recsys_training_job, embeddings_load_job, recsys_pipeline_job, recommendations_job],
    sensors=[model_artifacts_sensor, session_events_sensor],
    schedules=[recsys_retraining_schedule],
)
