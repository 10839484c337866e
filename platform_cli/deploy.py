"""`mldp deploy`: the AWS stack of `deploy/cloudformation/platform.yaml` and the settings it gives.

    mldp deploy lambda-package [--out build/lambda]       build the Firehose Lambda's zip (deploy/lambda/build.py)
    mldp deploy up --stack mldp-dev --code-bucket B [--param Key=Value ...]
                                                          upload the Lambda zip, create or update the stack, wait,
                                                          then print the export lines
    mldp deploy exports --stack mldp-dev                  print `export NAME=value` for a complete stack
    mldp deploy readonly-user [--host replica.example]    create the read-only role of READONLY_DATABASE_SECRET_ID's
                                                          secret on DATABASE_URL's database, with its password; fill
                                                          in the secret's host, port and dbname when it lacks them

The exports are the platform's environment variables (README, "Environment variables") with the values
the stack's outputs give; `exports` refuses a stack that is not complete (being created, rolled back,
failed), so a half-made stack never configures the platform. Values are shell-quoted. No secret is
printed: the database credentials stay in Secrets Manager and are named by their secret's ARN.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

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


class ParametersRefused(SystemExit):
    """Parameters the template refuses; nothing was built, uploaded or created."""


# --- the template ---------------------------------------------------------------------------------------


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, !If, ...) read as their long forms."""


def _intrinsic(loader, suffix: str, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        return {name: value.split(".", 1) if suffix == "GetAtt" else value}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node, deep=True)}
    return {name: loader.construct_mapping(node, deep=True)}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.load(path.read_text(), Loader=_TemplateLoader)


def _evaluate(expression, values: dict[str, str], where: str):
    """A rule's condition or assertion, over the parameters' values (the functions CloudFormation allows in
    Rules that the template uses; any other is an error, never silently true)."""
    if isinstance(expression, (str, int, float)):
        return str(expression)
    if isinstance(expression, dict) and len(expression) == 1:
        [(function, argument)] = expression.items()
        if function == "Ref":
            return values[argument]
        if function == "Fn::Equals":
            left, right = (_evaluate(a, values, where) for a in argument)
            return left == right
        if function == "Fn::Not":
            return not _evaluate(argument[0], values, where)
        if function == "Fn::And":
            return all(_evaluate(a, values, where) for a in argument)
        if function == "Fn::Or":
            return any(_evaluate(a, values, where) for a in argument)
    raise ParametersRefused(f"{where}: {json.dumps(expression)[:120]} is not a rule expression this check evaluates")


def check_parameters(template: dict, given: dict[str, str]) -> dict[str, str]:
    """What CloudFormation checks before it creates anything, checked here first so that nothing is built or
    uploaded for parameters that cannot work: unknown names, required values, each parameter's
    AllowedPattern, AllowedValues, lengths and number bounds (with its ConstraintDescription), and the
    template's Rules (with their AssertDescription). Returns every parameter's value."""
    declared = template.get("Parameters", {})
    problems = [f"{name}: the template has no such parameter (it has {', '.join(declared)})"
                for name in sorted(set(given) - set(declared))]
    values: dict[str, str] = {}
    for name, spec in declared.items():
        value = given.get(name, spec.get("Default"))
        if value is None:
            problems.append(f"{name}: required (no default); pass --param {name}=...")
            continue
        value = values[name] = str(value)
        why = spec.get("ConstraintDescription", "refused by the template's constraints")
        if spec.get("Type") == "Number":
            try:
                number = float(value)
            except ValueError:
                problems.append(f"{name}={value!r}: not a number; {why}")
                continue
            if ("MinValue" in spec and number < float(spec["MinValue"])) or (
                    "MaxValue" in spec and number > float(spec["MaxValue"])):
                problems.append(f"{name}={value!r}: {why}")
            continue
        bad_length = len(value) < int(spec.get("MinLength", 0)) or len(value) > int(spec.get("MaxLength", 4096))
        bad_pattern = "AllowedPattern" in spec and re.fullmatch(spec["AllowedPattern"], value) is None
        bad_value = "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]
        if bad_length or bad_pattern or bad_value:
            problems.append(f"{name}={value!r}: {why}")
    if not problems:
        for rule_name, rule in template.get("Rules", {}).items():
            if "RuleCondition" in rule and not _evaluate(rule["RuleCondition"], values, rule_name):
                continue
            for assertion in rule.get("Assertions", []):
                if not _evaluate(assertion["Assert"], values, rule_name):
                    problems.append(f"{rule_name}: {' '.join(assertion.get('AssertDescription', 'refused').split())}")
    if problems:
        raise ParametersRefused("the template refuses these parameters (nothing was built, uploaded or created):\n  "
                                + "\n  ".join(problems))
    return values


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


def _shown(value: str) -> str:
    """An output value in a comment line: control characters (a newline would end the comment, and the rest
    would run under `eval`) replaced."""
    return "".join(c if c.isprintable() else "?" for c in value)


