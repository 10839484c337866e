"""What the SageMaker framework containers expect, in one place: both backends and the pipeline export use it.

Followed from the AWS toolkits that run inside the PyTorch containers (`sagemaker-training` 5.1 for
training, `sagemaker-pytorch-inference` 2.0 with its `sagemaker_inference` for serving); the contract
tests run the toolkits themselves against this module's output.

Training (script mode): the SDK sends every hyperparameter JSON-encoded; the toolkit decodes them, writes
nothing but reads `<base>/input/config/{hyperparameters,inputdataconfig,resourceconfig}.json`, unpacks the
`sagemaker_submit_directory` into `<base>/code`, and runs `python <entry point> --name value ...`
(names sorted) with the `SM_*` environment of `training_environment`. `<base>/model` becomes
`model.tar.gz`.

Serving: the container unpacks `model.tar.gz` into `/opt/ml/model` and imports the module named by
`SAGEMAKER_PROGRAM` from `/opt/ml/model/code` only. Without it the toolkit silently uses its defaults,
whose `model_fn` is `torch.jit.load("model.pt")`: a state_dict fails there. So every model archive the
platform serves carries `code/<entry point>` (and `code/requirements.txt`, which the container
`pip install`\\ s at start-up).

Standard library only: the local backend's runtime (`resources.sagemaker.runtime`) imports it by path.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CODE_DIR = "code"  # inside model.tar.gz, as /opt/ml/model/code in the container
SERVING_CODE_DIR = "/opt/ml/model/code"
DEFAULT_INFERENCE_ENTRY_POINT = "inference.py"
HANDLERS = ("model_fn", "input_fn", "predict_fn", "output_fn")
UTF8_CONTENT_TYPES = ("application/json", "text/csv")  # the toolkit hands these bodies over as str
DEFAULT_ACCEPT = "application/json"  # the toolkit's answer type when a request accepts anything
SPLIT_TYPES = ("None", "Line")  # RecordIO and TFRecord exist on AWS, but no model of the platform reads them
BATCH_STRATEGIES = ("MultiRecord", "SingleRecord")
DEFAULT_MAX_PAYLOAD_MB = 6  # Batch Transform's MaxPayloadInMB when none is given (SageMaker's default)
MAX_PAYLOAD_MB = 100  # CreateTransformJob's own limit
HOST = "algo-1"
INSTANCE_GROUP = "homogeneousCluster"
PYTORCH_TRAINING_MODULE = "sagemaker_pytorch_container.training:main"  # SAGEMAKER_TRAINING_MODULE in the image
CONTAINER_LOG_LEVEL = 20


class ModelArchiveError(ValueError):
    """A model.tar.gz the serving container could not use; the message names the archive and what is missing."""


class TransformSettingsError(ValueError):
    """Batch Transform settings that CreateTransformJob would refuse."""


# --- training -----------------------------------------------------------------------------------------------


def encode_hyperparameters(hyperparameters: Mapping[str, Any]) -> dict[str, str]:
    """As the SageMaker SDK sends them: every value JSON-encoded (`0.5` -> `"0.5"`, `"a"` -> `'"a"'`)."""
    return {str(name): json.dumps(value) for name, value in hyperparameters.items()}


def decode_hyperparameters(encoded: Mapping[str, str]) -> dict[str, Any]:
    """As the training toolkit reads hyperparameters.json: JSON-decoded where possible, else the text itself."""
    decoded = {}
    for name, value in encoded.items():
        try:
            decoded[name] = json.loads(value)
        except (TypeError, ValueError):
            decoded[name] = value
    return decoded


def framework_hyperparameters(entry_point: str, submit_directory: str, region: str) -> dict[str, str]:
    """The `sagemaker_*` hyperparameters that tell the framework container what to run (JSON-encoded)."""
    return {
        "sagemaker_program": json.dumps(entry_point),
        "sagemaker_submit_directory": json.dumps(submit_directory),
        "sagemaker_region": json.dumps(region),
        "sagemaker_container_log_level": str(CONTAINER_LOG_LEVEL),
    }


def _text(value: Any) -> str:
    """The toolkit's rendering of a value in an environment variable: text as is, anything else compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def command_arguments(hyperparameters: Mapping[str, Any]) -> list[str]:
    """`--name value` pairs sorted by name, rendered as the toolkit does (`True` stays `True`)."""
    arguments = []
    for name in sorted(hyperparameters):
        value = hyperparameters[name]
        arguments.append(f"--{name}" if len(name) > 1 else f"-{name}")
        if hasattr(value, "items"):
            arguments.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            arguments.append("" if value is None else str(value))
    return arguments


