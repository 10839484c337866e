"""A workflow package's `__getattr__`: its Dagster definitions (`defs`, the assets, jobs, ...) imported from its
`definitions` module when first asked for, not when the package is imported. So importing one of the package's
domain modules (`credit_assets.policy`, `recsys_assets.enrichment`) loads neither Dagster nor the models, and
the light paths (the Lambda, the CLI's data commands) stay light."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable


def definitions_getattr(package: str) -> Callable[[str], object]:
    def __getattr__(name: str):
        # a submodule's name is left to the import system (`from credit_assets import policy`)
        if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is not None:
            raise AttributeError(name)
        definitions = importlib.import_module(f"{package}.definitions")
        try:
            return getattr(definitions, name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
