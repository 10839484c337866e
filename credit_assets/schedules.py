"""When the credit workflow runs by itself: a daily scoring batch and a weekly retraining (off until started).

Cron expressions and their time zone come from the settings (`CREDIT_SCORING_CRON`,
`CREDIT_RETRAINING_CRON`, `SCHEDULE_TIMEZONE`). A new model is put to work by its approval
(`model_registry_sensor`), not by a schedule.
"""

import dagster as dg

from credit_assets.jobs import credit_scoring_job, credit_scoring_run_config, credit_training_job
from resources.model_registry import ModelRegistry, RegistryError
from resources.schedules import retraining_schedule
from resources.settings import PlatformSettings

_settings = PlatformSettings.from_env()


@dg.schedule(
    cron_schedule=_settings.credit_scoring_cron,
    execution_timezone=_settings.schedule_timezone,
    job=credit_scoring_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        f"A scoring batch every day (`CREDIT_SCORING_CRON`, now `{_settings.credit_scoring_cron}` in "
        f"{_settings.schedule_timezone}) with the model the registry chooses, pinned when the tick fires. Skipped, "
        "with the reason, while the registry has no model to use."
    ),
)
def credit_scoring_schedule(context: dg.ScheduleEvaluationContext, registry: ModelRegistry):
    try:
        package = registry.select("credit")
    except RegistryError as exc:
        return dg.SkipReason(str(exc))
    return dg.RunRequest(
        run_config=credit_scoring_run_config(package.model_version),
        tags={"model_package": package.arn, "model_version": package.model_version},
    )


credit_retraining_schedule = retraining_schedule(
    "credit_retraining_schedule", credit_training_job, "CREDIT_RETRAINING_CRON",
    "Retrain the scorecard on the current training data; each new version waits for a person's approval before "
    "it scores")
