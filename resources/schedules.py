"""Retraining schedules, one per model: off until someone starts them, their cron and time zone from the
settings (`CREDIT_RETRAINING_CRON`, `RECSYS_RETRAINING_CRON`, `SCHEDULE_TIMEZONE`)."""

from __future__ import annotations

import dagster as dg

from resources.settings import PlatformSettings


def retraining_schedule(name: str, job, variable: str, what: str) -> dg.ScheduleDefinition:
    """A schedule that starts `job` at the cron of the setting `variable`; `what` says what it does and what
    happens to each new version."""
    settings = PlatformSettings.from_env()
    cron = {"CREDIT_RETRAINING_CRON": settings.credit_retraining_cron,
            "RECSYS_RETRAINING_CRON": settings.recsys_retraining_cron}[variable]
    return dg.ScheduleDefinition(
        name=name, cron_schedule=cron, execution_timezone=settings.schedule_timezone, job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"{what} (`{variable}`, now `{cron}` in {settings.schedule_timezone}). Off until started.",
    )
