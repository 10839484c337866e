"""The project's one Dagster code location: every workflow's assets, checks, jobs and sensors, wired to the
resources that `resources.settings` chooses from the environment (local by default, AWS when configured)."""

from __future__ import annotations

import dagster as dg

import credit_assets
import mlops_assets
import recsys_assets
from resources.settings import build_resources

defs = dg.Definitions.merge(
    credit_assets.defs,
    recsys_assets.defs,
    mlops_assets.defs,
    dg.Definitions(resources=build_resources()),
)
