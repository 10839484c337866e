"""The credit pipeline exported as a SageMaker Pipeline, built with the SageMaker SDK's workflow classes
(reference: the batch-scoring pipeline's CI/CD, which upserts the pipeline definition).

Generated from the same configuration the Dagster assets use (the script-mode code in
`credit_assets/model_code`, the framework images, instance type and counts, role, model package group and
the limit policy's thresholds):

    TrainScorecard (Training, metric definitions) -> CheckValidationGini (Condition: validation:gini >=
    MinValidationGini) -> RegisterScorecard (RegisterModel, PendingManualApproval)
                       -> CreateScoringModel (Model) -> ScoreEligibleCustomers (Transform)
                       -> DecideLimits (Processing: credit_assets/pipeline_steps/decide_limits.py)
                  else -> ValidationGiniTooLow (Fail)

The trained `model.tar.gz` already carries `code/inference.py` (the training script packs it), so the
model and the registered package point at it directly with `SAGEMAKER_PROGRAM` and
`SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code`; no repack step is needed. Writing decisions back to the
customers table stays with Dagster's `customer_updates`: it needs the primary database, and its transaction
and audit trail.

Every definition is checked before it is stored or upserted (`check_definition`): each step's arguments
against botocore's request shape of the API SageMaker calls for it, and every `Get` reference against the
parameters, the steps and the properties their Describe* responses have. Upserting refuses definitions that
name `file://` locations or have no execution role.
"""


import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from credit_assets.assets import METRIC_DEFINITIONS, MODEL_CODE_DIR, CreditModelConfig
from credit_assets.policy import LimitPolicy
from resources.artifacts import join_key
from resources.aws_clients import boto_session
from resources.model_registry import PENDING, ModelRegistry
from resources.settings import DEFAULTS
from resources.sagemaker import SageMakerJobs, containers

PIPELINE_CODE = Path(MODEL_CODE_DIR).parent / "pipeline_steps"
POLICY_FILE = Path(MODEL_CODE_DIR).parent / "policy.py"
PROCESSING_FILES = {"decide_limits.py": PIPELINE_CODE / "decide_limits.py", "policy.py": POLICY_FILE}
PROCESSING_ROOT = "/opt/ml/processing"
DEFAULT_MIN_VALIDATION_GINI = 0.6
# shown in a definition exported without SAGEMAKER_ROLE_ARN; such a definition is never upserted
ROLE_NOT_SET = "arn:aws:iam::000000000000:role/SAGEMAKER_ROLE_ARN-is-not-set"
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
# the SDK's own defaults config: no usage telemetry (it would call STS and S3 in background threads)
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


class PipelineExportError(ValueError):
    """A pipeline definition that SageMaker would refuse, or that may not be upserted; says what and where."""


@dataclass(frozen=True)
class CreditPipelineInputs:
    """Everything the credit pipeline's definition is made of."""

    role_arn: str
    training_image: str
    inference_image: str
    processing_image: str
    instance_type: str
    training_instance_count: int
    transform_instance_count: int
    source_uri: str
    processing_code_uri: str
    output_uri: str
    model_package_group: str
    policy: LimitPolicy
    hyperparameters: dict[str, Any]
    region: str = DEFAULTS["aws_region"]
    training_data_uri: str = ""
    eligible_customers_uri: str = ""
    current_limits_uri: str = ""
    min_validation_gini: float = DEFAULT_MIN_VALIDATION_GINI
    max_payload_mb: int = containers.DEFAULT_MAX_PAYLOAD_MB


