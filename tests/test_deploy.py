"""The deploy path (``deploy/``): the template lints clean and deploys to moto's server through `mldp deploy
up`, the platform's AWS backends work against the stack's resources, `mldp deploy exports` refuses a stack
that is not complete, and the Dockerfile and the production Dagster instance pass their own checks.

moto's CloudFormation skips some resource types (Firehose delivery streams, Secrets Manager secrets, queue
policies, SNS subscriptions: "No Moto CloudFormation support"); the test checks that exactly those are
missing and creates them itself, as the template defines them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from platform_cli import deploy
from resources.settings import PROJECT_ROOT, PlatformSettings

TEMPLATE = PROJECT_ROOT / "deploy" / "cloudformation" / "platform.yaml"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed in {BIN}: it is in the test extra (pip install -e .[test])"
    return str(path)


def test_the_template_lints_clean():
    result = subprocess.run([tool("cfn-lint"), "--include-checks", "I", "--", str(TEMPLATE)], capture_output=True,
                            text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_dockerfile_lints_clean():
    result = subprocess.run([tool("hadolint"), str(PROJECT_ROOT / "deploy" / "Dockerfile")], capture_output=True,
                            text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_a_broken_template_or_dockerfile_fails_the_linters(tmp_path):
    """The checks above can fail: a reference to a missing resource, and a Dockerfile running as root."""
    broken = TEMPLATE.read_text().replace("!Ref EventStream", "!Ref EventStreamMissing", 1)
    (tmp_path / "t.yaml").write_text(broken)
    assert subprocess.run([tool("cfn-lint"), str(tmp_path / "t.yaml")], capture_output=True).returncode != 0
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\nRUN apt-get install curl\n")
    assert subprocess.run([tool("hadolint"), str(tmp_path / "Dockerfile")], capture_output=True).returncode != 0


def test_the_production_instance_is_valid_dagster_config(tmp_path, monkeypatch):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.workspace.config_schema import ensure_workspace_config
    from dagster._serdes.config_class import class_from_code_pointer

    for name, value in {"DAGSTER_PG_URL": "postgresql://u@db.example:5432/mldp", "AWS_REGION": "eu-west-1",
                        "DAGSTER_RUN_TASK_DEFINITION": "mldp-dev-run", "DAGSTER_COMPUTE_LOGS_BUCKET": "b",
                        "DAGSTER_COMPUTE_LOGS_PREFIX": "dagster/compute-logs", "CODE_SERVER_HOST": "code"}.items():
        monkeypatch.setenv(name, value)
    source = PROJECT_ROOT / "deploy" / "dagster.ecs.yaml"
    shutil.copy(source, tmp_path / "dagster.yaml")
    config, _custom = dagster_instance_config(str(tmp_path))  # what DagsterInstance itself checks
    raw = yaml.safe_load(source.read_text())
    assert raw["run_launcher"]["class"] == "EcsRunLauncher" and "postgres" in raw["storage"]
    for section in ("run_launcher", "run_coordinator", "compute_logs"):
        klass = class_from_code_pointer(raw[section]["module"], raw[section]["class"])
        processed = process_config(resolve_to_config_type(klass.config_type()), raw[section].get("config", {}))
        assert processed.success, (section, [e.message for e in processed.errors])
    assert config["run_monitoring"]["enabled"] is True
    for other in ("dagster.postgres.yaml", "dagster.sqlite.yaml"):  # the same pools everywhere
        assert yaml.safe_load((source.parent / other).read_text())["concurrency"]["pools"] == raw["concurrency"]["pools"]
    ensure_workspace_config(yaml.safe_load((source.parent / "workspace.ecs.yaml").read_text()), str(source.parent))
    broken = dict(raw, run_launcher={**raw["run_launcher"], "config": {"task_definition": 12}})
    klass = class_from_code_pointer(raw["run_launcher"]["module"], raw["run_launcher"]["class"])
    assert not process_config(resolve_to_config_type(klass.config_type()), broken["run_launcher"]["config"]).success


# --- the stack on moto ----------------------------------------------------------------------------------

MOTO_SKIPS = {"DeliveryStreamName", "ReadonlySecretArn"}  # outputs of the resource types moto does not create


@pytest.fixture
def aws_env(moto, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return moto


def test_exports_are_refused_for_a_stack_that_is_missing_or_not_complete(aws_env, boto_client, capsys):
    from platform_cli.main import main

    with pytest.raises(SystemExit, match="stack 'nothing-here'"):
        main(["deploy", "exports", "--stack", "nothing-here"])
    # moto creates or refuses a stack at once: a deleted one stands in for any status but complete
    cloudformation = boto_client("cloudformation")
    stack_id = cloudformation.create_stack(StackName="gone", TemplateBody=json.dumps(
        {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}, "Outputs": {"Q": {"Value": {"Ref": "Queue"}}}}))["StackId"]
    cloudformation.delete_stack(StackName="gone")
    with pytest.raises(SystemExit, match="stack '.*gone.*' is DELETE_COMPLETE: exports are printed only for a stack in "
                                         "CREATE_COMPLETE or UPDATE_COMPLETE"):
        main(["deploy", "exports", "--stack", stack_id])
    # a complete stack of another template: refused, naming the outputs it lacks
    cloudformation.create_stack(StackName="other", TemplateBody=json.dumps(
        {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}, "Outputs": {"Q": {"Value": {"Ref": "Queue"}}}}))
    with pytest.raises(SystemExit, match="has no output.s. AwsRegion, MldpEnv, ArtifactsUri"):
        main(["deploy", "exports", "--stack", "other"])
    assert "export" not in capsys.readouterr().out


def test_the_stack_deploys_to_moto_and_the_platform_runs_on_its_resources(aws_env, boto_client, app_db, tmp_path,
                                                                         monkeypatch):
    from platform_cli.main import main

    s3 = boto_client("s3")
    s3.create_bucket(Bucket="mldp-code")
    with pytest.raises(SystemExit) as refused:  # up: build, upload, create, wait, then print the exports
        main(["deploy", "up", "--stack", "mldp-dev", "--code-bucket", "mldp-code", "--out", str(tmp_path / "build"),
              "--param", "Environment=dev"])
    cloudformation = boto_client("cloudformation")
    stack = cloudformation.describe_stacks(StackName="mldp-dev")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    # the exports refuse a stack without every setting: here only the outputs of what moto skipped are missing
    assert set(deploy.OUTPUT_VARIABLES) - set(outputs) == MOTO_SKIPS & set(deploy.OUTPUT_VARIABLES)
    assert "has no output(s) ReadonlySecretArn" in str(refused.value)
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)["Resources"]

    # the Lambda: its package uploaded by `up`, the handler and runtime the package was built for
    function = boto_client("lambda").get_function(FunctionName=outputs["EnrichmentFunctionName"])["Configuration"]
    assert function["Handler"] == "recsys_assets.lambda_handler.lambda_handler" and function["Runtime"] == "python3.12"
    code_key = template["EnrichmentFunction"]["Properties"]["Code"]
    assert code_key == {"S3Bucket": {"Ref": "LambdaCodeBucket"}, "S3Key": {"Ref": "LambdaCodeKey"}}
    [package] = s3.list_objects_v2(Bucket="mldp-code", Prefix="lambda/")["Contents"]
    assert package["Key"].endswith(".zip") and package["Size"] > 1_000_000

    # what moto skipped, created as the template defines it
    secret_name = f"mldp/dev/readonly-{uuid.uuid4().hex[:6]}"
    from psycopg.conninfo import conninfo_to_dict

    from resources.readonly import provision_readonly_role

    provision_readonly_role(app_db, "mldp_readonly")
    params = conninfo_to_dict(app_db.conninfo())
    secret_arn = boto_client("secretsmanager").create_secret(Name=secret_name, SecretString=json.dumps(
        {"username": "mldp_readonly", "password": "generated", "host": params["host"], "port": 5432,
         "dbname": params["dbname"]}))["ARN"]
    assert template["ReadonlyDatabaseSecret"]["Properties"]["GenerateSecretString"]["SecretStringTemplate"]
    firehose = template["DeliveryStream"]["Properties"]["ExtendedS3DestinationConfiguration"]
    assert firehose["Prefix"].endswith("!{timestamp:yyyy/MM/dd/HH}/")  # the lab's YYYY/MM/DD/HH layout
    outputs.update(ReadonlySecretArn=secret_arn, DeliveryStreamName="created-by-the-test")

    lines = deploy.export_lines(outputs)
    exported = dict(line[len("export "):].split("=", 1) for line in lines if line.startswith("export "))
    exported = {name: value.strip("'") for name, value in exported.items()}
    assert exported["MLDP_ENV"] == "dev" and exported["ARTIFACTS_URI"].startswith("s3://")
    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SAGEMAKER_BACKEND", "local")  # moto records SageMaker jobs but runs none
    monkeypatch.setenv("DATABASE_URL", app_db.conninfo())
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    settings = PlatformSettings.from_env()
    assert settings.stream_backend == "kinesis" and settings.registry_backend == "sagemaker"

    from resources.settings import open_resources

    with open_resources(settings) as resources:
        # artifacts on the stack's bucket
        resources.artifacts.write_json("deploy-check/hello.json", {"ok": True})
        assert resources.artifacts.read_json("deploy-check/hello.json") == {"ok": True}
        assert resources.artifacts.uri().startswith(f"s3://{outputs['ArtifactsBucketName']}/")
        # events on the stack's Kinesis stream, read back by the stream resource
        resources.events.put([json.dumps({"session_id": f"s{i}"}).encode() for i in range(3)])
        records, _after = resources.events.read({}, max_records=10)
        assert [json.loads(r.data)["session_id"] for r in records] == ["s0", "s1", "s2"]
        # notifications on the stack's topic, delivered to a subscriber
        sqs = boto_client("sqs")
        inbox = sqs.create_queue(QueueName="approvals-inbox")["QueueUrl"]
        inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        boto_client("sns").subscribe(TopicArn=outputs["SnsTopicArn"], Protocol="sqs", Endpoint=inbox_arn)
        resources.notifier.publish("[SageMaker] deploy check", "hello from the stack")
        [delivered] = sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=2)["Messages"]
        assert json.loads(delivered["Body"])["Message"] == "hello from the stack"
        # registry events: SageMaker's state change through the stack's EventBridge rule into its queue
        registry = resources.registry
        package = registry.register("credit", model_version="deploy-1", model_data_url="s3://b/m/model.tar.gz",
                                    metrics={"validation_gini": 0.8}, data_fingerprint="f", description="check")
        events = boto_client("events")
        detail = {"ModelPackageGroupName": package.group, "ModelPackageVersion": package.version,
                  "ModelPackageArn": package.arn, "ModelApprovalStatus": "PendingManualApproval",
                  "ModelPackageStatus": "Completed", "CreationTime": 1764000000000}
        other = {**detail, "ModelPackageGroupName": "credit-prod-models"}  # another environment: not routed
        for item in (detail, other):
            events.put_events(Entries=[{"Source": "aws.sagemaker", "Detail": json.dumps(item), "Resources": [package.arn],
                                        "DetailType": "SageMaker Model Package State Change"}])
        changes = registry.changes(None)  # what the registry sensor reads on its tick
        assert [(c.package.arn, c.status) for c in changes] == [(package.arn, "PendingManualApproval")]
        assert changes[0].event["detail"]["ModelPackageGroupName"] == "credit-dev-models"
        # the read-only database user from Secrets Manager
        assert resources.readonly_db.query("select 1 as one")["one"].tolist() == [1]


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, ...) read as their long forms."""


def _intrinsic(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        return {name: value.split(".", 1) if suffix == "GetAtt" else value}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


_CfnLoader.add_multi_constructor("!", _intrinsic)


