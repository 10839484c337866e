"""Recommender: ratings training data, the two-tower model, pgvector embeddings and streaming enrichment.

The package's Dagster definitions (`defs`, and its parts by name: `recsys_assets.recsys_model`, ...) are built
on first access, from `recsys_assets.definitions`, not on import: the Firehose transformation Lambda imports
`recsys_assets.lambda_handler` and `recsys_assets.enrichment` without Dagster, pandas or torch in its package
(see `deploy/lambda`).
"""

from resources.lazy_definitions import definitions_getattr

__getattr__ = definitions_getattr(__name__)
