"""Shared test fixtures: one embedded PostgreSQL server per session (a database per test module), moto's
server mode for AWS APIs, and artifact stores on a temporary folder or on moto's S3.

Real parts only: the embedded server is the same PostgreSQL 18 + pgvector the project runs on, and boto3
talks HTTP to moto's server exactly as it would to AWS.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from benchmarks.harness import MYSQL, mysql_connection
from resources.artifacts import LocalArtifactStore, S3ArtifactStore
from resources.embedded_postgres import embedded_server, stop_embedded_server
from resources.postgres import EmbeddedPostgresDatabase
from resources.settings import PROJECT_ROOT

REGION = "us-east-1"
SHARED_DATASETS = Path(os.environ.get("DATASETS_DIR") or PROJECT_ROOT.parent / "shared" / "datasets")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server started with `start_new_session=True` as Ctrl-C would (its children too), or kill it.
    (`dagster dev` waits 60 s for a child that does not stop before killing it; a test need not wait that.)"""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """A query to the Dagster webserver on `port`; its data (a response with errors fails the test)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_reaches_the_processes_tests_start():
    """Tests stop the programs they start as a person does, with Ctrl-C (SIGINT). A shell that starts the suite
    in the background without job control ignores SIGINT in it, and every child would inherit that: the
    suite's own process takes Ctrl-C back, as Python does in a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The real reference data sets when present (tests that need them skip, saying why, otherwise)."""
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def pg_data_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("pg")
    yield base
    stop_embedded_server(base / "postgres")


@pytest.fixture(scope="session")
def pg_server(pg_data_dir):
    """The session's embedded PostgreSQL server."""
    return embedded_server(pg_data_dir / "postgres")


@pytest.fixture(scope="module")
def app_db(pg_server, pg_data_dir, request) -> EmbeddedPostgresDatabase:
    """A fresh database on the session server for each test module."""
    name = "t_" + re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])[:40] + "_" + uuid.uuid4().hex[:6]
    return EmbeddedPostgresDatabase(data_dir=str(pg_data_dir / "postgres"), database=name)


@pytest.fixture(scope="session")
def aws_credentials():
    """Fake credentials for boto3; moto accepts any."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION})
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def moto_server(aws_credentials) -> str:
    """moto in server mode on 127.0.0.1; returns its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def moto(moto_server) -> str:
    """moto's endpoint with every service's state reset before the test."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(request).read()
    return moto_server


@pytest.fixture
def boto_client(moto):
    import boto3

    def make(service: str):
        return boto3.client(service, region_name=REGION, endpoint_url=moto)

    return make


@pytest.fixture
def sns_subscriber(moto, boto_client):
    """An SNS topic on moto with an SQS queue subscribed: (topic ARN, a function returning every message the
    subscriber has received so far, as SNS's JSON envelopes, each read once)."""
    sns, sqs = boto_client("sns"), boto_client("sqs")
    topic = sns.create_topic(Name="mldp-notifications")["TopicArn"]
    queue = sqs.create_queue(QueueName="notifications-subscriber")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    def received() -> list[dict]:
        messages = []
        while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages"):
            messages += [json.loads(m["Body"]) for m in batch]
            sqs.delete_message_batch(QueueUrl=queue, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
        return messages

    return topic, received


@pytest.fixture
def code_dir(tmp_path) -> Path:
    """A script-mode source folder with train.py and inference.py (see tests/sagemaker_scripts.py)."""
    from tests.sagemaker_scripts import INFERENCE_SCRIPT, TRAIN_SCRIPT

    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(TRAIN_SCRIPT)
    (code / "inference.py").write_text(INFERENCE_SCRIPT)
    return code


@pytest.fixture
def local_artifacts(tmp_path) -> LocalArtifactStore:
    return LocalArtifactStore(root=str(tmp_path / "artifacts"))


@pytest.fixture
def s3_artifacts(moto, boto_client) -> S3ArtifactStore:
    from dagster_aws.s3 import S3Resource

    boto_client("s3").create_bucket(Bucket="ml-artifacts")
    return S3ArtifactStore(bucket="ml-artifacts", prefix="platform", s3=S3Resource(region_name=REGION, endpoint_url=moto))


# --- MariaDB / MySQL ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mariadb():
    """The MariaDB server on 127.0.0.1:3306. Under CI it must be there; elsewhere its absence skips."""
    import pymysql

    try:
        mysql_connection().close()
    except pymysql.err.OperationalError as exc:
        message = f"MariaDB/MySQL is not reachable on 127.0.0.1:3306 as root without password: {exc}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return MYSQL


@pytest.fixture(scope="session")
def classicmodels_mysql(mariadb, datasets_dir):
    """The real classicmodels dump plus the lab's ratings table, in a database of its own; yields its URL."""
    dump = datasets_dir / "classicmodels" / "mysqlsampledatabase.sql"
    ratings_csv = datasets_dir / "classicmodels" / "ratings_ml_training_dataset.csv"
    if not dump.exists() or not ratings_csv.exists():
        pytest.skip(f"the classicmodels reference files are not present under {datasets_dir / 'classicmodels'}")
    from pymysql.constants import CLIENT

    from tests.mysql_support import create_ratings_table, load_dump

    name = f"classicmodels_test_{uuid.uuid4().hex[:8]}"
    with mysql_connection(client_flag=CLIENT.MULTI_STATEMENTS) as conn:
        load_dump(conn, dump, name)
    with mysql_connection(name) as conn:
        create_ratings_table(conn, ratings_csv)
    yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    with mysql_connection() as conn:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
