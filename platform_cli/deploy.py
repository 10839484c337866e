"""`mldp deploy`: the AWS stack of ``deploy/cloudformation/platform.yaml`` and the settings it gives.

    mldp deploy lambda-package [--out build/lambda]       build the Firehose Lambda's zip (deploy/lambda/build.py)
    mldp deploy up --stack mldp-dev --code-bucket B [--param Key=Value ...]
                                                          upload the Lambda zip, create or update the stack, wait,
                                                          then print the export lines
    mldp deploy exports --stack mldp-dev                  print ``export NAME=value`` for a complete stack

The exports are the platform's environment variables (README, "Environment variables") with the values
the stack's outputs give; `exports` refuses a stack that is not complete (being created, rolled back,
failed), so a half-made stack never configures the platform. Values are shell-quoted. No secret is
printed: the database credentials stay in Secrets Manager and are named by their secret's ARN.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from resources.settings import PROJECT_ROOT, PlatformSettings

TEMPLATE = PROJECT_ROOT / "deploy" / "cloudformation" / "platform.yaml"
LAMBDA_BUILD = PROJECT_ROOT / "deploy" / "lambda" / "build.py"
COMPLETE = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
CAPABILITIES = ["CAPABILITY_NAMED_IAM", "CAPABILITY_IAM"]

# stack output -> the platform's environment variable
OUTPUT_VARIABLES = {
    "AwsRegion": "AWS_REGION",
    "MldpEnv": "MLDP_ENV",
    "ArtifactsUri": "ARTIFACTS_URI",
    "KinesisStreamName": "KINESIS_STREAM_NAME",
    "SnsTopicArn": "SNS_TOPIC_ARN",
    "RegistryEventsQueueUrl": "MODEL_REGISTRY_EVENTS_QUEUE_URL",
    "SageMakerRoleArn": "SAGEMAKER_ROLE_ARN",
    "ReadonlySecretArn": "READONLY_DATABASE_SECRET_ID",
}
# the backends those resources stand for
BACKENDS = {
    "STREAM_BACKEND": "kinesis",
    "NOTIFIER_BACKEND": "sns",
    "MODEL_REGISTRY_BACKEND": "sagemaker",
    "SAGEMAKER_BACKEND": "aws",
}


class StackNotReady(SystemExit):
    """The stack is missing or not complete: no settings are printed for it."""


def _client(service: str, settings: PlatformSettings):
    from resources.aws_clients import aws_client

    return aws_client(service, region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)


def stack_outputs(cloudformation, stack: str) -> dict[str, str]:
    """The outputs of a complete stack; `StackNotReady` names the stack and its status otherwise."""
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except cloudformation.exceptions.ClientError as exc:
        raise StackNotReady(f"stack {stack!r}: {exc.response['Error'].get('Message', exc)}") from None
    if not described:
        raise StackNotReady(f"stack {stack!r} does not exist")
    status = described[0]["StackStatus"]
    if status not in COMPLETE:
        reason = described[0].get("StackStatusReason")
        raise StackNotReady(f"stack {stack!r} is {status}{f' ({reason})' if reason else ''}: exports are printed only "
                            f"for a stack in {' or '.join(COMPLETE)}")
    return {o["OutputKey"]: o["OutputValue"] for o in described[0].get("Outputs", [])}


def export_lines(outputs: dict[str, str]) -> list[str]:
    """``export NAME=value`` lines for the platform's settings, and comments for what is not a setting."""
    missing = [key for key in OUTPUT_VARIABLES if key not in outputs]
    if missing:
        raise StackNotReady(f"the stack has no output(s) {', '.join(missing)}: is it this project's template?")
    lines = [f"export {name}={shlex.quote(value)}" for name, value in BACKENDS.items()]
    lines += [f"export {OUTPUT_VARIABLES[key]}={shlex.quote(outputs[key])}" for key in OUTPUT_VARIABLES]
    if "DatabaseEndpoint" in outputs:
        lines.append(f"# application database: {outputs['DatabaseEndpoint']}:{outputs.get('DatabasePort', '5432')}; "
                     f"its master credentials are in Secrets Manager secret {outputs.get('DatabaseMasterSecretArn', '?')} "
                     "(set DATABASE_URL from them; never paste a password into a shell history)")
    else:
        lines.append("# application database: not created by the stack (CreateDatabase=false); set DATABASE_URL to "
                     "your PostgreSQL with the vector extension")
    if "EcrRepositoryUri" in outputs:
        lines.append(f"# code-location image: {outputs['EcrRepositoryUri']}")
    return lines