@contextmanager
def _sdk_environment(region: str) -> Iterator[None]:
    """What the SDK reads from the environment while it builds: it creates boto3 clients when imported, which
    need a region, and checks roles with IAM calls unless told not to (the platform checks the role itself and
    SageMaker checks it again on CreatePipeline, so building stays offline)."""
    wanted = {"SAGEMAKER_VALIDATE_ROLE": "false"}
    if not (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")):
        wanted["AWS_DEFAULT_REGION"] = region
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    # the SDK warns for every name it leaves to the pipeline's run time; that is the point of a definition
    quiet = logging.getLogger("sagemaker")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def sdk_session(region: str, bucket: str = "unused", sagemaker_client=None):
    """A PipelineSession that builds definitions without calling AWS (`sagemaker_client` for upserts;
    `bucket` is where the SDK would put a definition over 100 KB, and nothing else is uploaded)."""
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    return PipelineSession(boto_session=boto_session(region), sagemaker_client=sagemaker_client,
                           default_bucket=bucket, sagemaker_config=SDK_CONFIG)


def build_credit_pipeline(inputs: CreditPipelineInputs, session) -> Any:
    """The credit pipeline as a `sagemaker.mlops.workflow.Pipeline`."""
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import MetricDefinition as SdkMetricDefinition
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    from sagemaker.core.training.configs import Compute, InputData, OutputDataConfig, StoppingCondition
    from sagemaker.core.transformer import Transformer
    from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.mlops.workflow import (
        ConditionStep,
        FailStep,
        ModelStep,
        Pipeline,
        ProcessingStep,
        TrainingStep,
        TransformStep,
    )
    from sagemaker.serve.model_builder import ModelBuilder
    from sagemaker.train.model_trainer import ModelTrainer

    class TransformStepWithInstanceCount(TransformStep):
        """The SDK types the Transformer's instance count as a plain int; the parameter goes in afterwards."""

        def __init__(self, name, step_args, instance_count):
            super().__init__(name=name, step_args=step_args)
            self._instance_count = instance_count

        @property
        def arguments(self):
            request = super().arguments
            request["TransformResources"]["InstanceCount"] = self._instance_count
            return request

    training_data = ParameterString("TrainingDataUri", default_value=inputs.training_data_uri)
    eligible_customers = ParameterString("EligibleCustomersUri", default_value=inputs.eligible_customers_uri)
    current_limits = ParameterString("CurrentLimitsUri", default_value=inputs.current_limits_uri)
    approval_status = ParameterString("ModelApprovalStatus", default_value=PENDING)
    instance_type = ParameterString("InstanceType", default_value=inputs.instance_type)
    training_count = ParameterInteger("TrainingInstanceCount", default_value=inputs.training_instance_count)
    transform_count = ParameterInteger("TransformInstanceCount", default_value=inputs.transform_instance_count)
    min_gini = ParameterFloat("MinValidationGini", default_value=inputs.min_validation_gini)

    trainer = ModelTrainer(
        sagemaker_session=session, role=inputs.role_arn, training_image=inputs.training_image,
        base_job_name="credit-scorecard",
        compute=Compute(instance_type=instance_type, instance_count=training_count, volume_size_in_gb=30),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=3600),
        output_data_config=OutputDataConfig(s3_output_path=f"{inputs.output_uri}/training"),
        # script mode as the framework container reads it; every value JSON-encoded as the SDK sends them
        hyperparameters={**containers.encode_hyperparameters(inputs.hyperparameters),
                         **containers.framework_hyperparameters("train.py", inputs.source_uri, inputs.region)},
    ).with_metric_definitions([SdkMetricDefinition(name=m.name, regex=m.regex) for m in METRIC_DEFINITIONS])
    train = TrainingStep(name="TrainScorecard", step_args=trainer.train(
        input_data_config=[InputData(channel_name="train", data_source=training_data)]))
    model_data = train.properties.ModelArtifacts.S3ModelArtifacts

    def model_builder() -> Any:
        # no source code given: the archive already carries code/, so the SDK adds no repack step
        return ModelBuilder(s3_model_data_url=model_data, image_uri=inputs.inference_image,
                            env_vars=containers.inference_environment(region=inputs.region),
                            role_arn=inputs.role_arn, sagemaker_session=session, dependencies=None)

    register = ModelStep(name="RegisterScorecard", step_args=model_builder().register(
        model_package_group_name=inputs.model_package_group, approval_status=approval_status,
        content_types=["text/csv"], response_types=["text/csv"], transform_instances=[inputs.instance_type],
        # no mldp:model_version: the platform's approval sensor notifies about these packages but does not put
        # them to work (the pipeline scores with its own transform step)
        customer_metadata_properties={"mldp:source": "sagemaker-pipeline"},
    ))
    create_model = ModelStep(name="CreateScoringModel", step_args=model_builder().build())
    transformer = Transformer(
        model_name=create_model.properties.ModelName, instance_count=1, instance_type=inputs.instance_type,
        strategy="MultiRecord", assemble_with="Line", accept="text/csv", max_payload=inputs.max_payload_mb,
        output_path=f"{inputs.output_uri}/scores", sagemaker_session=session,
    )
    score = TransformStepWithInstanceCount(
        "ScoreEligibleCustomers",
        transformer.transform(data=eligible_customers, content_type="text/csv", split_type="Line"),
        transform_count,
    )
    processor = Processor(
        role=inputs.role_arn, image_uri=inputs.processing_image, instance_count=1, instance_type=inputs.instance_type,
        entrypoint=["python3", f"{PROCESSING_ROOT}/input/code/decide_limits.py"], base_job_name="decide-limits",
        env=inputs.policy.to_env(), sagemaker_session=session,
    )

    def processing_input(name: str, uri) -> Any:
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=f"{PROCESSING_ROOT}/input/{name}", s3_data_type="S3Prefix", s3_input_mode="File",
            s3_data_distribution_type="FullyReplicated"))

    decide = ProcessingStep(name="DecideLimits", step_args=processor.run(
        inputs=[processing_input("scores", score.properties.TransformOutput.S3OutputPath),
                processing_input("limits", current_limits),
                processing_input("code", inputs.processing_code_uri)],
        outputs=[ProcessingOutput(output_name="decisions", s3_output=ProcessingS3Output(
            s3_uri=f"{inputs.output_uri}/decisions", local_path=f"{PROCESSING_ROOT}/output",
            s3_upload_mode="EndOfJob"))],
    ))
    too_low = FailStep(name="ValidationGiniTooLow", error_message=Join(
        on=" ", values=["the scorecard's validation Gini is below MinValidationGini", min_gini]))
    gate = ConditionStep(
        name="CheckValidationGini",
        conditions=[ConditionGreaterThanOrEqualTo(left=train.properties.FinalMetricDataList["validation:gini"].Value,
                                                  right=min_gini)],
        if_steps=[register, create_model, score, decide], else_steps=[too_low],
    )
    return Pipeline(
        name="credit-pipeline", sagemaker_session=session, steps=[train, gate], pipeline_experiment_config=None,
        parameters=[training_data, eligible_customers, current_limits, approval_status, instance_type, training_count,
                    transform_count, min_gini],
    )


