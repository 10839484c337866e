"""ML ops: the model registry with approval notifications, training-run tracking sync, and the credit
pipeline exported to SageMaker Pipelines.

The package's Dagster definitions (`defs`, and its parts by name) are built on first access, from
`mlops_assets.definitions`.
"""

from resources.lazy_definitions import definitions_getattr

__getattr__ = definitions_getattr(__name__)
