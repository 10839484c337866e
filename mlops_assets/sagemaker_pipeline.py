"""The credit pipeline exported as a SageMaker Pipeline (reference: the batch-scoring pipeline's CI/CD,
which upserts the pipeline definition with create_pipeline / update_pipeline).

Generated from the same configuration the Dagster assets use (the script-mode code in
``credit_assets/model_code``, the framework images, instance type, role, model package group and the
limit policy's thresholds):

    TrainScorecard (Training) -> RegisterScorecard (RegisterModel, PendingManualApproval)
                              -> CreateScoringModel (Model) -> ScoreEligibleCustomers (Transform)
                              -> DecideLimits (Processing: credit_assets/pipeline_steps/decide_limits.py)

Writing decisions back to the customers table stays with Dagster's `customer_updates`: it needs the
primary database, and its transaction and audit trail.
"""

import json
import shutil
from pathlib import Path

import dagster as dg

from credit_assets.assets import MODEL_CODE_DIR, CreditModelConfig, LimitPolicyConfig
from credit_assets.policy import LimitPolicy
from resources.artifacts import join_key
from resources.model_registry import PENDING, ModelRegistry
from resources.sagemaker import SageMakerResource

PIPELINE_CODE = Path(MODEL_CODE_DIR).parent / "pipeline_steps"
POLICY_FILE = Path(MODEL_CODE_DIR).parent / "policy.py"
SCHEMA_VERSION = "2020-12-01"


def get(path: str) -> dict:
    """A pipeline property reference (``{"Get": "Steps.X.Y"}`` / ``{"Get": "Parameters.Z"}``)."""
    return {"Get": path}


def credit_pipeline_definition(*, role_arn: str, training_image: str, inference_image: str, processing_image: str,
                               instance_type: str, source_uri: str, processing_code_uri: str, output_uri: str,
                               model_package_group: str, policy: LimitPolicy, hyperparameters: dict,
                               training_data_uri: str = "", eligible_customers_uri: str = "",
                               current_limits_uri: str = "") -> dict:
    """The SageMaker Pipeline definition (JSON-able) of the credit pipeline."""
    framework = {"sagemaker_program": json.dumps("train.py"), "sagemaker_submit_directory": json.dumps(source_uri)}
    return {
        "Version": SCHEMA_VERSION,
        "Metadata": {"GeneratedBy": "ml-data-platform credit pipeline export"},
        "Parameters": [
            {"Name": "TrainingDataUri", "Type": "String", "DefaultValue": training_data_uri},
            {"Name": "EligibleCustomersUri", "Type": "String", "DefaultValue": eligible_customers_uri},
            {"Name": "CurrentLimitsUri", "Type": "String", "DefaultValue": current_limits_uri},
            {"Name": "ModelApprovalStatus", "Type": "String", "DefaultValue": PENDING},
            {"Name": "InstanceType", "Type": "String", "DefaultValue": instance_type},
        ],
        "Steps": [
            {
                "Name": "TrainScorecard",
                "Type": "Training",
                "Arguments": {
                    "AlgorithmSpecification": {"TrainingImage": training_image, "TrainingInputMode": "File"},
                    "RoleArn": role_arn,
                    "HyperParameters": {**{k: json.dumps(str(v)) for k, v in hyperparameters.items()}, **framework},
                    "InputDataConfig": [{
                        "ChannelName": "train",
                        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": get("Parameters.TrainingDataUri"),
                                                        "S3DataDistributionType": "FullyReplicated"}},
                    }],
                    "OutputDataConfig": {"S3OutputPath": f"{output_uri}/training"},
                    "ResourceConfig": {"InstanceType": get("Parameters.InstanceType"), "InstanceCount": 1, "VolumeSizeInGB": 30},
                    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                },
            },
            {
                "Name": "RegisterScorecard",
                "Type": "RegisterModel",
                "Arguments": {
                    "ModelPackageGroupName": model_package_group,
                    "ModelApprovalStatus": get("Parameters.ModelApprovalStatus"),
                    # no mldp:model_version: the platform's approval sensor notifies but does not put these to
                    # work (the pipeline scores with its own transform step)
                    "CustomerMetadataProperties": {"mldp:source": "sagemaker-pipeline",
                                                   "mldp:pipeline_execution": {"Get": "Execution.PipelineExecutionId"}},
                    "InferenceSpecification": {
                        "Containers": [{"Image": inference_image,
                                        "ModelDataUrl": get("Steps.TrainScorecard.ModelArtifacts.S3ModelArtifacts")}],
                        "SupportedContentTypes": ["text/csv"],
                        "SupportedResponseMIMETypes": ["text/csv"],
                        "SupportedTransformInstanceTypes": [instance_type],
                    },
                },
            },
            {
                "Name": "CreateScoringModel",
                "Type": "Model",
                "Arguments": {
                    "ExecutionRoleArn": role_arn,
                    "PrimaryContainer": {
                        "Image": inference_image,
                        "ModelDataUrl": get("Steps.TrainScorecard.ModelArtifacts.S3ModelArtifacts"),
                        "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": source_uri},
                    },
                },
            },
            {
                "Name": "ScoreEligibleCustomers",
                "Type": "Transform",
                "Arguments": {
                    "ModelName": get("Steps.CreateScoringModel.ModelName"),
                    "BatchStrategy": "MultiRecord",
                    "MaxPayloadInMB": 6,
                    "TransformInput": {
                        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": get("Parameters.EligibleCustomersUri")}},
                        "ContentType": "text/csv",
                        "SplitType": "Line",
                    },
                    "TransformOutput": {"S3OutputPath": f"{output_uri}/scores", "Accept": "text/csv", "AssembleWith": "Line"},
                    "TransformResources": {"InstanceType": get("Parameters.InstanceType"), "InstanceCount": 1},
                },
            },
            {
                "Name": "DecideLimits",
                "Type": "Processing",
                "Arguments": {
                    "ProcessingResources": {"ClusterConfig": {"InstanceType": get("Parameters.InstanceType"),
                                                              "InstanceCount": 1, "VolumeSizeInGB": 30}},
                    "AppSpecification": {
                        "ImageUri": processing_image,
                        "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/decide_limits.py"],
                    },
                    "RoleArn": role_arn,
                    "Environment": {f"POLICY_{k.upper()}": str(v) for k, v in policy.as_dict().items()},
                    "ProcessingInputs": [
                        _processing_input("scores", get("Steps.ScoreEligibleCustomers.TransformOutput.S3OutputPath"),
                                          "/opt/ml/processing/input/scores"),
                        _processing_input("limits", get("Parameters.CurrentLimitsUri"), "/opt/ml/processing/input/limits"),
                        _processing_input("code", processing_code_uri, "/opt/ml/processing/input/code"),
                    ],
                    "ProcessingOutputConfig": {"Outputs": [{
                        "OutputName": "decisions",
                        "S3Output": {"S3Uri": f"{output_uri}/decisions", "LocalPath": "/opt/ml/processing/output",
                                     "S3UploadMode": "EndOfJob"},
                    }]},
                    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                },
                "DependsOn": ["ScoreEligibleCustomers"],
            },
        ],
    }


