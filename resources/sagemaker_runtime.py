"""Batch-transform runtime for the local SageMaker backend, run as a subprocess by `SageMakerResource`.

It follows the contract of SageMaker Batch Transform with the PyTorch serving toolkit, so that the same
inference script runs unchanged on AWS: the script defines ``model_fn(model_dir)``, ``input_fn(body,
content_type)``, ``predict_fn(data, model)`` and ``output_fn(prediction, accept)``; each input file is split
into records by line (``SplitType=Line``), records are grouped into payloads of at most ``MaxPayloadInMB``
(``BatchStrategy=MultiRecord``), and the outputs for ``<file>`` are assembled by line into ``<file>.out``.

Standard library only: this file is executed by path, without importing the project.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path


def load_entry_point(code_dir: Path, entry_point: str):
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location(Path(entry_point).stem, code_dir / entry_point)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load inference entry point {code_dir / entry_point}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [name for name in ("model_fn", "input_fn", "predict_fn", "output_fn") if not hasattr(module, name)]
    if missing:
        raise SystemExit(f"inference entry point {entry_point} does not define {', '.join(missing)}")
    return module


def payloads(data: bytes, max_payload_bytes: int):
    """Yield (first_record_number, payload) with whole lines, each payload at most `max_payload_bytes`."""
    records = [line for line in data.split(b"\n") if line.strip()]
    batch: list[bytes] = []
    size = 0
    first = 1
    for number, record in enumerate(records, start=1):
        if len(record) + 1 > max_payload_bytes:
            raise ValueError(f"record {number} is larger than MaxPayloadInMB")
        if batch and size + len(record) + 1 > max_payload_bytes:
            yield first, b"\n".join(batch) + b"\n"
            batch, size, first = [], 0, number
        batch.append(record)
        size += len(record) + 1
    if batch:
        yield first, b"\n".join(batch) + b"\n"


def as_bytes(output) -> bytes:
    if isinstance(output, bytes):
        return output
    if isinstance(output, str):
        return output.encode("utf-8")
    raise TypeError(f"output_fn must return bytes or str, not {type(output).__name__}")


def run(args: argparse.Namespace) -> int:
    module = load_entry_point(Path(args.code_dir), args.entry_point)
    model = module.model_fn(args.model_dir)
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    files = sorted(p for p in input_dir.rglob("*") if p.is_file())
    if not files:
        print(f"no input files under {input_dir}", file=sys.stderr)
        return 1
    max_payload = int(args.max_payload_mb * 1024 * 1024)
    records_total = 0
    started = time.perf_counter()
    for path in files:
        relative = path.relative_to(input_dir)
        target = output_dir / relative.parent / f"{relative.name}.out"
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        try:
            batches = list(payloads(path.read_bytes(), max_payload))
        except ValueError as exc:
            print(f"input file {relative}: {exc}", file=sys.stderr)
            return 2
        with open(temporary, "wb") as sink:
            for first, payload in batches:
                count = payload.count(b"\n")
                try:
                    data = module.input_fn(payload, args.content_type)
                    prediction = module.predict_fn(data, model)
                    out = as_bytes(module.output_fn(prediction, args.accept))
                except Exception as exc:  # reported with the file and records it concerns
                    print(
                        f"input file {relative}, records {first}-{first + count - 1}: {type(exc).__name__}: {exc}",
                        file=sys.stderr,
                    )
                    temporary.unlink(missing_ok=True)
                    return 2
                sink.write(out if out.endswith(b"\n") or not out else out + b"\n")
                records_total += count
        os.replace(temporary, target)
    elapsed = time.perf_counter() - started
    print(f"transformed {records_total} records from {len(files)} file(s) in {elapsed:.2f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code-dir", required=True)
    parser.add_argument("--entry-point", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--input-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--content-type", default="text/csv")
    parser.add_argument("--accept", default="text/csv")
    parser.add_argument("--max-payload-mb", type=float, default=6.0)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
