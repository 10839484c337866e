"""The credit pipeline exported as a SageMaker Pipeline: its definition, the upsert against moto's server,
and the DecideLimits processing step run locally under its processing contract."""

import io
import json
import subprocess
import sys
import tarfile

import pandas as pd

from credit_assets.policy import LimitPolicy, decide_limits
from mlops_assets.sagemaker_pipeline import (
    CreditPipelineExportConfig,
    credit_pipeline_definition,
    export_credit_pipeline,
    processing_bundle,
)
from resources.model_registry import LocalModelRegistry
from resources.sagemaker import SageMakerResource

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"


def definition(**overrides):
    arguments = dict(role_arn=ROLE, training_image="train:1", inference_image="infer:1", processing_image="train:1",
                     instance_type="ml.m5.xlarge", source_uri="s3://b/code/sourcedir.tar.gz",
                     processing_code_uri="s3://b/code/processing", output_uri="s3://b/runs",
                     model_package_group="credit-dev-models", policy=LimitPolicy(approve_min_score=660),
                     hyperparameters={"pdo": 20.0, "l2": 0.001})
    return credit_pipeline_definition(**{**arguments, **overrides})


def test_definition_has_the_steps_wired_by_property_references():
    body = definition()
    steps = {step["Name"]: step for step in body["Steps"]}
    assert [(s["Name"], s["Type"]) for s in body["Steps"]] == [
        ("TrainScorecard", "Training"), ("RegisterScorecard", "RegisterModel"), ("CreateScoringModel", "Model"),
        ("ScoreEligibleCustomers", "Transform"), ("DecideLimits", "Processing")]
    artifacts = {"Get": "Steps.TrainScorecard.ModelArtifacts.S3ModelArtifacts"}
    register = steps["RegisterScorecard"]["Arguments"]
    assert register["ModelPackageGroupName"] == "credit-dev-models"
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert register["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == artifacts
    assert steps["CreateScoringModel"]["Arguments"]["PrimaryContainer"]["ModelDataUrl"] == artifacts
    assert steps["ScoreEligibleCustomers"]["Arguments"]["ModelName"] == {"Get": "Steps.CreateScoringModel.ModelName"}
    training = steps["TrainScorecard"]["Arguments"]
    assert json.loads(training["HyperParameters"]["sagemaker_program"]) == "train.py"
    assert json.loads(training["HyperParameters"]["pdo"]) == "20.0"
    decide = steps["DecideLimits"]["Arguments"]
    assert decide["Environment"]["POLICY_APPROVE_MIN_SCORE"] == "660"
    assert decide["ProcessingInputs"][0]["S3Input"]["S3Uri"] == {
        "Get": "Steps.ScoreEligibleCustomers.TransformOutput.S3OutputPath"}
    assert {p["Name"] for p in body["Parameters"]} == {"TrainingDataUri", "EligibleCustomersUri", "CurrentLimitsUri",
                                                       "ModelApprovalStatus", "InstanceType"}


def test_upsert_creates_then_updates(moto, boto_client, local_artifacts):
    client = boto_client("sagemaker")
    sagemaker = SageMakerResource(artifacts=local_artifacts, backend="aws", endpoint_url=moto, role_arn=ROLE)
    assert sagemaker.upsert_pipeline("credit-limit-increase-dev", definition(), "credit scoring") == "created"
    changed = definition(policy=LimitPolicy(max_limit=25_000))
    assert sagemaker.upsert_pipeline("credit-limit-increase-dev", changed, "credit scoring") == "updated"
    described = client.describe_pipeline(PipelineName="credit-limit-increase-dev")
    stored = json.loads(described["PipelineDefinition"])
    assert stored["Steps"][-1]["Arguments"]["Environment"]["POLICY_MAX_LIMIT"] == "25000"
    assert described["RoleArn"] == ROLE


def test_export_uploads_the_code_and_upserts(moto, s3_artifacts, app_db, boto_client):
    sagemaker = SageMakerResource(artifacts=s3_artifacts, backend="aws", endpoint_url=moto, role_arn=ROLE,
                                  training_image="train:1", inference_image="infer:1")
    registry = LocalModelRegistry(db=app_db, env="qa")
    result = export_credit_pipeline(CreditPipelineExportConfig(training_data_uri="s3://b/train"), sagemaker, registry)
    assert (result["pipeline"], result["outcome"], result["steps"]) == ("credit-limit-increase-qa", "created", 5)
    prefix = "sagemaker/pipelines/credit-limit-increase-qa/code"
    with tarfile.open(fileobj=io.BytesIO(s3_artifacts.read_bytes(f"{prefix}/sourcedir.tar.gz"))) as tar:
        assert {"train.py", "inference.py", "scorecard.py", "requirements.txt"} <= set(tar.getnames())
    assert s3_artifacts.exists(f"{prefix}/processing/decide_limits.py") and s3_artifacts.exists(f"{prefix}/processing/policy.py")
    stored = json.loads(boto_client("sagemaker").describe_pipeline(PipelineName="credit-limit-increase-qa")["PipelineDefinition"])
    assert stored["Parameters"][0]["DefaultValue"] == "s3://b/train"
    assert stored["Steps"][1]["Arguments"]["ModelPackageGroupName"] == "credit-qa-models"


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
