"""What runs inside the "container" of the local SageMaker backend; a subprocess per job (or per instance).

`train`: runs the script-mode entry point as the training toolkit does (`python <entry point> --name
value ...` from the unpacked source folder, with the `SM_*` environment the backend prepared).

`transform`: serves the model as the PyTorch inference toolkit does for Batch Transform: the model folder
is the unpacked `model.tar.gz`, the handler module is `code/<SAGEMAKER_PROGRAM>` inside it and nothing
else, `model_fn(model_dir)` runs once, then per request `input_fn(body, content_type)` ->
`predict_fn(data, model)` -> `output_fn(prediction, accept)` (or `transform_fn`), with JSON and CSV
bodies handed over as text and others as bytes. Requests are built from each input file as Batch Transform
builds them (`SplitType`, `BatchStrategy`, `MaxPayloadInMB`) and the answers are assembled by line
into `<file>.out`.

In both, the platform's own packages cannot be imported: in SageMaker they do not exist, so code that
needs them must fail here too. Standard library only, run by path with the platform's Python.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import inspect
import json
import os
import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == HERE:
    del sys.path[0]  # the backend's own modules are not on the container's path


def _load_contracts():
    spec = importlib.util.spec_from_file_location("_sagemaker_containers", HERE / "containers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


containers = _load_contracts()


class _NotInTheContainer(importlib.abc.MetaPathFinder):
    """Makes the platform's packages unimportable, as they are inside a SageMaker container."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: model code runs in the SageMaker container, which has only the "
                "job's own code and the container's packages", name=fullname)
        return None


def _forbid(names: str) -> None:
    forbidden = {n for n in names.split(",") if n}
    if forbidden:
        for name in list(sys.modules):
            if name.split(".")[0] in forbidden:
                del sys.modules[name]
        sys.meta_path.insert(0, _NotInTheContainer(forbidden))


# --- training ---------------------------------------------------------------------------------------------


def train(args: argparse.Namespace, script_args: list[str]) -> int:
    code_dir = Path(args.code_dir).resolve()
    os.chdir(code_dir)  # the toolkit runs `python <entry point> ...` in the code folder
    sys.path.insert(0, str(code_dir))
    sys.argv = [args.entry_point, *script_args]
    runpy.run_path(args.entry_point, run_name="__main__")
    return 0


# --- batch transform --------------------------------------------------------------------------------------


class HandlerError(Exception):
    """The request failed the way the model server would answer it: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def load_handlers(model_dir: Path, entry_point: str) -> dict:
    """The handler functions of `code/<entry_point>`, checked as the inference toolkit checks them."""
    code_dir = model_dir / containers.CODE_DIR
    if not (code_dir / entry_point).is_file():
        raise SystemExit(f"model.tar.gz has no {containers.CODE_DIR}/{entry_point}")
    sys.path.insert(0, str(code_dir))
    module_name = entry_point[:-3] if entry_point.endswith(".py") else entry_point
    module = importlib.import_module(module_name)
    handlers = {name: getattr(module, name, None) for name in (*containers.HANDLERS, "transform_fn")}
    if handlers["transform_fn"] and any(handlers[n] for n in ("input_fn", "predict_fn", "output_fn")):
        raise SystemExit(f"{containers.CODE_DIR}/{entry_point}: transform_fn cannot be combined with input_fn, "
                         "predict_fn or output_fn (the inference toolkit refuses this too)")
    needed = ["model_fn"] + ([] if handlers["transform_fn"] else ["input_fn", "predict_fn", "output_fn"])
    missing = [name for name in needed if not handlers[name]]
    if missing:
        raise SystemExit(
            f"{containers.CODE_DIR}/{entry_point} does not define {', '.join(missing)}. The PyTorch serving container "
            "would use its defaults instead (model_fn: torch.jit.load('model.pt'), a TorchScript model only; input_fn: "
            "JSON/CSV/NPY decoded to one float tensor; output_fn: JSON/CSV/NPY), which none of this platform's models "
            "fit: define the handler")
    return handlers


def call(function, *arguments, context=None):
    """Call a handler with or without the trailing context argument, as the toolkit does."""
    count = len(inspect.signature(function).parameters)
    if count == len(arguments):
        return function(*arguments)
    if count == len(arguments) + 1:
        return function(*arguments, context)
    raise TypeError(f"{function.__name__} takes {count} arguments but {len(arguments)} were given")


def answer(handlers: dict, model, body: bytes, content_type: str, accept: str) -> bytes:
    """One request through the handlers; the response body, or HandlerError with the server's status."""
    try:
        data = body.decode("utf-8") if content_type in containers.UTF8_CONTENT_TYPES else body
        if handlers["transform_fn"]:
            result = call(handlers["transform_fn"], model, data, content_type, accept)
        else:
            decoded = call(handlers["input_fn"], data, content_type)
            prediction = call(handlers["predict_fn"], decoded, model)
            result = call(handlers["output_fn"], prediction, accept)
    except Exception as exc:  # noqa: BLE001 - the model server turns every handler error into a response
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            raise HandlerError(status, f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}") from None
        raise HandlerError(500, f"{type(exc).__name__}: {exc}") from None
    if isinstance(result, tuple):
        result = result[0]
    if isinstance(result, str):
        return result.encode("utf-8")
    if isinstance(result, (bytes, bytearray)):
        return bytes(result)
    raise HandlerError(500, f"the response must be bytes or str, not {type(result).__name__}")


