#!/usr/bin/env python3
"""Build the Firehose transformation Lambda's deployment package (a zip for the python3.12 runtime).

    python deploy/lambda/build.py [--out build/lambda] [--arch x86_64|arm64] [--python-version 3.12]

1. The pinned requirements (`deploy/lambda/requirements.txt`: numpy, psycopg, pgvector, boto3 and what they
   need, every version fixed) are installed from PyPI as manylinux wheels for the Lambda runtime's Python and
   architecture into `<out>/package`, without dependency resolution: the file is the whole closure. Only
   wheels the runtime's Amazon Linux 2023 can load are taken (glibc 2.34: manylinux_2_34 and older).
2. The platform's modules the handler imports are copied next to them (`PROJECT_MODULES`): the enrichment,
   the numpy user tower, the vector queries, the manifest check, settings and credentials; none of them imports Dagster, pandas
   or torch.
3. The unzipped size is checked against Lambda's limit (250 MB, layers included); a package over it is not
   zipped and the build fails, listing the largest parts.
4. `<out>/enrichment-lambda.zip` is written with sorted entries and fixed timestamps (the same inputs give
   the same bytes), and one JSON line reports the sizes.

Handler: `recsys_assets.lambda_handler.lambda_handler`. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
PYTHON_VERSION = "3.12"  # the function's runtime, python3.12 (deploy/cloudformation/platform.yaml)
# pip takes a wheel only for a platform tag named here; Amazon Linux 2023 has glibc 2.34
GLIBC_TAGS = ("manylinux_2_34", "manylinux_2_28", "manylinux_2_27", "manylinux_2_17", "manylinux2014")
PLATFORMS = {"x86_64": "x86_64", "arm64": "aarch64"}
# Lambda's limit on a function's unzipped code and layers: 262,144,000 bytes
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024
HANDLER = "recsys_assets.lambda_handler.lambda_handler"
PROJECT_MODULES = (
    "recsys_assets/__init__.py",
    "recsys_assets/lambda_handler.py",
    "recsys_assets/enrichment.py",
    "recsys_assets/live_model.py",
    "recsys_assets/model_code/__init__.py",
    "recsys_assets/model_code/numpy_tower.py",
    "resources/__init__.py",
    "resources/artifact_keys.py",
    "resources/aws_clients.py",
    "resources/credentials.py",
    "resources/item_index.py",
    "resources/lazy_definitions.py",
    "resources/model_versions.py",
    "resources/settings.py",
    "resources/vector_queries.py",
)
# fixed timestamp for every zip entry (zip cannot hold dates before 1980)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PackageTooLarge(SystemExit):
    pass


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def install_requirements(target: Path, arch: str, requirements: Path, python_version: str) -> None:
    platforms = [option for tag in GLIBC_TAGS for option in ("--platform", f"{tag}_{PLATFORMS[arch]}")]
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version, *platforms,
               "--target", str(target), "--requirement", str(requirements)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"installing {requirements} for Lambda ({arch}, Python {python_version}) "
                         f"failed:\n{result.stderr.strip() or result.stdout.strip()}")


def copy_project(target: Path) -> None:
    for relative in PROJECT_MODULES:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, destination)


def prune(target: Path) -> None:
    """Byte-code caches and the console scripts of the wheels: nothing the handler runs."""
    for cache in list(target.rglob("__pycache__")):
        shutil.rmtree(cache)
    shutil.rmtree(target / "bin", ignore_errors=True)


def check_size(target: Path, limit: int) -> int:
    size = directory_size(target)
    if size > limit:
        parts = sorted(((directory_size(p) if p.is_dir() else p.stat().st_size, p.name) for p in target.iterdir()),
                       reverse=True)[:8]
        largest = ", ".join(f"{name} {bytes_ / 1e6:.1f} MB" for bytes_, name in parts)
        raise PackageTooLarge(f"the Lambda package would be {size / 1e6:.1f} MB unzipped, over Lambda's limit of "
                              f"{limit / 1e6:.1f} MB; largest parts: {largest}. Nothing was zipped.")
    return size


def write_zip(source: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_suffix(".zip.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as bundle:
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=ZIP_TIME)
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                bundle.writestr(info, path.read_bytes())
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk, an interrupt: nothing half-written stays behind
        raise
    partial.replace(archive)  # a failed build never leaves a half-written zip under the final name


def build(out: Path, arch: str = "x86_64", requirements: Path = REQUIREMENTS,
          limit: int = UNZIPPED_LIMIT_BYTES, python_version: str = PYTHON_VERSION) -> dict:
    package = out / "package"
    archive = out / "enrichment-lambda.zip"
    if package.exists():
        shutil.rmtree(package)
    archive.unlink(missing_ok=True)
    package.mkdir(parents=True)
    install_requirements(package, arch, requirements, python_version)
    copy_project(package)
    prune(package)
    size = check_size(package, limit)
    write_zip(package, archive)
    return {"package": str(archive), "folder": str(package), "handler": HANDLER, "runtime": f"python{python_version}",
            "architecture": arch, "unzipped_bytes": size, "zipped_bytes": archive.stat().st_size,
            "limit_unzipped_bytes": limit}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "lambda")
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="x86_64")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    parser.add_argument("--python-version", default=PYTHON_VERSION,
                        help="the runtime's Python (default: the template's python3.12)")
    parser.add_argument("--limit-bytes", type=int, default=UNZIPPED_LIMIT_BYTES,
                        help="fail above this unzipped size (default: Lambda's 250 MB)")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out.resolve(), args.arch, args.requirements, args.limit_bytes,
                           args.python_version)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
