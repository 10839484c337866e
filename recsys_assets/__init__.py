"""Recommender: ratings training data, the two-tower model, pgvector embeddings and streaming enrichment.

The package's Dagster definitions (`defs`) are built on first access, not on import: the Firehose
transformation Lambda imports `recsys_assets.lambda_handler` and `recsys_assets.enrichment` without Dagster,
pandas or torch in its package (see `deploy/lambda`).
"""

from __future__ import annotations

import importlib
import importlib.util


def __getattr__(name: str):
    """`defs` and the definitions' parts (`recsys_assets.recsys_model`, ...), imported when first asked for.
    A submodule's name is left to the import system (`from recsys_assets import enrichment`)."""
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(name)
    definitions = importlib.import_module(f"{__name__}.definitions")
    try:
        return getattr(definitions, name)
    except AttributeError:
        raise AttributeError(f"module 'recsys_assets' has no attribute {name!r}") from None
