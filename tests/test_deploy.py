"""The deploy path (`deploy/`): the template lints clean and deploys to moto's server through `mldp deploy
up`, the platform's AWS backends work against the stack's resources, `mldp deploy exports` refuses a stack
that is not complete, and the Dockerfile and the production Dagster instance pass their own checks.

moto's CloudFormation skips some resource types (Firehose delivery streams, Secrets Manager secrets, queue
policies, SNS subscriptions: "No Moto CloudFormation support"); the test checks that exactly those are
missing and creates them itself, as the template defines them.
"""

from __future__ import annotations

import base64
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


@pytest.mark.parametrize("params, message", [
    (["Environment=Bad_Env"], r"Environment='Bad_Env': 1-31 lower-case letters, digits and single hyphens"),
    (["Environment=dev-"], r"Environment='dev-'"),
    (["CreateDatabase=true"], r"DatabaseNeedsNetwork: CreateDatabase=true needs VpcId"),
    (["CreateServices=true", "VpcId=vpc-0123456789abcdef0", "SubnetIds=subnet-0123456789abcdef0"],
     r"ServicesNeedDatabase: CreateServices=true needs a database"),
    (["CreateReadReplica=true"], r"ReplicaNeedsDatabase: CreateReadReplica=true needs CreateDatabase=true"),
    (["KinesisShardCount=0"], r"KinesisShardCount='0': a whole number of shards from 1 to 500"),
    (["SubnetIds=subnet-1 subnet-2"], r"SubnetIds='subnet-1 subnet-2': empty, or comma-separated subnet ids"),
    (["Enviroment=dev"], r"Enviroment: the template has no such parameter"),
    (["DagsterUiUrl=javascript:alert(1)"], r"DagsterUiUrl='javascript:alert\(1\)': empty, or the Dagster UI's address"),
    (["EtlEngine=spark"], r"EtlEngine='spark': inprocess .* or glue"),
    (["EtlEngine=glue"], r"GlueNeedsSource: EtlEngine=glue needs SourceDatabaseSecretArn"),
    (["GlueWorkers=1"], r"GlueWorkers='1': a whole number of Glue workers from 2 to 299"),
    (["EtlEngine=glue", "VpcId=vpc-0123456789abcdef0",
      "SourceDatabaseSecretArn=arn:aws:secretsmanager:us-east-1:123456789012:secret:src-AbCdEf",
      "GlueSourceSecretArn=arn:aws:secretsmanager:us-east-1:123456789012:secret:src-login-AbCdEf"],
     r"GlueNetworkNeedsZone: EtlEngine=glue with VpcId needs GlueAvailabilityZone"),
])
def test_parameters_that_cannot_work_are_refused_before_anything_is_made(params, message, tmp_path, aws_env):
    from platform_cli.main import main

    args = ["deploy", "up", "--stack", "s", "--code-bucket", "no-such-bucket", "--out", str(tmp_path)]
    with pytest.raises(deploy.ParametersRefused, match=message) as refused:
        main(args + [f"--param={p}" for p in params])
    assert "nothing was built, uploaded or created" in str(refused.value)
    assert not list(tmp_path.iterdir())  # no package was built


def test_the_parameter_check_agrees_with_the_template():
    template = deploy.load_template()
    values = deploy.check_parameters(template, {"LambdaCodeBucket": "b-1", "LambdaCodeKey": "lambda/x.zip"})
    assert values["Environment"] == "dev" and values["CreateDatabase"] == "false"
    full = {"LambdaCodeBucket": "b-1", "LambdaCodeKey": "lambda/x.zip", "CreateDatabase": "true",
            "CreateReadReplica": "true", "CreateServices": "true", "VpcId": "vpc-0123456789abcdef0",
            "SubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1", "Environment": "prod-eu"}
    assert deploy.check_parameters(template, full)["CreateServices"] == "true"
    with pytest.raises(deploy.ParametersRefused, match="OneDatabase"):
        deploy.check_parameters(template, {**full, "ExistingDatabaseSecretArn":
                                           "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"})