def resource_config(instance_type: str, hosts: list[str] | None = None, current_host: str = HOST) -> dict[str, Any]:
    hosts = hosts or [HOST]
    return {
        "current_host": current_host,
        "current_instance_type": instance_type,
        "current_group_name": INSTANCE_GROUP,
        "hosts": hosts,
        "instance_groups": [{"instance_group_name": INSTANCE_GROUP, "instance_type": instance_type, "hosts": hosts}],
        "network_interface_name": "eth0",
    }


def input_data_config(channels: Iterable[str]) -> dict[str, dict[str, str]]:
    return {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
            for name in channels}


def write_training_config(base_dir: Path, *, encoded_hyperparameters: Mapping[str, str], channels: Iterable[str],
                          instance_type: str) -> Path:
    """The three files SageMaker mounts under `<base>/input/config`; returns that folder."""
    config_dir = Path(base_dir) / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(dict(encoded_hyperparameters), indent=2))
    (config_dir / "inputdataconfig.json").write_text(json.dumps(input_data_config(channels), indent=2))
    (config_dir / "resourceconfig.json").write_text(json.dumps(resource_config(instance_type), indent=2))
    return config_dir


def training_environment(base_dir: Path, *, job_name: str, num_cpus: int | None = None) -> dict[str, str]:
    """The `SM_*` variables the training toolkit gives the entry point, from the files under `base_dir`.

    Mirrors `sagemaker_training.environment.Environment.to_env_vars()` for one CPU instance with the
    PyTorch container's framework module; the contract test compares the two key by key.
    """
    base = Path(base_dir)
    config_dir = base / "input" / "config"
    encoded = json.loads((config_dir / "hyperparameters.json").read_text())
    data_config = json.loads((config_dir / "inputdataconfig.json").read_text())
    resources = json.loads((config_dir / "resourceconfig.json").read_text())
    framework = {k: v for k, v in decode_hyperparameters(encoded).items() if k.startswith("sagemaker_")}
    hyperparameters = {k: v for k, v in decode_hyperparameters(encoded).items() if not k.startswith("sagemaker_")}
    entry_point = str(framework.get("sagemaker_program", ""))
    module_name = entry_point[:-3] if entry_point.endswith(".py") else entry_point
    channels = {name: str(base / "input" / "data" / name) for name in data_config}
    hosts = sorted(resources["hosts"])
    current_host = resources["current_host"]
    groups = {g["instance_group_name"]: g for g in resources.get("instance_groups", [])}
    group = resources.get("current_group_name", INSTANCE_GROUP)
    paths = {
        "model_dir": str(base / "model"),
        "input_dir": str(base / "input"),
        "input_config_dir": str(config_dir),
        "output_dir": str(base / "output"),
        "output_data_dir": str(base / "output" / "data"),
        "output_intermediate_dir": str(base / "output" / "intermediate"),
    }
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    log_level = int(framework.get("sagemaker_container_log_level", CONTAINER_LOG_LEVEL))
    training_env = {
        "additional_framework_parameters": {},
        "channel_input_dirs": channels,
        "current_host": current_host,
        "current_instance_group": group,
        "current_instance_group_hosts": groups.get(group, {}).get("hosts", hosts),
        "current_instance_type": resources.get("current_instance_type", "local"),
        "distribution_hosts": [],
        "distribution_instance_groups": [],
        "framework_module": PYTORCH_TRAINING_MODULE,
        "hosts": hosts,
        "hyperparameters": hyperparameters,
        "input_data_config": data_config,
        "instance_groups": list(groups),
        "instance_groups_dict": groups,
        "is_hetero": False,
        "is_master": current_host == hosts[0],
        "is_modelparallel_enabled": None,
        "is_smddpmprun_installed": False,
        "is_smddprun_installed": False,
        "job_name": job_name,
        "log_level": log_level,
        "master_hostname": hosts[0],
        "module_dir": str(framework.get("sagemaker_submit_directory", "")),
        "module_name": module_name,
        "network_interface_name": resources.get("network_interface_name", "eth0"),
        "num_cpus": cpus,
        "num_gpus": 0,
        "num_neurons": 0,
        "resource_config": resources,
        "topology": [],
        "user_entry_point": entry_point,
        **paths,
    }
    arguments = command_arguments(hyperparameters)
    env = {
        "hosts": hosts,
        "network_interface_name": training_env["network_interface_name"],
        "hps": hyperparameters,
        "user_entry_point": entry_point,
        "framework_params": {},
        "resource_config": resources,
        "input_data_config": data_config,
        "channels": sorted(channels),
        "current_host": current_host,
        "current_instance_type": training_env["current_instance_type"],
        "current_instance_group": group,
        "current_instance_group_hosts": training_env["current_instance_group_hosts"],
        "instance_groups": training_env["instance_groups"],
        "instance_groups_dict": groups,
        "distribution_instance_groups": [],
        "is_hetero": False,
        "module_name": module_name,
        "log_level": log_level,
        "framework_module": PYTORCH_TRAINING_MODULE,
        "num_cpus": cpus,
        "num_gpus": 0,
        "num_neurons": 0,
        "module_dir": training_env["module_dir"],
        "training_env": training_env,
        "user_args": arguments,
        **paths,
    }
    env.update({f"channel_{name}": path for name, path in channels.items()})
    env.update({f"hp_{name}": value for name, value in hyperparameters.items()})
    return {f"SM_{key.upper()}": _text(value) for key, value in env.items()}


