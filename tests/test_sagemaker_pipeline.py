"""The credit pipeline exported as a SageMaker Pipeline: built with the SageMaker SDK, checked against botocore's
request shapes, upserted against moto's server; and the DecideLimits processing step run under its contract."""

import copy
import io
import json
import subprocess
import sys
import tarfile

import pandas as pd
import pytest

from credit_assets.policy import LimitPolicy, decide_limits
from mlops_assets.sagemaker_pipeline import (
    CreditPipelineExportConfig,
    CreditPipelineInputs,
    PipelineExportError,
    check_definition,
    check_upsertable,
    credit_pipeline_definition,
    export_credit_pipeline,
    processing_bundle,
)
from resources.model_registry import LocalModelRegistry
from resources.sagemaker import AwsSageMakerJobs, LocalSageMakerJobs, containers

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"


@pytest.fixture(scope="module")
def definition() -> dict:
    inputs = CreditPipelineInputs(
        role_arn=ROLE, training_image="train:1", inference_image="infer:1", processing_image="train:1",
        instance_type="ml.m5.xlarge", training_instance_count=1, transform_instance_count=3,
        source_uri="s3://b/code/sourcedir.tar.gz", processing_code_uri="s3://b/code/processing",
        output_uri="s3://b/runs", model_package_group="credit-dev-models", policy=LimitPolicy(approve_min_score=660),
        hyperparameters={"pdo": 20.0, "l2": 0.001, "seed": 7}, min_validation_gini=0.55)
    return credit_pipeline_definition(inputs)[1]


def steps_of(definition: dict) -> dict:
    steps = {}
    for step in definition["Steps"]:
        steps[step["Name"]] = step
        for nested in step["Arguments"].get("IfSteps", []) + step["Arguments"].get("ElseSteps", []):
            steps[nested["Name"]] = nested
    return steps