@pytest.fixture(scope="module")
def stack(moto_server, app_db, tmp_path_factory):
    """The template deployed to moto's server by `mldp deploy up` (state reset first, kept for the module's
    later tests), with what moto skips created as the template defines it; returns the settings the stack
    gives (`mldp deploy exports`) and where things are."""
    import boto3
    import urllib.request

    from platform_cli.main import main

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    client = lambda service: boto3.client(service, region_name="us-east-1", endpoint_url=moto_server)  # noqa: E731
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", moto_server)
        env.setenv("AWS_REGION", "us-east-1")
        client("s3").create_bucket(Bucket="mldp-code")
        with pytest.raises(SystemExit) as refused:  # up: build, upload, create, wait, then print the exports
            main(["deploy", "up", "--stack", "mldp-dev", "--code-bucket", "mldp-code", "--param", "Environment=dev",
                  "--out", str(tmp_path_factory.mktemp("lambda-build"))])
    described = client("cloudformation").describe_stacks(StackName="mldp-dev")["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
    # moto skips the read-only secret's type: made as the template makes it (username and a generated
    # password), then `mldp deploy readonly-user` creates the role and completes the secret
    secret_arn = client("secretsmanager").create_secret(Name="mldp/dev/readonly-database", SecretString=json.dumps(
        {"username": "mldp_readonly", "password": "Generated0Password0Of0Thirty0Two"}))["ARN"]
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("AWS_ENDPOINT_URL", moto_server), ("DATABASE_URL", app_db.conninfo()),
                            ("READONLY_DATABASE_SECRET_ID", secret_arn)):
            env.setenv(name, value)
        assert main(["deploy", "readonly-user"]) == 0
    complete = {**outputs, "ReadonlySecretArn": secret_arn}
    exported = {}
    for line in deploy.export_lines(complete):
        if line.startswith("export "):
            name, value = line[len("export "):].split("=", 1)
            exported[name] = value.strip("'")
    return {"status": described["StackStatus"], "outputs": outputs, "refused": str(refused.value), "env": exported,
            "client": client, "secret_arn": secret_arn}


def test_the_stack_deploys_to_moto_and_exports_its_settings(stack):
    assert stack["status"] == "CREATE_COMPLETE"
    # the exports refuse a stack without every setting: on moto only the outputs of what it skipped are missing
    assert set(deploy.OUTPUT_VARIABLES) - set(stack["outputs"]) == MOTO_SKIPS & set(deploy.OUTPUT_VARIABLES)
    assert "has no output(s) ReadonlySecretArn" in stack["refused"]
    env = stack["env"]
    assert env["MLDP_ENV"] == "dev" and env["ARTIFACTS_URI"] == f"s3://{stack['outputs']['ArtifactsBucketName']}/platform"
    assert env["READONLY_DATABASE_SECRET_ID"] == stack["secret_arn"]

    assert {env[k] for k in deploy.BACKENDS} == {"kinesis", "sns", "sagemaker", "aws"}
    template = deploy.load_template()["Resources"]
    client = stack["client"]
    # the Lambda: its package uploaded by `up`, the handler, runtime and settings the package was built for
    function = client("lambda").get_function(FunctionName=stack["outputs"]["EnrichmentFunctionName"])["Configuration"]
    assert function["Handler"] == "recsys_assets.lambda_handler.lambda_handler" and function["Runtime"] == "python3.12"
    assert function["Environment"]["Variables"]["ARTIFACTS_URI"] == env["ARTIFACTS_URI"]
    assert template["EnrichmentFunction"]["Properties"]["Code"] == {"S3Bucket": {"Ref": "LambdaCodeBucket"},
                                                                     "S3Key": {"Ref": "LambdaCodeKey"}}
    [package] = client("s3").list_objects_v2(Bucket="mldp-code", Prefix="lambda/")["Contents"]
    assert package["Key"].endswith(".zip") and package["Size"] > 1_000_000
    # the package `up` built and uploaded is the runtime's (python3.12 wheels), under Lambda's unzipped limit
    import io
    import zipfile

    zipped = client("s3").get_object(Bucket="mldp-code", Key=package["Key"])["Body"].read()
    with zipfile.ZipFile(io.BytesIO(zipped)) as bundle:
        names = bundle.namelist()
        unzipped = sum(info.file_size for info in bundle.infolist())
    assert any(n.startswith("numpy/_core/_multiarray_umath.cpython-312-") for n in names)
    assert "recsys_assets/lambda_handler.py" in names and unzipped < 250 * 1024 * 1024
    # what moto skipped is in the template as the platform needs it
    firehose = template["DeliveryStream"]["Properties"]["ExtendedS3DestinationConfiguration"]
    assert firehose["Prefix"].endswith("!{timestamp:yyyy/MM/dd/HH}/")  # the lab's YYYY/MM/DD/HH layout
    assert template["ReadonlyDatabaseSecret"]["Properties"]["GenerateSecretString"]["GenerateStringKey"] == "password"
    rule = client("events").describe_rule(Name="mldp-dev-model-package-state-change")
    pattern = json.loads(rule["EventPattern"])
    assert pattern["detail"]["ModelPackageGroupName"] == ["credit-dev-models", "recsys-dev-models"]


