"""How every resource reaches AWS: one boto3 client factory with the platform's region, endpoint and timeouts.

The endpoint (`AWS_ENDPOINT_URL`) points every client at moto's server or another AWS-compatible one in
tests and local setups; unset, boto3 uses the real service. Timeouts are short on the paths that run inside
a sensor tick (the registry, the notifier, the stream), so a tick answers within Dagster's tick timeout.
"""

from __future__ import annotations

from typing import Any

# connect/read timeouts in seconds and total attempts, per kind of caller
SENSOR_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 20, "max_attempts": 4}
JOB_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 60, "max_attempts": 5}
# a call that retries by itself (the notifier's publish): short, and no hidden retries beneath it
SINGLE_ATTEMPT_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 10, "max_attempts": 1}


def aws_client(service: str, *, region_name: str, endpoint_url: str | None = None, connect_timeout: float = 10,
               read_timeout: float = 60, max_attempts: int = 5) -> Any:
    """A boto3 client for `service` (`sagemaker`, `sns`, `sqs`, `kinesis` ...), with standard retries."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                    retries={"max_attempts": max_attempts, "mode": "standard"})
    return boto3.client(service, region_name=region_name, endpoint_url=endpoint_url or None, config=config)


def boto_session(region_name: str) -> Any:
    """A boto3 session in the platform's region (for the SageMaker SDK, which takes a session)."""
    import boto3

    return boto3.Session(region_name=region_name)