def build_lambda(out: Path) -> dict:
    result = subprocess.run([sys.executable, str(LAMBDA_BUILD), "--out", str(out)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr.strip() or "the Lambda package build failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def upload_lambda(s3, bucket: str, archive: Path) -> str:
    """Upload the zip under a key named by its content (a changed package is a new key: CloudFormation then
    updates the function), and return the key."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    key = f"lambda/enrichment-lambda-{digest}.zip"
    s3.upload_file(str(archive), bucket, key)
    return key


def deploy_stack(cloudformation, stack: str, parameters: dict[str, str], template: Path = TEMPLATE,
                 timeout_seconds: int = 3600, poll_seconds: float = 5) -> str:
    """Create the stack, or update it when it exists; wait until it settles and return its status."""
    body = template.read_text()
    params = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(parameters.items())]
    try:
        cloudformation.describe_stacks(StackName=stack)
        exists = True
    except cloudformation.exceptions.ClientError:
        exists = False
    if exists:
        try:
            cloudformation.update_stack(StackName=stack, TemplateBody=body, Parameters=params, Capabilities=CAPABILITIES)
        except cloudformation.exceptions.ClientError as exc:
            if "No updates are to be performed" not in str(exc):
                raise
    else:
        cloudformation.create_stack(StackName=stack, TemplateBody=body, Parameters=params, Capabilities=CAPABILITIES,
                                    OnFailure="ROLLBACK", Tags=[{"Key": "project", "Value": "mldp"}])
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            return status
        if time.monotonic() > deadline:
            raise SystemExit(f"stack {stack!r} is still {status} after {timeout_seconds} s")
        time.sleep(poll_seconds)


def _parameters(pairs: list[str]) -> dict[str, str]:
    parameters = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"--param takes Key=Value, not {pair!r}")
        parameters[key] = value
    return parameters


def cmd_deploy(args: argparse.Namespace) -> int:
    settings = PlatformSettings.from_env()
    if args.deploy_action == "lambda-package":
        print(json.dumps(build_lambda(args.out.resolve())))
        return 0
    cloudformation = _client("cloudformation", settings)
    if args.deploy_action == "up":
        report = build_lambda(args.out.resolve())
        key = upload_lambda(_client("s3", settings), args.code_bucket, Path(report["package"]))
        print(f"uploaded the Lambda package ({report['unzipped_bytes'] / 1e6:.1f} MB unzipped) to "
              f"s3://{args.code_bucket}/{key}", file=sys.stderr)
        parameters = {"LambdaCodeBucket": args.code_bucket, "LambdaCodeKey": key, **_parameters(args.param)}
        status = deploy_stack(cloudformation, args.stack, parameters)
        print(f"stack {args.stack}: {status}", file=sys.stderr)
    for line in export_lines(stack_outputs(cloudformation, args.stack)):
        print(line)
    return 0


def add_parser(commands) -> None:
    deploy = commands.add_parser("deploy", help="deploy to AWS: the Lambda package, the stack, the settings it gives")
    actions = deploy.add_subparsers(dest="deploy_action", required=True)
    package = actions.add_parser("lambda-package", help="build the Firehose Lambda's zip")
    package.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "lambda")
    up = actions.add_parser("up", help="upload the Lambda zip, create or update the stack, print the exports")
    up.add_argument("--stack", required=True)
    up.add_argument("--code-bucket", required=True, help="an existing bucket for the Lambda zip")
    up.add_argument("--param", action="append", default=[], metavar="Key=Value", help="a template parameter")
    up.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "lambda")
    exports = actions.add_parser("exports", help="print `export NAME=value` lines for a complete stack")
    exports.add_argument("--stack", required=True)
    deploy.set_defaults(func=cmd_deploy)
