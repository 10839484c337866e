"""How current people expect what they rely on to be: the freshness policies of the platform's assets.

Dagster's freshness daemon (`freshness: enabled` in the shipped dagster.yaml files) evaluates each policy
against the asset's latest materialisation every 30 s, the UI shows the state (fresh, warning, stale) on the
asset and in the catalogue, and `freshness_alert_sensor` tells people when one turns stale.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from resources.settings import PlatformSettings

_settings = PlatformSettings.from_env()


def training_cadence() -> dg.FreshnessPolicy:
    """Models, their tracking records and the embeddings tables: trained, synced and loaded at least every
    `FRESHNESS_TRAINING_DAYS` (default 8: the weekly retraining, a day late); a warning a day before."""
    days = _settings.freshness_training_days
    return dg.FreshnessPolicy.time_window(fail_window=timedelta(days=days),
                                          warn_window=timedelta(days=days - 1) if days > 1 else timedelta(hours=12))


def hourly_recommendations() -> dg.FreshnessPolicy:
    """The hourly recommendations: an hour enriched at least every `FRESHNESS_RECOMMENDATIONS_HOURS` (default 2);
    a warning at half of it."""
    hours = _settings.freshness_recommendations_hours
    return dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=hours), warn_window=timedelta(minutes=hours * 30))