# --- serving ------------------------------------------------------------------------------------------------


def inference_environment(entry_point: str = DEFAULT_INFERENCE_ENTRY_POINT, region: str | None = None) -> dict[str, str]:
    """The model's container environment, as the SDK sets it after packing the code into model.tar.gz."""
    env = {
        "SAGEMAKER_PROGRAM": entry_point,
        "SAGEMAKER_SUBMIT_DIRECTORY": SERVING_CODE_DIR,
        "SAGEMAKER_CONTAINER_LOG_LEVEL": str(CONTAINER_LOG_LEVEL),
    }
    if region:
        env["SAGEMAKER_REGION"] = region
    return env


def check_model_archive(archive: Path, entry_point: str = DEFAULT_INFERENCE_ENTRY_POINT, name: str | None = None) -> list[str]:
    """The archive's member names, after checking the serving container can use it: a readable tar.gz with
    `code/<entry point>` and no member that escapes the model folder."""
    shown = name or str(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelArchiveError(f"{shown} is not a readable model.tar.gz: {exc}") from None
    names = [m.name[2:] if m.name.startswith("./") else m.name for m in members]
    for member, member_name in zip(members, names):
        if member_name.startswith("/") or ".." in Path(member_name).parts:
            raise ModelArchiveError(f"{shown}: member {member.name!r} would land outside the model folder")
        if not (member.isfile() or member.isdir()):
            raise ModelArchiveError(f"{shown}: member {member.name!r} is a link or a special file; a model archive "
                                    "holds files and folders only")
    wanted = f"{CODE_DIR}/{entry_point}"
    if wanted not in names:
        raise ModelArchiveError(
            f"{shown} has no {wanted}: the SageMaker PyTorch serving container imports the inference code only "
            f"from {CODE_DIR}/ inside model.tar.gz (SAGEMAKER_PROGRAM={entry_point}); without it, it falls back to "
            "torch.jit.load('model.pt'), which needs a TorchScript model. Retrain the model with this platform "
            "(its training scripts pack code/ into the model) or add the code before serving it")
    return names


def check_transform_settings(*, split_type: str, batch_strategy: str, max_payload_mb: Any) -> None:
    """Refuse what CreateTransformJob refuses, and what the PyTorch container cannot be sent."""
    if split_type not in SPLIT_TYPES:
        raise TransformSettingsError(f"SplitType {split_type!r} is not supported here: use one of {', '.join(SPLIT_TYPES)}")
    if batch_strategy not in BATCH_STRATEGIES:
        raise TransformSettingsError(
            f"BatchStrategy must be one of {', '.join(BATCH_STRATEGIES)}, not {batch_strategy!r}")
    if isinstance(max_payload_mb, bool) or not isinstance(max_payload_mb, int) or not 1 <= max_payload_mb <= MAX_PAYLOAD_MB:
        raise TransformSettingsError(
            f"MaxPayloadInMB must be a whole number of MB from 1 to {MAX_PAYLOAD_MB}, not {max_payload_mb!r}")
