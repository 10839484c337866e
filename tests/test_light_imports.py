"""Domain modules stay light: importing one loads neither Dagster nor torch (and, for the Firehose Lambda's
modules, no pandas either), so the Lambda package, the recommendations API, the Spark/Glue job and tools
start without the platform's definitions.

Each module is imported in a fresh interpreter: in this process the suite has loaded everything already.

Modules whose job is Dagster definitions or resources (`*.assets`, `*.sensors`, `recsys_assets.streaming`,
`resources.artifacts`, `resources.stream`, `mlops_assets.*`, ...) are exempt. The workflow packages build their
definitions on first access (`resources.lazy_definitions`), so importing the package itself is light too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from resources.settings import PROJECT_ROOT

HEAVY = ("dagster", "torch")
HEAVY_FOR_LAMBDA = (*HEAVY, "pandas")


def _lambda_modules() -> list[str]:
    """The platform modules the Lambda package ships (`deploy/lambda/build.py`'s PROJECT_MODULES)."""
    spec = importlib.util.spec_from_file_location("lambda_build", PROJECT_ROOT / "deploy" / "lambda" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return [path.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for path in build.PROJECT_MODULES]


LAMBDA_MODULES = _lambda_modules()
# modules that carry no pandas either, beyond the Lambda's own
PANDAS_FREE = [*LAMBDA_MODULES, "recsys_assets.stream_archive", "resources.stream_record"]
# light of Dagster and torch (pandas allowed)
LIGHT = [
    "recsys_assets.enrichment",
    "recsys_assets.live_model",
    "recsys_assets.lambda_handler",
    "recsys_assets.stream_archive",
    "recsys_assets.model_code.numpy_tower",
    "recsys_assets.recommender",
    "recsys_assets.api",
    "recsys_assets.session_events",
    "recsys_assets.ratings_etl_spark",
    "recsys_assets.ratings_etl",
    "recsys_assets.embeddings",
    "resources.item_index",
    "resources.vector_queries",
    "resources.settings",
    "resources.credentials",
    "resources.artifact_keys",
    "resources.aws_clients",
    "resources.stream_record",
    "resources.drift",
    "resources.metadata",
    "resources.embedded_postgres",
    "resources.classicmodels_demo",
    "resources.lazy_definitions",
    "credit_assets",
    "credit_assets.policy",
    "credit_assets.population",
    "credit_assets.scoring",
    "credit_assets.training_data",
    "mlops_assets",
]
CASES = sorted({*((m, HEAVY) for m in LIGHT if m not in PANDAS_FREE), *((m, HEAVY_FOR_LAMBDA) for m in PANDAS_FREE)})

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(name for name in sys.argv[2:] if name in sys.modules)))
"""


def loaded_after_import(module: str, watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter has in `sys.modules` after importing `module`."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", PROBE, module, *watched], cwd=PROJECT_ROOT,
                            env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_lambda_modules_are_covered():
    handler_path = {"recsys_assets.lambda_handler", "recsys_assets.enrichment", "resources.vector_queries"}
    assert handler_path <= set(LAMBDA_MODULES)
    assert all(module in dict(CASES) for module in LAMBDA_MODULES)


@pytest.mark.parametrize(("module", "watched"), CASES, ids=[module for module, _ in CASES])
def test_module_imports_light(module, watched):
    loaded = loaded_after_import(module, watched)
    assert loaded == [], (
        f"importing {module} loads {', '.join(loaded)}: move the import into the "
        "function that needs it, or the code into a module of its own")


def test_the_code_location_loads_without_torch():
    """Every run and every step process of `dagster dev` and the demo loads the code location first: torch (two
    seconds of each start) is imported only by the steps that train, save or load a model."""
    probe = "import definitions, sys; definitions.defs; print('torch' in sys.modules)"
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": path},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "False", "loading the code location imports torch"