def test_the_readonly_user_is_made_from_the_stacks_secret(stack, app_db):
    secret = json.loads(stack["client"]("secretsmanager").get_secret_value(SecretId=stack["secret_arn"])["SecretString"])
    assert secret["username"] == "mldp_readonly" and secret["password"] == "Generated0Password0Of0Thirty0Two"
    assert secret["dbname"] == app_db.database and secret["host"] and secret["port"] == 5432  # completed
    with app_db.connect() as conn:
        [verifier] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'mldp_readonly'").fetchone()
        [settings] = conn.execute("SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                                  "WHERE r.rolname = 'mldp_readonly'").fetchone()
    assert verifier.startswith("SCRAM-SHA-256$") and "Generated0" not in verifier  # only the verifier was sent
    assert "default_transaction_read_only=on" in settings


@pytest.fixture
def on_the_stack(stack, app_db, tmp_path, monkeypatch, datasets_dir):
    """The platform's settings from the stack's exports, with the application database of the test (the stack
    made none: CreateDatabase=false) and SageMaker jobs run by the local backend (moto records jobs, runs none)."""
    for name, value in stack["env"].items():
        monkeypatch.setenv(name, value)
    for name in ("READONLY_DATABASE_URL", "SOURCE_DATABASE_URL", "NOTIFY_WEBHOOK_URL", "DAGSTER_PG_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack["client"]("s3").meta.endpoint_url)
    monkeypatch.setenv("SAGEMAKER_BACKEND", "local")
    monkeypatch.setenv("MODEL_VERSION_POLICY", "approved")
    monkeypatch.setenv("DATABASE_URL", app_db.conninfo())
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATASETS_DIR", str(datasets_dir))
    settings = PlatformSettings.from_env()
    assert settings.stream_backend == "kinesis" and settings.registry_backend == "sagemaker"
    assert settings.notifier_backend == "sns" and settings.readonly_secret_id == stack["secret_arn"]
    return settings


def test_the_platforms_backends_run_on_the_stacks_resources(stack, on_the_stack):
    from resources.settings import open_resources

    outputs = stack["outputs"]
    with open_resources(on_the_stack) as resources:
        resources.artifacts.write_json("deploy-check/hello.json", {"ok": True})
        assert resources.artifacts.read_json("deploy-check/hello.json") == {"ok": True}
        assert resources.artifacts.uri().startswith(f"s3://{outputs['ArtifactsBucketName']}/")
        assert resources.readonly_db.query("select 1 as one")["one"].tolist() == [1]  # the secret's user


class StackEvents:
    """What the platform sees of the stack's messaging: SageMaker's registry events put on EventBridge (moto's
    SageMaker does not emit them; the stack's rule routes them to its queue), and the approvals topic read
    through a subscribed queue."""

    def __init__(self, client, topic_arn: str) -> None:
        self.events, self.sqs = client("events"), client("sqs")
        self.inbox = self.sqs.create_queue(QueueName=f"inbox-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)

    def emit(self, package, status: str, reason: str | None = None) -> None:
        detail = {"ModelPackageGroupName": package.group, "ModelPackageVersion": package.version,
                  "ModelPackageArn": package.arn, "ModelApprovalStatus": status, "ModelPackageStatus": "Completed",
                  "CreationTime": 1764000000000, **({"ApprovalDescription": reason} if reason else {})}
        response = self.events.put_events(Entries=[{"Source": "aws.sagemaker", "Resources": [package.arn],
                                                    "DetailType": "SageMaker Model Package State Change",
                                                    "Detail": json.dumps(detail)}])
        assert response["FailedEntryCount"] == 0

    def notifications(self) -> list[str]:
        received = self.sqs.receive_message(QueueUrl=self.inbox, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = received.get("Messages", [])
        for message in messages:
            self.sqs.delete_message(QueueUrl=self.inbox, ReceiptHandle=message["ReceiptHandle"])
        return [json.loads(m["Body"])["Subject"] for m in messages]


def test_the_workflows_run_against_the_stack(stack, on_the_stack, app_db, datasets_dir):
    """Credit, recommender, streaming and ML ops with every backend on the stack: models trained (by the local
    backend) into its bucket, registered in SageMaker's registry, their state changes through its EventBridge
    rule and queue to the registry sensor, notified on its topic, put to work on approval; session events
    through its Kinesis stream, enriched hour by hour into its bucket, and by the Lambda handler."""
    import dagster as dg

    import credit_assets
    import mlops_assets
    import recsys_assets
    from credit_assets import customer_store, population
    from mlops_assets.notifications import model_registry_sensor
    from recsys_assets import lambda_handler, ratings_etl
    from recsys_assets.session_events import make_events
    from recsys_assets.sensors import session_events_sensor
    from resources.settings import build_resources, open_resources

    defs = dg.Definitions.merge(credit_assets.defs, recsys_assets.defs, mlops_assets.defs,
                                dg.Definitions(resources=build_resources(on_the_stack)))
    instance = dg.DagsterInstance.ephemeral()
    events = StackEvents(stack["client"], stack["outputs"]["SnsTopicArn"])
    with open_resources(on_the_stack) as resources:
        registry, cursor = resources.registry, {"registry": None}

        def run(job: str, **kwargs) -> dg.ExecuteInProcessResult:
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, **kwargs)
            assert result.success, job
            return result

        def tick() -> list[dg.RunRequest]:
            with dg.build_sensor_context(cursor=cursor["registry"], instance=instance,
                                         resources={"registry": registry, "notifier": resources.notifier}) as context:
                result = model_registry_sensor(context)
            cursor["registry"] = result.cursor
            return list(result.run_requests or [])

        def materialized(result, asset: str) -> dict:
            [*_, event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
            return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}

        def trained_then_approved(pipeline: str, training: dg.ExecuteInProcessResult, asset: str) -> dg.RunRequest:
            version = materialized(training, asset)["model_version"]
            package = registry.find(pipeline, version)
            events.emit(package, "PendingManualApproval")
            assert tick() == [] and events.notifications() == [f"[SageMaker] New Model Registered in {package.group}"]
            registry.approve(package.group, package.version, "reviewed")
            events.emit(package, "Approved", "reviewed")
            [request] = tick()
            assert events.notifications() == [f"[SageMaker] New Model Approved in {package.group}"]
            assert request.tags["model_version"] == version
            return request

        # credit: train -> registered -> approved -> scoring batch written back
        with app_db.connect(autocommit=True) as conn:
            customer_store.load_customers(conn, population.customers(600), replace=True)
        request = trained_then_approved("credit", run("credit_training_job"), "credit_model")
        scored = run(request.job_name, run_config=request.run_config, tags=request.tags)
        updates = materialized(scored, "customer_updates")
        assert updates["updated"] > 0
        assert resources.artifacts.exists(f"credit/batches/{updates['batch_id']}/results.json")
        assert resources.artifacts.uri().startswith("s3://")

        # recommender: ETL -> model -> registered -> approved -> embeddings loaded
        training = run("recsys_training_job", run_config={"ops": {"recsys_model": {"config": {"epochs": 40}}}})
        request = trained_then_approved("recsys", training, "recsys_model")
        loaded = run(request.job_name, run_config=request.run_config, tags=request.tags)
        version = materialized(loaded, "item_embeddings")["version"]
        assert resources.pgvector.active_version("item_emb") == version

        # streaming: events through the stack's Kinesis stream, archived and enriched per hour in its bucket
        products, customers = ratings_etl.dimension_frames(resources.source_db)
        payloads = make_events(products["productcode"].tolist(), customers, 40, broken_fraction=0.1, seed=5)
        resources.events.put(payloads)
        with dg.build_sensor_context(instance=instance, resources={"events": resources.events,
                                                                   "artifacts": resources.artifacts}) as context:
            archived = session_events_sensor(context)
        for request in archived.dynamic_partitions_requests:  # as the sensor daemon applies them
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        enriched = dead = 0
        for hour in archived.run_requests:
            result = run("recommendations_job", partition_key=hour.partition_key, tags=hour.tags)
            meta = materialized(result, "recommendations")
            enriched, dead = enriched + meta["enriched"], dead + meta["dead_lettered"]
            # on S3 the output is a link to the object in the S3 console
            assert meta["model_version"] == version and str(meta["output"]).startswith(
                f"https://s3.console.aws.amazon.com/s3/object/{resources.artifacts.bucket}?prefix=")
        assert enriched + dead == len(payloads) and enriched >= 30 and dead >= 1

    # the Firehose form: the Lambda handler with the stack's settings (the read-only user of its secret)
    lambda_handler.reset()
    try:
        response = lambda_handler.lambda_handler({"records": [
            {"recordId": str(i), "data": base64.b64encode(p).decode()} for i, p in enumerate(payloads)]})
    finally:
        lambda_handler.reset()
    results = [r["result"] for r in response["records"]]
    assert results.count("Ok") == enriched and results.count("ProcessingFailed") == dead


def test_export_comments_cannot_break_out_under_eval(tmp_path):
    marker = tmp_path / "ran"
    hostile = f"x\ntouch {marker}\n# $(touch {marker})"
    outputs = {key: hostile for key in deploy.OUTPUT_VARIABLES}
    outputs.update(DatabaseEndpoint=hostile, DatabasePort="5432\nid", DatabaseMasterSecretArn=hostile,
                   EcrRepositoryUri=f"repo'; touch {marker}; '\n")
    script = "\n".join(deploy.export_lines(outputs))
    result = subprocess.run(["bash", "-c", 'eval "$1"; printf %s "$ARTIFACTS_URI"', "_", script], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()  # nothing in a value ran
    assert result.stdout == hostile  # and the value arrived whole


def test_the_template_keeps_what_the_platform_relies_on():
    resources = deploy.load_template()["Resources"]
    # RDS makes no read replica of a database whose master password it manages itself
    assert "ManageMasterUserPassword" not in resources["Database"]["Properties"]
    # every Dagster container gets the recommender's source when one is given
    for name in ("WebserverTaskDefinition", "DaemonTaskDefinition", "CodeServerTaskDefinition", "RunTaskDefinition"):
        assert "SOURCE_DATABASE_URL" in json.dumps(resources[name]["Properties"]["ContainerDefinitions"]), name
    # batches Firehose sends the Lambda leave room for the enrichment within Lambda's 6 MB answer
    [processor] = resources["DeliveryStream"]["Properties"]["ExtendedS3DestinationConfiguration"][
        "ProcessingConfiguration"]["Processors"]
    buffer = {p["ParameterName"]: p["ParameterValue"] for p in processor["Parameters"]}["BufferSizeInMBs"]
    assert float(buffer) * 6.5 < 6
    lambda_env = resources["EnrichmentFunction"]["Properties"]["Environment"]["Variables"]
    assert int(lambda_env["READONLY_STATEMENT_TIMEOUT_SECONDS"]) < resources["EnrichmentFunction"]["Properties"]["Timeout"]


def test_the_local_instance_setup_leaves_the_ecs_instance_file_alone(tmp_path):
    from platform_cli.dagster_instance import prepare_dagster_home

    home = tmp_path / "home"
    home.mkdir()
    ecs = (PROJECT_ROOT / "deploy" / "dagster.ecs.yaml").read_text()
    (home / "dagster.yaml").write_text(ecs)
    prepare_dagster_home(PlatformSettings.from_env({"DAGSTER_HOME": str(home), "DATA_DIR": str(tmp_path / "d")}))
    assert (home / "dagster.yaml").read_text() == ecs


def test_an_update_keeps_every_parameter_it_is_not_given(stack):
    """CloudFormation resets a parameter left out of an update to its default (a database created with
    CreateDatabase=true would be deleted); `deploy_stack` sends UsePreviousValue for each one not given. (moto
    keeps only the values a create was given, so this stack is created with every parameter named.)"""
    cloudformation = stack["client"]("cloudformation")
    template = deploy.load_template()
    given = {"LambdaCodeBucket": "mldp-code", "Environment": "upd", "KinesisShardCount": "2",
             "LambdaCodeKey": stack["client"]("s3").list_objects_v2(Bucket="mldp-code")["Contents"][0]["Key"]}
    everything = deploy.check_parameters(template, given)
    assert deploy.deploy_stack(cloudformation, "mldp-upd", everything, poll_seconds=0.1) == "CREATE_COMPLETE"
    before = deploy.stack_parameters(cloudformation, "mldp-upd")
    status = deploy.deploy_stack(cloudformation, "mldp-upd", {"NotificationEmail": "ops@example.com"}, poll_seconds=0.1)
    assert status == "UPDATE_COMPLETE"
    after = deploy.stack_parameters(cloudformation, "mldp-upd")
    assert after == {**before, "NotificationEmail": "ops@example.com"}
    assert after["KinesisShardCount"] == "2" and after["Environment"] == "upd"  # not reset to their defaults


def test_every_dagster_task_gets_the_ui_address_for_the_alert_links():
    template = deploy.load_template()
    tasks = {name: resource for name, resource in template["Resources"].items()
             if resource["Type"] == "AWS::ECS::TaskDefinition"}
    assert len(tasks) == 4
    for name, task in tasks.items():
        env = {e["Name"]: e["Value"] for c in task["Properties"]["ContainerDefinitions"] for e in c["Environment"]
               if "Name" in e}  # (the others are Fn::If: a variable only some stacks set)
        assert env["DAGSTER_UI_URL"] == {"Ref": "DagsterUiUrl"}, name


def _statements(role: dict) -> list[dict]:
    """A role's inline policy statements, each `Fn::If` taken as the stacks that make the statement have it."""
    statements = []
    for policy in role["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in statement:
                statement = statement["Fn::If"][1]
            if statement != {"Ref": "AWS::NoValue"}:
                statements.append(statement)
    return statements


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def test_the_glue_job_runs_the_etl_script_with_a_role_limited_to_what_the_job_uses():
    """EtlEngine=glue: the job the `glue` engine runs, where the engine uploads its script, with a role that
    reaches only the script, the Pipes exchange, the staging prefix, the source's secret and Glue's logs;
    the Dagster task role may run exactly that job."""
    import importlib.metadata

    from recsys_assets import ratings_etl
    from recsys_assets.assets import TRAINING_PREFIX
    from resources.etl_engine import JOB_SCRIPT, PIPES_MESSAGES
    from resources.settings import PlatformSettings, build_resources

    template = deploy.load_template()
    resources = template["Resources"]
    assert template["Parameters"]["EtlEngine"]["Default"] == "inprocess"
    assert template["Conditions"]["UseGlue"] == {"Fn::Equals": [{"Ref": "EtlEngine"}, "glue"]}
    job = resources["RatingsEtlJob"]
    assert job["Type"] == "AWS::Glue::Job" and job["Condition"] == "UseGlue"
    props = job["Properties"]
    assert props["GlueVersion"] == "5.0" and props["Command"]["Name"] == "glueetl"
    assert props["Command"]["PythonVersion"] == "3"
    assert props["ExecutionProperty"]["MaxConcurrentRuns"] == 1 and 0 < props["Timeout"] <= 24 * 60
    assert props["WorkerType"] == {"Ref": "GlueWorkerType"} and props["NumberOfWorkers"] == {"Ref": "GlueWorkers"}
    assert props["Role"] == {"Fn::GetAtt": ["GlueEtlRole", "Arn"]}
    # the script where the engine uploads it: <ARTIFACTS_URI>/glue/<the script's file name>
    artifacts_uri = template["Outputs"]["ArtifactsUri"]["Value"]["Fn::Sub"]
    assert artifacts_uri == "s3://${ArtifactsBucket}/platform"
    assert props["Command"]["ScriptLocation"] == {"Fn::Sub": f"{artifacts_uri}/glue/{JOB_SCRIPT.name}"}
    arguments = props["DefaultArguments"]
    assert arguments["--additional-python-modules"] == f"dagster-pipes=={importlib.metadata.version('dagster')}"
    assert arguments["--enable-metrics"] == "true" and arguments["--enable-continuous-cloudwatch-log"] == "true"
    assert arguments["--continuous-log-logGroup"] == {"Ref": "GlueEtlLogGroup"}
    assert props["Connections"]["Fn::If"][0] == "GlueInVpc"
    name = props["Name"]
    assert name == {"Fn::Sub": "${ProjectName}-${Environment}-ratings-etl"}

    # the job's role: S3 on exactly the script, the Pipes exchange and the staging prefix
    bucket = "${ArtifactsBucket.Arn}/"
    staging = "platform/" + ratings_etl.staging_prefix(TRAINING_PREFIX, "run").removesuffix("run")
    assert staging == "platform/ratings_ml_training/_staging/"
    pipes = build_resources(PlatformSettings.from_env({"ARTIFACTS_URI": "s3://b/platform", "ETL_ENGINE": "glue",
                                                       "GLUE_SOURCE_SECRET_ID": "s"}))[
        "ratings_etl_engine"].pipes_prefix
    assert pipes == "platform/pipes/"
    allowed_objects = {"s3:GetObject": {f"{bucket}platform/glue/*", f"{bucket}{pipes}*", f"{bucket}{staging}*"},
                       "s3:PutObject": {f"{bucket}{pipes}{PIPES_MESSAGES}*", f"{bucket}{staging}*"},
                       "s3:DeleteObject": {f"{bucket}{staging}*"}, "s3:AbortMultipartUpload": {f"{bucket}{staging}*"}}
    granted: dict[str, set] = {}
    role = resources["GlueEtlRole"]
    assert role["Condition"] == "UseGlue"
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "glue.amazonaws.com"}
    for statement in _statements(role):
        assert statement["Effect"] == "Allow"
        actions = _listed(statement["Action"])
        assert not any(a.endswith("*") for a in actions), statement  # no wildcard actions
        for action in actions:
            service = action.split(":")[0]
            resources_ = _listed(statement["Resource"])
            if action == "s3:ListBucket":
                assert resources_ == [{"Fn::GetAtt": ["ArtifactsBucket", "Arn"]}]
                assert set(statement["Condition"]["StringLike"]["s3:prefix"]) == {staging.rstrip("/"), staging + "*"}
            elif action == "s3:GetBucketLocation":
                assert resources_ == [{"Fn::GetAtt": ["ArtifactsBucket", "Arn"]}]
            elif service == "s3":
                granted.setdefault(action, set()).update(r["Fn::Sub"] for r in resources_)
            elif service == "secretsmanager":
                assert action == "secretsmanager:GetSecretValue" and resources_ == [{"Ref": "GlueSourceSecretArn"}]
            elif service == "logs":
                assert all(str(r).find("/aws-glue/") >= 0 or r == {"Fn::GetAtt": ["GlueEtlLogGroup", "Arn"]}
                           for r in resources_), statement
            elif service == "cloudwatch":
                assert action == "cloudwatch:PutMetricData"
                assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Glue"}}
            elif service == "glue":
                assert action == "glue:GetConnection"
                assert resources_[1] == {"Fn::Sub": "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:"
                                                    "connection/${ProjectName}-${Environment}-ratings-etl"}
            else:  # the network connection's interfaces, only with the stack's network
                assert service == "ec2", statement
        if any(a.startswith("ec2:") or a == "glue:GetConnection" for a in actions):
            assert statement in [s["Fn::If"][1] for p in role["Properties"]["Policies"]
                                 for s in p["PolicyDocument"]["Statement"] if "Fn::If" in s
                                 and s["Fn::If"][0] == "GlueInVpc"], statement
    assert granted == allowed_objects
    # with the network: a NETWORK connection in the first private subnet, its workers' security group
    connection = resources["GlueNetworkConnection"]
    assert connection["Condition"] == "GlueInVpc" and connection["Properties"]["ConnectionInput"]["ConnectionType"] == "NETWORK"
    physical = connection["Properties"]["ConnectionInput"]["PhysicalConnectionRequirements"]
    assert physical["SubnetId"] == {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "SubnetIds"}]}]}
    assert physical["SecurityGroupIdList"] == [{"Ref": "GlueSecurityGroup"}]
    assert resources["GlueSecurityGroupSelfIngress"]["Properties"]["SourceSecurityGroupId"] == {"Ref": "GlueSecurityGroup"}

    # the Dagster task role (code server and runs): exactly this job's four actions, on its ARN only
    task_role = _statements(resources["DagsterTaskRole"])
    [glue] = [s for s in task_role if any(a.startswith("glue:") for a in _listed(s["Action"]))]
    assert sorted(glue["Action"]) == ["glue:BatchStopJobRun", "glue:GetJob", "glue:GetJobRun", "glue:StartJobRun"]
    assert glue["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}:job/"
                                           + name["Fn::Sub"]}
    # no iam:PassRole of the Glue role (StartJobRun passes none), from any role
    assert "GlueEtlRole" not in json.dumps([s for r in resources.values() if r["Type"] == "AWS::IAM::Role"
                                            for s in _statements(r) if "iam:PassRole" in _listed(s["Action"])])
    # the script upload and the Pipes exchange are within the task role's artifact prefix
    [objects] = [s for s in task_role if s.get("Sid") == "ArtifactObjects"]
    assert {"Fn::Sub": "${ArtifactsBucket.Arn}/platform/*"} in objects["Resource"]
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(objects["Action"])


