"""When the recommender retrains by itself: weekly (off until started; `RECSYS_RETRAINING_CRON`,
`SCHEDULE_TIMEZONE`). A new version loads into the embeddings tables once a person approves it
(`model_registry_sensor`), not by a schedule."""

from recsys_assets.jobs import recsys_training_job
from resources.schedules import retraining_schedule

recsys_retraining_schedule = retraining_schedule(
    "recsys_retraining_schedule", recsys_training_job, "RECSYS_RETRAINING_CRON",
    "Re-extract the ratings and retrain the two-tower model; each new version loads into the embeddings tables "
    "once a person approves it")
