"""Credit-limit-increase batch scoring: training the scorecard and scoring, deciding and writing back.

The package's Dagster definitions (`defs`, and its assets and jobs by name) are built on first access, from
`credit_assets.definitions`: importing a domain module (`credit_assets.policy`) loads no Dagster or torch.
"""

from resources.lazy_definitions import definitions_getattr

__getattr__ = definitions_getattr(__name__)