def requests(data: bytes, split_type: str, batch_strategy: str, max_payload_bytes: int):
    """Yield (first record, last record, payload) as Batch Transform builds requests from one file."""
    if split_type == "None":
        if len(data) > max_payload_bytes:
            raise ValueError(f"the file is {len(data):,} bytes, more than MaxPayloadInMB allows without SplitType=Line")
        yield 1, 1, data
        return
    records = [line for line in data.split(b"\n") if line.strip()]
    batch: list[bytes] = []
    size = 0
    first = 1
    for number, record in enumerate(records, start=1):
        if len(record) + 1 > max_payload_bytes:
            raise ValueError(f"record {number} is {len(record) + 1:,} bytes, larger than MaxPayloadInMB")
        full = batch and (batch_strategy == "SingleRecord" or size + len(record) + 1 > max_payload_bytes)
        if full:
            yield first, number - 1, b"\n".join(batch) + b"\n"
            batch, size, first = [], 0, number
        batch.append(record)
        size += len(record) + 1
    if batch:
        yield first, first + len(batch) - 1, b"\n".join(batch) + b"\n"


def transform(args: argparse.Namespace) -> int:
    model_dir, input_dir, output_dir = Path(args.model_dir), Path(args.input_dir), Path(args.output_dir)
    handlers = load_handlers(model_dir, args.entry_point)
    model = call(handlers["model_fn"], str(model_dir))
    files = [input_dir / name for name in json.loads(Path(args.files).read_text())]
    accept = args.accept if args.accept and args.accept != "*/*" else os.environ.get(
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", containers.DEFAULT_ACCEPT)
    max_payload = args.max_payload_mb * 1024 * 1024
    records_total, started = 0, time.perf_counter()
    for path in files:
        relative = path.relative_to(input_dir)
        target = output_dir / relative.parent / f"{relative.name}.out"
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        try:
            batches = list(requests(path.read_bytes(), args.split_type, args.batch_strategy, max_payload))
        except ValueError as exc:
            print(f"input file {relative}: {exc}", file=sys.stderr)
            return 2
        with open(temporary, "wb") as sink:
            for first, last, payload in batches:
                try:
                    out = answer(handlers, model, payload, args.content_type, accept)
                except HandlerError as exc:
                    print(f"input file {relative}, records {first}-{last}: the model answered {exc.status}: {exc}",
                          file=sys.stderr)
                    temporary.unlink(missing_ok=True)
                    return 2
                if args.split_type == "Line" and out and not out.endswith(b"\n"):
                    out += b"\n"  # AssembleWith=Line
                sink.write(out)
                records_total += last - first + 1
        os.replace(temporary, target)
    print(f"transformed {records_total} records from {len(files)} file(s) in {time.perf_counter() - started:.2f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forbid-modules", default="")
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train")
    training.add_argument("--code-dir", required=True)
    training.add_argument("--entry-point", required=True)
    serving = commands.add_parser("transform")
    serving.add_argument("--model-dir", required=True)
    serving.add_argument("--entry-point", default=containers.DEFAULT_INFERENCE_ENTRY_POINT)
    serving.add_argument("--input-dir", required=True)
    serving.add_argument("--files", required=True, help="JSON list of this instance's input files, relative")
    serving.add_argument("--output-dir", required=True)
    serving.add_argument("--content-type", default="text/csv")
    serving.add_argument("--accept", default="")
    serving.add_argument("--split-type", default="Line")
    serving.add_argument("--batch-strategy", default="MultiRecord")
    serving.add_argument("--max-payload-mb", type=int, default=6)
    args = parser.parse_args(argv)
    _forbid(args.forbid_modules)
    return train(args, script_args) if args.command == "train" else transform(args)


if __name__ == "__main__":
    sys.exit(main())