def credit_pipeline_definition(inputs: CreditPipelineInputs, session=None) -> tuple[Any, dict]:
    """The pipeline and its definition as the SDK writes it, checked (`check_definition`)."""
    with _sdk_environment(inputs.region):
        pipeline = build_credit_pipeline(inputs, session or sdk_session(inputs.region))
        definition = json.loads(pipeline.definition())
    check_definition(definition)
    return pipeline, definition


# --- checking a definition ---------------------------------------------------------------------------------

STEP_OPERATIONS = {  # step type -> (the API SageMaker calls, its Describe* output, the name it generates)
    "Training": ("CreateTrainingJob", "DescribeTrainingJob", "TrainingJobName"),
    "Model": ("CreateModel", "DescribeModel", "ModelName"),
    "Transform": ("CreateTransformJob", "DescribeTransformJob", "TransformJobName"),
    "Processing": ("CreateProcessingJob", "DescribeProcessingJob", "ProcessingJobName"),
    "RegisterModel": ("CreateModelPackage", "DescribeModelPackage", None),
}
EXECUTION_PROPERTIES = {"ExecutionId", "PipelineExecutionId", "PipelineExecutionArn", "PipelineName", "PipelineArn",
                        "StartDateTime", "CurrentDateTime"}
PARAMETER_TYPES = {"String": "string", "Integer": "integer", "Float": "float", "Boolean": "boolean"}
DEFAULT_CHECKS = {"String": lambda v: isinstance(v, str), "Boolean": lambda v: isinstance(v, bool),
                  "Integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "Float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
COMPARISONS = {"Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo"}
# what a reference's value may stand in for, by the botocore type it yields
COMPATIBLE = {"string": {"string"}, "integer": {"integer", "long", "float", "double"}, "long": {"integer", "long"},
              "float": {"float", "double"}, "double": {"float", "double"}, "boolean": {"boolean"}}


def _all_steps(steps: list[dict]) -> Iterator[dict]:
    for step in steps:
        yield step
        arguments = step.get("Arguments") or {}
        if step.get("Type") == "Condition":
            yield from _all_steps(arguments.get("IfSteps", []) + arguments.get("ElseSteps", []))


def _property_path(path: str) -> list[str]:
    """`FinalMetricDataList['validation:gini'].Value` -> ["FinalMetricDataList", "[]", "Value"]."""
    return ["[]" if part.startswith("[") else part for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path)]