def test_every_dagster_task_gets_the_etl_engines_settings():
    from resources.settings import ETL_ENGINES, GLUE_WORKER_TYPES

    template = deploy.load_template()
    parameters = template["Parameters"]
    name = template["Resources"]["RatingsEtlJob"]["Properties"]["Name"]
    tasks = {n: r for n, r in template["Resources"].items() if r["Type"] == "AWS::ECS::TaskDefinition"}
    assert len(tasks) == 4
    for task_name, task in tasks.items():
        [container] = task["Properties"]["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"] if "Name" in e}
        assert env["ETL_ENGINE"] == {"Ref": "EtlEngine"}, task_name
        assert env["GLUE_ETL_JOB_NAME"] == name, task_name
        assert env["GLUE_WORKER_TYPE"] == {"Ref": "GlueWorkerType"}, task_name
        assert env["GLUE_WORKERS"] == {"Ref": "GlueWorkers"}, task_name
        [secret_id] = [e["Fn::If"] for e in container["Environment"] if "Fn::If" in e
                       and e["Fn::If"][1].get("Name") == "GLUE_SOURCE_SECRET_ID"]
        assert secret_id[0] == "HasGlueSourceSecret" and secret_id[1]["Value"] == {"Ref": "GlueSourceSecretArn"}
    # every value the template allows is one the settings accept (the image has no Spark: not offered)
    assert set(parameters["EtlEngine"]["AllowedValues"]) == set(ETL_ENGINES) - {"spark"}
    assert set(parameters["GlueWorkerType"]["AllowedValues"]) == set(GLUE_WORKER_TYPES)
    for workers in (parameters["GlueWorkers"]["MinValue"], parameters["GlueWorkers"]["MaxValue"]):
        settings = PlatformSettings.from_env({"ETL_ENGINE": "glue", "ARTIFACTS_URI": "s3://b/platform",
                                              "GLUE_ETL_JOB_NAME": "mldp-dev-ratings-etl", "GLUE_WORKERS": str(workers),
                                              "GLUE_WORKER_TYPE": parameters["GlueWorkerType"]["Default"],
                                              "GLUE_SOURCE_SECRET_ID": "arn:aws:secretsmanager:us-east-1:"
                                                                       "123456789012:secret:src-login-AbCdEf"})
        assert settings.glue_workers == workers and settings.glue_etl_job_name == "mldp-dev-ratings-etl"