def test_the_sdk_builds_the_pipeline_with_a_gate_and_no_repack(definition):
    steps = steps_of(definition)
    assert [(s["Name"], s["Type"]) for s in definition["Steps"]] == [("TrainScorecard", "Training"),
                                                                  ("CheckValidationGini", "Condition")]
    gate = steps["CheckValidationGini"]["Arguments"]
    assert [s["Name"] for s in gate["IfSteps"]] == ["RegisterScorecard", "CreateScoringModel", "ScoreEligibleCustomers",
                                                    "DecideLimits"]
    assert [s["Name"] for s in gate["ElseSteps"]] == ["ValidationGiniTooLow"]
    assert gate["Conditions"] == [{"Type": "GreaterThanOrEqualTo", "RightValue": {"Get": "Parameters.MinValidationGini"},
                                   "LeftValue": {"Get": "Steps.TrainScorecard.FinalMetricDataList['validation:gini'].Value"}}]
    training = steps["TrainScorecard"]["Arguments"]
    assert [m["Name"] for m in training["AlgorithmSpecification"]["MetricDefinitions"]] == [
        "validation:auc", "validation:gini", "train:auc"]
    # hyperparameters JSON-encoded exactly as the platform's own jobs send them
    assert training["HyperParameters"] == {
        **containers.encode_hyperparameters({"pdo": 20.0, "l2": 0.001, "seed": 7}),
        **containers.framework_hyperparameters("train.py", "s3://b/code/sourcedir.tar.gz", "us-east-1")}
    assert training["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.TrainingInstanceCount"}
    artifacts = {"Get": "Steps.TrainScorecard.ModelArtifacts.S3ModelArtifacts"}
    register = steps["RegisterScorecard"]["Arguments"]
    assert register["ModelPackageGroupName"] == "credit-dev-models"
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    [container] = register["InferenceSpecification"]["Containers"]
    # the trained model.tar.gz is served as it is: its code/ is named, no repack step rewrites it
    assert container["ModelDataUrl"] == artifacts and container["Environment"] == containers.inference_environment(
        region="us-east-1")
    model = steps["CreateScoringModel"]["Arguments"]["PrimaryContainer"]
    assert model["ModelDataUrl"] == artifacts and model["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert not any(step["Type"] == "Training" and name != "TrainScorecard" for name, step in steps.items())
    score = steps["ScoreEligibleCustomers"]["Arguments"]
    assert score["ModelName"] == {"Get": "Steps.CreateScoringModel.ModelName"}
    assert score["TransformResources"]["InstanceCount"] == {"Get": "Parameters.TransformInstanceCount"}
    assert (score["BatchStrategy"], score["MaxPayloadInMB"], score["TransformInput"]["SplitType"]) == ("MultiRecord", 6, "Line")
    decide = steps["DecideLimits"]["Arguments"]
    assert decide["Environment"]["POLICY_APPROVE_MIN_SCORE"] == "660"
    assert decide["ProcessingInputs"][0]["S3Input"]["S3Uri"] == {
        "Get": "Steps.ScoreEligibleCustomers.TransformOutput.S3OutputPath"}
    parameters = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert parameters["TransformInstanceCount"] == 3 and parameters["MinValidationGini"] == 0.55
    assert parameters["ModelApprovalStatus"] == "PendingManualApproval"


def broken(definition: dict, change) -> dict:
    copied = copy.deepcopy(definition)
    change(steps_of(copied))
    return copied


@pytest.mark.parametrize("change, problem", [
    (lambda s: s["ScoreEligibleCustomers"]["Arguments"].__setitem__("MaxPayloadInMB", "six"),
     r"step ScoreEligibleCustomers \(Transform\) is not a valid CreateTransformJob request:.*MaxPayloadInMB"),
    (lambda s: s["TrainScorecard"]["Arguments"].pop("RoleArn"),
     r"step TrainScorecard \(Training\) is not a valid CreateTrainingJob request:.*RoleArn"),
    (lambda s: s["CreateScoringModel"]["Arguments"]["PrimaryContainer"].__setitem__("Enviroment", {}),
     r"step CreateScoringModel \(Model\) is not a valid CreateModel request:.*Enviroment"),
    (lambda s: s["RegisterScorecard"]["Arguments"]["InferenceSpecification"]["Containers"][0].__setitem__(
        "ModelDataUrl", {"Get": "Steps.TrainScorecard.ModelArtifact.S3ModelArtifacts"}),
     r"step RegisterScorecard: reference 'Steps.TrainScorecard.ModelArtifact.S3ModelArtifacts' resolves to nothing"),
    (lambda s: s["ScoreEligibleCustomers"]["Arguments"].__setitem__("ModelName", {"Get": "Steps.CreateModel.ModelName"}),
     r"reference 'Steps.CreateModel.ModelName' resolves to nothing"),
    (lambda s: s["DecideLimits"]["Arguments"]["ProcessingInputs"][1]["S3Input"].__setitem__(
        "S3Uri", {"Get": "Parameters.CurrentLimitUri"}), r"reference 'Parameters.CurrentLimitUri' resolves to nothing"),
    (lambda s: s["DecideLimits"].__setitem__("DependsOn", ["NoSuchStep"]),
     r"step DecideLimits depends on 'NoSuchStep', which is not a step"),
    (lambda s: s["CreateScoringModel"]["Arguments"]["PrimaryContainer"].__setitem__(
        "ModelDataUrl", {"Get": "Steps.ScoreEligibleCustomers.TransformOutput.S3OutputPath"}),
     r"the steps wait on each other: CreateScoringModel -> ScoreEligibleCustomers -> CreateScoringModel"),
    (lambda s: s["TrainScorecard"]["Arguments"]["OutputDataConfig"].__setitem__(
        "S3OutputPath", {"Get": "Steps.TrainScorecard.ModelArtifacts.S3ModelArtifacts"}),
     r"the steps wait on each other: TrainScorecard -> TrainScorecard"),
    (lambda s: s["CheckValidationGini"]["Arguments"]["Conditions"][0].__setitem__("Type", "GreaterThanOrEqual"),
     r"step CheckValidationGini: unknown condition type 'GreaterThanOrEqual'"),
    (lambda s: s["CheckValidationGini"]["Arguments"]["Conditions"][0].pop("LeftValue"),
     r"a GreaterThanOrEqualTo condition needs LeftValue"),
    (lambda s: s["ScoreEligibleCustomers"]["Arguments"]["TransformResources"].__setitem__(
        "InstanceCount", {"Get": "Parameters.InstanceType"}),
     r"step ScoreEligibleCustomers: \{'Get': 'Parameters.InstanceType'\} gives a string where .* wants a integer"),
    (lambda s: s["ScoreEligibleCustomers"]["Arguments"].__setitem__(
        "ModelName", {"Get": "Steps.TrainScorecard.ModelArtifacts"}), r"gives a structure where .* wants a string"),
    (lambda s: s["ValidationGiniTooLow"]["Arguments"]["ErrorMessage"]["Std:Join"].__setitem__("Values", "x"),
     r"step ValidationGiniTooLow: Std:Join needs a list of Values"),
    (lambda s: s["CreateScoringModel"]["Arguments"]["PrimaryContainer"].__setitem__("ModelDataUrl", {"Get": {"x": 1}}),
     r"step CreateScoringModel: a Get names \{'x': 1\}, not a property path"),
    (lambda s: s["DecideLimits"].pop("Name"), r"a Processing step has no Name"),
])
def test_a_definition_sagemaker_would_refuse_is_refused_here(definition, change, problem):
    check_definition(definition)
    with pytest.raises(PipelineExportError, match=f"(?s){problem}"):
        check_definition(broken(definition, change))


def test_parameters_and_what_the_sdk_also_writes_are_checked(definition):
    doubled = copy.deepcopy(definition)
    doubled["Parameters"] += [{"Name": "InstanceType", "Type": "String", "DefaultValue": "ml.c5.xlarge"},
                              {"Name": "Retries", "Type": "Integer", "DefaultValue": "three"}]
    with pytest.raises(PipelineExportError, match=r"(?s)parameter 'InstanceType' is defined twice.*parameter "
                                                  r"'Retries' \(Integer\) has the default 'three'"):
        check_definition(doubled)
    # the SDK's own forms are accepted: a condition's outcome and a property file read with Std:JsonGet
    valid = copy.deepcopy(definition)
    steps = steps_of(valid)
    steps["DecideLimits"]["PropertyFiles"] = [{"PropertyFileName": "Report", "OutputName": "decisions",
                                               "FilePath": "report.json"}]
    steps["ValidationGiniTooLow"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"] += [
        {"Get": "Steps.CheckValidationGini.Outcome"},
        {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.DecideLimits.PropertyFiles.Report"}, "Path": "approved"}}]
    check_definition(valid)


def test_local_locations_and_a_missing_role_are_refused(local_artifacts, s3_artifacts, app_db, moto, boto_client,
                                                       definition):
    registry = LocalModelRegistry(db=app_db, env="dev")
    local = LocalSageMakerJobs(artifacts=local_artifacts, role_arn=ROLE, training_image="train:1", inference_image="infer:1")
    with pytest.raises(PipelineExportError, match=r"a SageMaker Pipeline reads its code and data from S3: ARTIFACTS_URI "
                                                  r"is file://.*Set ARTIFACTS_URI=s3://bucket/prefix"):
        export_credit_pipeline(CreditPipelineExportConfig(upsert=True), local, registry)
    no_role = AwsSageMakerJobs(artifacts=s3_artifacts, endpoint_url=moto, training_image="train:1", inference_image="i:1")
    with pytest.raises(PipelineExportError, match="it needs an IAM execution role ARN in SAGEMAKER_ROLE_ARN"):
        export_credit_pipeline(CreditPipelineExportConfig(upsert=True), no_role, registry)
    with pytest.raises(PipelineExportError, match="eligible_customers_uri is /data/eligible"):
        export_credit_pipeline(CreditPipelineExportConfig(eligible_customers_uri="/data/eligible"), no_role, registry)
    assert boto_client("sagemaker").list_pipelines()["PipelineSummaries"] == []
    # without upserting, the definition is still written for review, naming the missing role plainly
    result = export_credit_pipeline(CreditPipelineExportConfig(upsert=False), no_role, registry)
    stored = s3_artifacts.read_json("sagemaker/pipelines/credit-limit-increase-dev/definition.json")
    assert result["outcome"] == "exported" and "SAGEMAKER_ROLE_ARN-is-not-set" in json.dumps(stored)
    with pytest.raises(PipelineExportError, match="SageMaker cannot read, e.g. file:///tmp/x"):
        check_upsertable(broken(definition, lambda s: s["TrainScorecard"]["Arguments"]["OutputDataConfig"].__setitem__(
            "S3OutputPath", "file:///tmp/x")), ROLE)


def test_export_uploads_the_code_and_upserts_with_the_sdk(moto, s3_artifacts, app_db, boto_client):
    sagemaker = AwsSageMakerJobs(artifacts=s3_artifacts, endpoint_url=moto, role_arn=ROLE,
                                 training_image="train:1", inference_image="infer:1", transform_instance_count=2)
    registry = LocalModelRegistry(db=app_db, env="qa")
    result = export_credit_pipeline(CreditPipelineExportConfig(training_data_uri="s3://b/train"), sagemaker, registry)
    assert (result["pipeline"], result["outcome"]) == ("credit-limit-increase-qa", "created")
    assert result["steps"] == ["TrainScorecard", "CheckValidationGini", "RegisterScorecard", "CreateScoringModel",
                               "ScoreEligibleCustomers", "DecideLimits", "ValidationGiniTooLow"]
    prefix = "sagemaker/pipelines/credit-limit-increase-qa/code"
    with tarfile.open(fileobj=io.BytesIO(s3_artifacts.read_bytes(f"{prefix}/sourcedir.tar.gz"))) as tar:
        assert {"train.py", "inference.py", "scorecard.py", "requirements.txt"} <= set(tar.getnames())
    assert s3_artifacts.exists(f"{prefix}/processing/decide_limits.py") and s3_artifacts.exists(f"{prefix}/processing/policy.py")
    described = boto_client("sagemaker").describe_pipeline(PipelineName="credit-limit-increase-qa")
    stored = json.loads(described["PipelineDefinition"])
    assert stored == s3_artifacts.read_json("sagemaker/pipelines/credit-limit-increase-qa/definition.json")
    assert described["RoleArn"] == ROLE
    parameters = {p["Name"]: p.get("DefaultValue") for p in stored["Parameters"]}
    assert parameters["TrainingDataUri"] == "s3://b/train" and parameters["TransformInstanceCount"] == 2
    assert steps_of(stored)["RegisterScorecard"]["Arguments"]["ModelPackageGroupName"] == "credit-qa-models"
    again = export_credit_pipeline(CreditPipelineExportConfig(min_validation_gini=0.7), sagemaker, registry)
    assert again["outcome"] == "updated"
    stored = json.loads(boto_client("sagemaker").describe_pipeline(
        PipelineName="credit-limit-increase-qa")["PipelineDefinition"])
    assert {p["Name"]: p.get("DefaultValue") for p in stored["Parameters"]}["MinValidationGini"] == 0.7


def test_the_decide_limits_step_applies_the_project_policy(tmp_path):
    code = tmp_path / "code"
    processing_bundle(code)
    scores, limits, output = tmp_path / "scores", tmp_path / "limits", tmp_path / "out"
    scores.mkdir()
    limits.mkdir()
    (scores / "part-00000.csv.out").write_text("1,0.01,700\n2,0.2,600\n3,0.001,655\n")
    pd.DataFrame({"customer_id": [1, 2, 3], "current_score": [610, 620, 630],
                  "current_limit": [4_000, 9_000, 19_000]}).to_csv(limits / "limits.csv", index=False)
    completed = subprocess.run(
        [sys.executable, str(code / "decide_limits.py"), "--scores", str(scores), "--limits", str(limits),
         "--output", str(output)], capture_output=True, text=True, env={"POLICY_APPROVE_MIN_SCORE": "650", "PATH": ""})
    assert completed.returncode == 0, completed.stderr
    produced = pd.read_csv(output / "decisions.csv").sort_values("customer_id").reset_index(drop=True)
    expected = decide_limits(pd.DataFrame({"customer_id": [1, 2, 3], "probability": [0.01, 0.2, 0.001],
                                           "new_score": [700, 600, 655], "current_score": [610, 620, 630],
                                           "current_limit": [4_000, 9_000, 19_000]}), LimitPolicy())
    assert produced[["customer_id", "decision", "new_limit", "reason"]].equals(
        expected[["customer_id", "decision", "new_limit", "reason"]])
    assert produced["new_limit"].tolist() == [6_000, 9_000, 20_000]

    # a threshold other than the default: the environment really sets the policy (customer 3, score 655, declined)
    stricter = subprocess.run(
        [sys.executable, str(code / "decide_limits.py"), "--scores", str(scores), "--limits", str(limits),
         "--output", str(tmp_path / "strict")], capture_output=True, text=True,
        env={"POLICY_APPROVE_MIN_SCORE": "660", "PATH": ""})
    assert stricter.returncode == 0, stricter.stderr
    strict = pd.read_csv(tmp_path / "strict" / "decisions.csv").sort_values("customer_id").reset_index(drop=True)
    assert strict["new_limit"].tolist() == [6_000, 9_000, 19_000]
    assert strict.loc[2, "decision"] == "DECLINED" and "< 660" in strict.loc[2, "reason"]