def _processing_input(name: str, uri, local_path: str) -> dict:
    return {"InputName": name, "AppManaged": False,
            "S3Input": {"S3Uri": uri, "LocalPath": local_path, "S3DataType": "S3Prefix", "S3InputMode": "File",
                        "S3DataDistributionType": "FullyReplicated"}}


PROCESSING_FILES = {"decide_limits.py": PIPELINE_CODE / "decide_limits.py", "policy.py": POLICY_FILE}


def processing_bundle(directory: Path) -> list[Path]:
    """The DecideLimits step's code in one folder: its script with the project's policy module beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(source, directory / name)) for name, source in PROCESSING_FILES.items()]


def publish_code(sagemaker: SageMakerResource, prefix: str) -> tuple[str, str]:
    """Upload the script-mode source (sourcedir.tar.gz) and the processing code; returns their URIs."""
    source_uri = sagemaker.upload_source(join_key(prefix, "sourcedir.tar.gz"), Path(MODEL_CODE_DIR))
    for name, source in PROCESSING_FILES.items():
        sagemaker.artifacts.upload_file(join_key(prefix, "processing", name), source)
    return source_uri, sagemaker.artifacts.uri(join_key(prefix, "processing"))


class CreditPipelineExportConfig(dg.Config):
    upsert: bool | None = None  # None: upsert with SAGEMAKER_BACKEND=aws; False: only write the definition
    training_data_uri: str = ""
    eligible_customers_uri: str = ""
    current_limits_uri: str = ""


def export_credit_pipeline(config: CreditPipelineExportConfig, sagemaker: SageMakerResource,
                           registry: ModelRegistry) -> dict:
    """Build the definition from the platform's configuration, store it, and upsert it when asked."""
    artifacts = sagemaker.artifacts
    name = f"credit-limit-increase-{registry.env}"
    prefix = f"sagemaker/pipelines/{name}"
    source_uri, processing_uri = publish_code(sagemaker, join_key(prefix, "code"))
    definition = credit_pipeline_definition(
        role_arn=sagemaker.role_arn or "", training_image=sagemaker.image_uri("training"),
        inference_image=sagemaker.image_uri("inference"), processing_image=sagemaker.image_uri("training"),
        instance_type=sagemaker.instance_type, source_uri=source_uri, processing_code_uri=processing_uri,
        output_uri=artifacts.uri(join_key(prefix, "runs")), model_package_group=registry.group_for("credit"),
        policy=LimitPolicy(**LimitPolicyConfig().model_dump()), hyperparameters=CreditModelConfig().model_dump(),
        training_data_uri=config.training_data_uri, eligible_customers_uri=config.eligible_customers_uri,
        current_limits_uri=config.current_limits_uri,
    )
    definition_uri = artifacts.write_json(join_key(prefix, "definition.json"), definition)
    outcome = "exported"
    if config.upsert if config.upsert is not None else sagemaker.backend == "aws":
        outcome = sagemaker.upsert_pipeline(
            name, definition, "Credit-limit-increase batch scoring, exported from the ml-data-platform code location")
    return {"pipeline": name, "outcome": outcome, "definition_uri": definition_uri, "steps": len(definition["Steps"])}


@dg.op
def export_credit_sagemaker_pipeline(context: dg.OpExecutionContext, config: CreditPipelineExportConfig,
                                     sagemaker: SageMakerResource, registry: ModelRegistry) -> None:
    result = export_credit_pipeline(config, sagemaker, registry)
    context.log.info(f"SageMaker Pipeline {result['pipeline']} {result['outcome']}; definition at {result['definition_uri']}")


@dg.job(description="Export the credit pipeline as a SageMaker Pipeline definition and upsert it.")
def credit_sagemaker_pipeline_job():
    export_credit_sagemaker_pipeline()