def _property_shape(shape, tokens: list[str]):
    """The shape at `tokens` inside `shape`, or None when there is no such property."""
    for token in tokens:
        if token == "[]" and shape.type_name in ("list", "map"):
            shape = shape.member if shape.type_name == "list" else shape.value
        elif token != "[]" and shape.type_name == "structure" and token in shape.members:
            shape = shape.members[token]
        else:
            return None
    return shape


class _DefinitionCheck:
    """One pass over a definition, collecting every problem (see `check_definition`)."""

    def __init__(self, definition: dict) -> None:
        import botocore.session

        self.model = botocore.session.get_session().get_service_model("sagemaker")
        self.problems: list[str] = []
        self.steps = list(_all_steps(definition.get("Steps") or []))
        self.by_name = {step.get("Name"): step for step in self.steps}
        self.parameters: dict[str, str] = {}
        for parameter in definition.get("Parameters") or []:
            name, kind = parameter.get("Name"), parameter.get("Type")
            if name in self.parameters:
                self.problems.append(f"parameter {name!r} is defined twice")
            if kind not in PARAMETER_TYPES:
                self.problems.append(f"parameter {name!r} has an unknown type {kind!r}")
            elif "DefaultValue" in parameter and not DEFAULT_CHECKS[kind](parameter["DefaultValue"]):
                self.problems.append(f"parameter {name!r} ({kind}) has the default {parameter['DefaultValue']!r}")
            self.parameters[name] = PARAMETER_TYPES.get(kind, "")
        self.edges: dict[str, set[str]] = {}

    def reference_type(self, reference: Any, where: str) -> str | None:
        """The botocore type a `Get` yields ("" when any); None, with a problem noted, when it resolves to
        nothing. A reference to another step is an edge of the step graph."""
        if not isinstance(reference, str):
            self.problems.append(f"step {where}: a Get names {reference!r}, not a property path")
            return None
        scope, _, rest = reference.partition(".")
        kind = None
        if scope == "Parameters" and rest in self.parameters:
            kind = self.parameters[rest]
        elif scope == "Execution" and rest in EXECUTION_PROPERTIES:
            kind = "string"
        elif scope == "Steps":
            target, _, path = rest.partition(".")
            step = self.by_name.get(target)
            if step is not None:
                self.edges.setdefault(where, set()).add(target)
                step_type = step.get("Type")
                if step_type == "Condition" and path == "Outcome":
                    kind = "boolean"
                elif path.startswith("PropertyFiles."):
                    files = {f.get("PropertyFileName") for f in step.get("PropertyFiles") or []}
                    kind = "" if path.removeprefix("PropertyFiles.") in files else None
                elif step_type in STEP_OPERATIONS:
                    output = self.model.operation_model(STEP_OPERATIONS[step_type][1]).output_shape
                    found = _property_shape(output, _property_path(path))
                    kind = found.type_name if found is not None else None
        if kind is None:
            self.problems.append(f"step {where}: reference {reference!r} resolves to nothing")
        return kind

    def function_type(self, value: dict, where: str) -> str | None:
        """The type of a `Get`, `Std:Join` or `Std:JsonGet`, its inner references checked."""
        (function, argument), = value.items()
        if function == "Get":
            return self.reference_type(argument, where)
        if function == "Std:Join":
            values = argument.get("Values") if isinstance(argument, dict) else None
            if not isinstance(values, list):
                self.problems.append(f"step {where}: Std:Join needs a list of Values")
            self.references(values or [], where)
            return "string"
        self.references(argument, where)  # Std:JsonGet: a value read from a file at run time, of any type
        return ""

    def references(self, value: Any, where: str) -> None:
        if _is_function(value):
            self.function_type(value, where)
        elif isinstance(value, dict):
            for item in value.values():
                self.references(item, where)
        elif isinstance(value, list):
            for item in value:
                self.references(item, where)

    def resolved(self, value: Any, shape, where: str) -> Any:
        """`value` with each function replaced by a placeholder of the type `shape` wants (a function whose
        value cannot be that type is a problem)."""
        if _is_function(value):
            kind = self.function_type(value, where)
            if kind and shape.type_name not in COMPATIBLE.get(kind, {kind}):
                self.problems.append(f"step {where}: {value} gives a {kind} where {shape.name} wants a {shape.type_name}")
            return {"integer": 1, "long": 1, "float": 1.0, "double": 1.0, "boolean": True}.get(shape.type_name, "x")
        if shape.type_name == "structure" and isinstance(value, dict):
            return {k: self.resolved(v, shape.members[k], where) if k in shape.members else v for k, v in value.items()}
        if shape.type_name == "list" and isinstance(value, list):
            return [self.resolved(v, shape.member, where) for v in value]
        if shape.type_name == "map" and isinstance(value, dict):
            return {k: self.resolved(v, shape.value, where) for k, v in value.items()}
        return value

    def condition(self, condition: Any, where: str) -> None:
        kind = condition.get("Type") if isinstance(condition, dict) else None
        needed = {**{c: ("LeftValue", "RightValue") for c in COMPARISONS}, "In": ("QueryValue", "Values"),
                  "Not": ("Condition",), "Or": ("Conditions",)}.get(kind)
        if needed is None:
            self.problems.append(f"step {where}: unknown condition type {kind!r}")
            return
        missing = [field for field in needed if field not in condition]
        if missing:
            self.problems.append(f"step {where}: a {kind} condition needs {', '.join(missing)}")
        if kind == "Not":
            self.condition(condition.get("Condition"), where)
        elif kind == "Or":
            for inner in condition.get("Conditions") or []:
                self.condition(inner, where)
        else:
            self.references([condition.get(field) for field in needed], where)

    def step(self, step: dict) -> None:
        from botocore.validate import ParamValidator

        kind, name = step.get("Type"), step.get("Name")
        if not isinstance(name, str) or not name:
            self.problems.append(f"a {kind} step has no Name")
            return
        arguments = step.get("Arguments") or {}
        for dependency in step.get("DependsOn") or []:
            if dependency not in self.by_name:
                self.problems.append(f"step {name} depends on {dependency!r}, which is not a step")
            self.edges.setdefault(name, set()).add(dependency)
        if kind in STEP_OPERATIONS:
            operation, _describe, generated = STEP_OPERATIONS[kind]
            shape = self.model.operation_model(operation).input_shape
            request = self.resolved({**({generated: "generated-by-the-pipeline"} if generated else {}), **arguments},
                                    shape, name)
            report = ParamValidator().validate(request, shape)
            if report.has_errors():
                self.problems.append(f"step {name} ({kind}) is not a valid {operation} request:\n"
                                     f"{report.generate_report()}")
        elif kind == "Condition":
            if not arguments.get("Conditions") or not (arguments.get("IfSteps") or arguments.get("ElseSteps")):
                self.problems.append(f"step {name} (Condition) needs Conditions and IfSteps or ElseSteps")
            for condition in arguments.get("Conditions") or []:  # its branches are steps of their own
                self.condition(condition, name)
        elif kind == "Fail":
            if "ErrorMessage" not in arguments:
                self.problems.append(f"step {name} (Fail) has no ErrorMessage")
            self.references(arguments, name)
        else:
            self.problems.append(f"step {name} has a type this check does not know: {kind!r}")

    def cycles(self) -> None:
        state: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "open":
                self.problems.append(f"the steps wait on each other: {' -> '.join(path[path.index(name):] + [name])}")
                return
            state[name] = "open"
            for after in sorted(self.edges.get(name, ())):
                if after in self.by_name:
                    visit(after, path + [name])
            state[name] = "done"

        for name in sorted(self.edges):
            visit(name, [])

    def run(self) -> list[str]:
        if len(self.by_name) != len(self.steps):
            self.problems.append("step names are not unique")
        for step in self.steps:
            self.step(step)
        self.cycles()
        return self.problems