def export_lines(outputs: dict[str, str]) -> list[str]:
    """`export NAME=value` lines for the platform's settings (values shell-quoted), and comments for what is
    not a setting (values stripped of control characters): safe for `eval "$(mldp deploy exports ...)"`."""
    missing = [key for key in OUTPUT_VARIABLES if key not in outputs]
    if missing:
        raise StackNotReady(f"the stack has no output(s) {', '.join(missing)}: is it this project's template?")
    lines = [f"export {name}={shlex.quote(value)}" for name, value in BACKENDS.items()]
    lines += [f"export {OUTPUT_VARIABLES[key]}={shlex.quote(outputs[key])}" for key in OUTPUT_VARIABLES]
    if "DatabaseEndpoint" in outputs:
        lines.append(f"# application database: {_shown(outputs['DatabaseEndpoint'])}:"
                     f"{_shown(outputs.get('DatabasePort', '5432'))}; its master credentials are in Secrets Manager "
                     f"secret {_shown(outputs.get('DatabaseMasterSecretArn', '?'))} "
                     "(set DATABASE_URL from them; never paste a password into a shell history)")
    else:
        lines.append("# application database: not created by the stack (CreateDatabase=false); set DATABASE_URL to "
                     "your PostgreSQL with the vector extension")
    if "EcrRepositoryUri" in outputs:
        lines.append(f"# code-location image: {_shown(outputs['EcrRepositoryUri'])}")
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


def stack_parameters(cloudformation, stack: str) -> dict[str, str] | None:
    """The parameter values of an existing stack; None when there is no such stack."""
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except cloudformation.exceptions.ClientError:
        return None
    if not described:
        return None
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in described[0].get("Parameters", [])}


def deploy_stack(cloudformation, stack: str, parameters: dict[str, str], template: Path = TEMPLATE,
                 timeout_seconds: int = 3600, poll_seconds: float = 5) -> str:
    """Create the stack, or update it when it exists; wait until it settles and return its status. On an update,
    every parameter not in `parameters` keeps its value (CloudFormation would otherwise reset it to the
    template's default: a database created with CreateDatabase=true would be deleted)."""
    body = template.read_text()
    current = stack_parameters(cloudformation, stack)
    params = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(parameters.items())]
    if current is not None:
        params += [{"ParameterKey": k, "UsePreviousValue": True} for k in sorted(current) if k not in parameters]
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


def provision_readonly_user(settings: PlatformSettings, host: str | None = None, port: int | None = None) -> str:
    """The read-only user of the stack's secret, made real: the role created on the application database
    (`DATABASE_URL`) with read-only grants and the secret's password (as a SCRAM verifier), and the secret
    completed with where to connect (`host`, default the application database's; a read replica's endpoint
    when there is one). Returns what was done, without the password."""
    from psycopg.conninfo import conninfo_to_dict

    from resources.postgres import ExternalPostgresDatabase
    from resources.readonly import set_role_password

    if not settings.readonly_secret_id:
        raise SystemExit("set READONLY_DATABASE_SECRET_ID (`mldp deploy exports` prints it) to the stack's secret")
    if not settings.database_url:
        raise SystemExit("set DATABASE_URL to the application database (a user that can create roles)")
    client = _client("secretsmanager", settings)
    secret_id = settings.readonly_secret_id
    payload = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
    role, password = payload.get("username"), payload.get("password")
    if not role or not password:
        raise SystemExit(f"Secrets Manager secret {secret_id!r} has no 'username' and 'password' (the stack makes both)")
    primary = ExternalPostgresDatabase(url=settings.database_url)
    set_role_password(primary, role, password)
    target = conninfo_to_dict(primary.conninfo())
    completed = {"host": host or payload.get("host") or target.get("host"),
                 "port": int(port or payload.get("port") or target.get("port") or 5432),
                 "dbname": payload.get("dbname") or payload.get("database") or target.get("dbname")}
    if any(payload.get(key) != value for key, value in completed.items()):
        client.put_secret_value(SecretId=secret_id, SecretString=json.dumps({**payload, **completed}))
    return (f"role {role!r} on {primary.describe()}: read-only, password from {secret_id!r}; the secret points at "
            f"{completed['host']}:{completed['port']}/{completed['dbname']}")


def cmd_deploy(args: argparse.Namespace) -> int:
    settings = PlatformSettings.from_env()
    if args.deploy_action == "readonly-user":
        print(provision_readonly_user(settings, args.host, args.port))
        return 0
    if args.deploy_action == "lambda-package":
        print(json.dumps(build_lambda(args.out.resolve())))
        return 0
    cloudformation = _client("cloudformation", settings)
    if args.deploy_action == "up":
        given = _parameters(args.param)
        # checked as the stack will be: its current values where it exists, then what is given; the code
        # location is known only after the upload, so a stand-in of the right form is checked
        check_parameters(load_template(), {**(stack_parameters(cloudformation, args.stack) or {}),
                                           "LambdaCodeBucket": args.code_bucket,
                                           "LambdaCodeKey": "lambda/enrichment-lambda-0000000000000000.zip", **given})
        report = build_lambda(args.out.resolve())
        key = upload_lambda(_client("s3", settings), args.code_bucket, Path(report["package"]))
        print(f"uploaded the Lambda package ({report['unzipped_bytes'] / 1e6:.1f} MB unzipped) to "
              f"s3://{args.code_bucket}/{key}", file=sys.stderr)
        parameters = {"LambdaCodeBucket": args.code_bucket, "LambdaCodeKey": key, **given}
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
    readonly = actions.add_parser("readonly-user", help="create the read-only database user of the stack's secret")
    readonly.add_argument("--host", help="where read-only sessions connect (a read replica); default: the secret's "
                                         "host, else DATABASE_URL's")
    readonly.add_argument("--port", type=int)
    deploy.set_defaults(func=cmd_deploy)