def _is_function(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("Get", "Std:Join", "Std:JsonGet")


def check_definition(definition: dict) -> None:
    """What SageMaker would refuse: every step's arguments against botocore's request shape of its API (each
    reference standing in for a value of the type it yields), every `Get` against what exists (parameters,
    steps and the properties of their Describe* responses, condition outcomes, property files, execution
    variables), parameter defaults against their types, conditions, `DependsOn`, and steps that wait on
    each other."""
    problems = _DefinitionCheck(definition).run()
    if problems:
        raise PipelineExportError("the pipeline definition is not one SageMaker would accept:\n- " + "\n- ".join(problems))


def check_upsertable(definition: dict, role_arn: str | None) -> None:
    """Refuse what would only fail inside SageMaker: no execution role, or locations SageMaker cannot read."""
    if not role_arn or role_arn == ROLE_NOT_SET or not _ROLE_ARN.match(role_arn):
        raise PipelineExportError(
            "cannot upsert the pipeline: it needs an IAM execution role ARN in SAGEMAKER_ROLE_ARN "
            f"(arn:aws:iam::<account>:role/<name>), not {role_arn or 'nothing'!r}")
    local = sorted({value for value in _strings(definition) if value.startswith("file://")})
    if local:
        raise PipelineExportError(
            f"cannot upsert the pipeline: it names {len(local)} location(s) on this machine, which SageMaker cannot "
            f"read, e.g. {local[0]}; set ARTIFACTS_URI=s3://bucket/prefix and export again")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# --- export --------------------------------------------------------------------------------------------------


def processing_bundle(directory: Path) -> list[Path]:
    """The DecideLimits step's code in one folder: its script with the project's policy module beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(source, directory / name)) for name, source in PROCESSING_FILES.items()]


def publish_code(sagemaker: SageMakerJobs, prefix: str) -> tuple[str, str]:
    """Upload the script-mode source (sourcedir.tar.gz) and the processing code; returns their URIs."""
    source_uri = sagemaker.upload_source(join_key(prefix, "sourcedir.tar.gz"), Path(MODEL_CODE_DIR))
    with tempfile.TemporaryDirectory(prefix="processing-") as folder:  # the folder the DecideLimits step runs from
        processing_bundle(Path(folder))
        sagemaker.artifacts.upload_dir(Path(folder), join_key(prefix, "processing"))
    return source_uri, sagemaker.artifacts.uri(join_key(prefix, "processing"))


class CreditPipelineExportConfig(dg.Config):
    upsert: bool | None = None  # None: upsert with SAGEMAKER_BACKEND=aws; False: only write the definition
    training_data_uri: str = ""
    eligible_customers_uri: str = ""
    current_limits_uri: str = ""
    min_validation_gini: float = DEFAULT_MIN_VALIDATION_GINI


def pipeline_inputs(config: CreditPipelineExportConfig, sagemaker: SageMakerJobs, registry: ModelRegistry,
                    prefix: str) -> CreditPipelineInputs:
    source_uri, processing_uri = publish_code(sagemaker, join_key(prefix, "code"))
    return CreditPipelineInputs(
        role_arn=sagemaker.role_arn or ROLE_NOT_SET, training_image=sagemaker.image_uri("training"),
        inference_image=sagemaker.image_uri("inference"), processing_image=sagemaker.image_uri("training"),
        instance_type=sagemaker.instance_type, training_instance_count=sagemaker.training_instance_count,
        transform_instance_count=sagemaker.transform_instance_count, source_uri=source_uri,
        processing_code_uri=processing_uri, output_uri=sagemaker.artifacts.uri(join_key(prefix, "runs")),
        model_package_group=registry.group_for("credit"), policy=LimitPolicy(),
        hyperparameters=CreditModelConfig().model_dump(), region=sagemaker.region_name,
        training_data_uri=config.training_data_uri, eligible_customers_uri=config.eligible_customers_uri,
        current_limits_uri=config.current_limits_uri, min_validation_gini=config.min_validation_gini,
    )


def upsert_pipeline(pipeline: Any, client, region: str, role_arn: str, description: str) -> str:
    """Create the SageMaker Pipeline, or update it when it exists, with the SDK; 'created' or 'updated'."""
    from botocore.exceptions import ClientError

    try:
        client.describe_pipeline(PipelineName=pipeline.name)
        outcome = "updated"
    except ClientError:
        outcome = "created"
    with _sdk_environment(region):
        pipeline.upsert(role_arn=role_arn, description=description[:3072])
    return outcome


def export_credit_pipeline(config: CreditPipelineExportConfig, sagemaker: SageMakerJobs,
                           registry: ModelRegistry) -> dict:
    """Build the definition from the platform's configuration, check it, store it, and upsert it when asked."""
    artifacts = sagemaker.artifacts
    name = f"credit-limit-increase-{registry.env}"
    prefix = f"sagemaker/pipelines/{name}"
    given = {"ARTIFACTS_URI": artifacts.uri(), "training_data_uri": config.training_data_uri,
             "eligible_customers_uri": config.eligible_customers_uri, "current_limits_uri": config.current_limits_uri}
    not_s3 = {setting: uri for setting, uri in given.items() if uri and not uri.startswith("s3://")}
    if not_s3:  # the steps read code and data from S3, and the SDK would try to upload anything else
        raise PipelineExportError(
            "a SageMaker Pipeline reads its code and data from S3: "
            + "; ".join(f"{setting} is {uri}" for setting, uri in not_s3.items())
            + ". Set ARTIFACTS_URI=s3://bucket/prefix (and s3:// inputs) to export it")
    inputs = pipeline_inputs(config, sagemaker, registry, prefix)
    upsert = config.upsert if config.upsert is not None else sagemaker.backend == "aws"
    client = sagemaker.client() if upsert else None
    # the SDK puts definitions over 100 KB in its default bucket: the artifacts bucket
    bucket = artifacts.uri().removeprefix("s3://").split("/")[0]
    session = sdk_session(inputs.region, bucket=bucket, sagemaker_client=client)
    pipeline, definition = credit_pipeline_definition(inputs, session)
    pipeline.name = name
    if upsert:
        check_upsertable(definition, sagemaker.role_arn)
    definition_uri = artifacts.write_json(join_key(prefix, "definition.json"), definition)
    outcome = "exported"
    if upsert:
        outcome = upsert_pipeline(pipeline, client, inputs.region, inputs.role_arn,
                                  "Credit-limit-increase batch scoring, exported from the ml-data-platform code location")
    return {"pipeline": name, "outcome": outcome, "definition_uri": definition_uri,
            "steps": [step["Name"] for step in _all_steps(definition["Steps"])]}


@dg.op
def export_credit_sagemaker_pipeline(context: dg.OpExecutionContext, config: CreditPipelineExportConfig,
                                     sagemaker: SageMakerJobs, registry: ModelRegistry) -> None:
    result = export_credit_pipeline(config, sagemaker, registry)
    context.log.info(f"SageMaker Pipeline {result['pipeline']} {result['outcome']}; definition at {result['definition_uri']}")


@dg.job(description="Export the credit pipeline as a SageMaker Pipeline definition (built with the SageMaker SDK, "
                    "checked against botocore's request shapes) and upsert it.")
def credit_sagemaker_pipeline_job():
    export_credit_sagemaker_pipeline()
