"""The model registry on both backends: local tables and SageMaker (moto's server), same behaviour."""

import threading
import time
import uuid

import pytest

from resources.model_registry import (
    APPROVED,
    PENDING,
    REJECTED,
    LocalModelRegistry,
    RegistryError,
    SageMakerModelRegistry,
)
from tests.conftest import free_port


@pytest.fixture(params=["local", "sagemaker"])
def registry(request, app_db):
    env = f"t{uuid.uuid4().hex[:8]}"
    if request.param == "local":
        return LocalModelRegistry(db=app_db, env=env)
    moto = request.getfixturevalue("moto")
    return SageMakerModelRegistry(env=env, region_name="us-east-1", endpoint_url=moto,
                                  inference_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0")


def register(registry, model_version, pipeline="credit", auc=0.9):
    return registry.register(pipeline, model_version=model_version, model_data_url=f"s3://b/models/{model_version}.tar.gz",
                             metrics={"validation_auc": auc}, data_fingerprint="abc123", description="a scorecard")


def test_register_is_pending_versioned_and_idempotent(registry):
    first = register(registry, "20260101-000000-aaaaaaaa")
    assert (first.group, first.version, first.status) == (f"credit-{registry.env}-models", 1, PENDING)
    assert first.model_data_url == "s3://b/models/20260101-000000-aaaaaaaa.tar.gz"
    assert first.metrics == {"validation_auc": 0.9} and first.data_fingerprint == "abc123"
    again = register(registry, "20260101-000000-aaaaaaaa")
    assert again.arn == first.arn  # the same model version is one package
    second = register(registry, "20260102-000000-bbbbbbbb", auc=0.92)
    assert second.version == 2
    assert [p.version for p in registry.packages(first.group)] == [2, 1]


def test_approve_reject_and_select_by_policy(registry):
    group = registry.group_for("credit")
    one, two = register(registry, "v-one"), register(registry, "v-two")
    with pytest.raises(RegistryError, match=rf"no Approved model in {group} \(newest: version 2, PendingManualApproval\)"):
        registry.select("credit")
    approved = registry.approve(group, one.version, "Gini 0.85 on Validation")
    assert (approved.status, approved.approval_description) == (APPROVED, "Gini 0.85 on Validation")
    assert approved.model_version == "v-one" and approved.metrics == {"validation_auc": 0.9}  # metadata kept
    assert registry.select("credit").model_version == "v-one"
    rejected = registry.reject(group, two.version, "leaks the label")
    assert rejected.status == REJECTED
    newest_policy = type(registry)(**{**{f: getattr(registry, f) for f in type(registry).model_fields},
                                      "version_policy": "newest"})
    assert newest_policy.select("credit").model_version == "v-one"  # the newest not rejected
    register(registry, "v-three")
    assert newest_policy.select("credit").model_version == "v-three"
    assert registry.select("credit").model_version == "v-one"


def test_bad_changes_are_refused_with_names(registry):
    group = registry.group_for("credit")
    register(registry, "v-one")
    with pytest.raises(RegistryError, match="unknown model approval status 'Maybe'"):
        registry.set_status(group, 1, "Maybe", "why not")
    with pytest.raises(RegistryError, match=rf"{group} has no version 7"):
        registry.approve(group, 7, "no such version")


def test_status_changes_come_once_each_in_order(registry):
    group = registry.group_for("recsys")
    first = register(registry, "r-1", pipeline="recsys")
    changes = registry.changes(None)
    assert [(c.package.arn, c.status) for c in changes] == [(first.arn, PENDING)]
    cursor = registry.advance(None, changes[0])
    assert registry.changes(cursor) == []
    registry.approve(group, 1, "ship it")
    second = register(registry, "r-2", pipeline="recsys")
    changes = registry.changes(cursor)
    assert [(c.package.version, c.status) for c in changes] == [(1, APPROVED), (2, PENDING)]
    cursor = registry.advance(cursor, changes[0])  # only the first handled: the second comes again
    assert [(c.package.arn, c.status) for c in registry.changes(cursor)] == [(second.arn, PENDING)]


def test_sagemaker_calls_and_arguments(moto, boto_client):
    registry = SageMakerModelRegistry(env="prod", region_name="us-east-1", endpoint_url=moto, inference_image="img:1")
    package = register(registry, "20260103-000000-cccccccc")
    client = boto_client("sagemaker")
    assert client.describe_model_package_group(ModelPackageGroupName="credit-prod-models")["ModelPackageGroupName"]
    described = client.describe_model_package(ModelPackageName=package.arn)
    assert described["ModelApprovalStatus"] == PENDING
    container = described["InferenceSpecification"]["Containers"][0]
    assert (container["Image"], container["ModelDataUrl"]) == ("img:1", "s3://b/models/20260103-000000-cccccccc.tar.gz")
    # the package is served as the platform serves it: the code inside model.tar.gz
    assert container["Environment"] == {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                                        "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": "us-east-1"}
    assert described["InferenceSpecification"]["SupportedContentTypes"] == ["text/csv"]
    assert described["CustomerMetadataProperties"]["mldp:model_version"] == "20260103-000000-cccccccc"
    registry.approve("credit-prod-models", package.version, "reviewed by risk")
    described = client.describe_model_package(ModelPackageName=package.arn)
    assert (described["ModelApprovalStatus"], described["ApprovalDescription"]) == (APPROVED, "reviewed by risk")


def test_packages_name_the_pytorch_inference_image_and_the_models_content_types(moto):
    import boto3

    registry = SageMakerModelRegistry(env="prod", region_name="eu-west-1", endpoint_url=moto)
    package = registry.register("recsys", model_version="r-1", model_data_url="s3://b/r-1/model.tar.gz", metrics={},
                                data_fingerprint="f", content_types=("application/json", "application/jsonlines"))
    client = boto3.client("sagemaker", region_name="eu-west-1", endpoint_url=moto)
    described = client.describe_model_package(ModelPackageName=package.arn)
    specification = described["InferenceSpecification"]
    assert specification["Containers"][0]["Image"] == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312")
    assert specification["SupportedContentTypes"] == specification["SupportedResponseMIMETypes"] == [
        "application/json", "application/jsonlines"]


def test_named_versions_are_checked_against_the_policy(registry):
    group = registry.group_for("credit")
    register(registry, "v-one"), register(registry, "v-two")
    registry.approve(group, 1, "reviewed")
    registry.reject(group, 2, "unstable Gini")
    assert registry.resolve("credit", "v-one").version == 1
    assert registry.resolve("credit").model_version == "v-one"  # empty: the policy's choice
    with pytest.raises(RegistryError, match=r"model version v-two is Rejected in .* \(version 2: unstable Gini\)"):
        registry.resolve("credit", "v-two")
    with pytest.raises(RegistryError, match="v-three is not registered .* only Approved models are used"):
        registry.resolve("credit", "v-three")
    register(registry, "v-four")
    with pytest.raises(RegistryError, match="v-four is PendingManualApproval"):
        registry.resolve("credit", "v-four")
    newest = registry.model_copy(update={"version_policy": "newest"})
    assert newest.resolve("credit", "v-four").version == 3 and newest.resolve("credit", "v-three") is None
    with pytest.raises(RegistryError, match="Rejected models are not used"):
        newest.resolve("credit", "v-two")


def test_a_reason_is_required_and_a_repeated_status_is_no_change(registry):
    group = registry.group_for("credit")
    register(registry, "v-one")
    with pytest.raises(RegistryError, match="a reason is required to set a model package to Approved"):
        registry.approve(group, 1, "  ")
    cursor = registry.advance(None, registry.changes(None)[-1])
    registry.approve(group, 1, "reviewed")
    [approved] = registry.changes(cursor)
    assert (approved.status, approved.reason) == (APPROVED, "reviewed")
    cursor = registry.advance(cursor, approved)
    registry.approve(group, 1, "reviewed again")  # already Approved: the reason is updated, nothing happens
    assert registry.changes(cursor) == []
    assert registry.package(group, 1).approval_description == "reviewed again"


def test_local_events_become_visible_in_id_order(app_db):
    """A change whose transaction commits late cannot be skipped by a reader that saw a later one: event
    ids are handed out under a lock held until commit."""
    registry = LocalModelRegistry(db=app_db, env=f"t{uuid.uuid4().hex[:8]}")
    first = register(registry, "v-one")
    cursor = registry.advance(None, registry.changes(None)[-1])
    registered = []
    with app_db.connect() as slow:  # an approval whose transaction is still open
        with slow.transaction():
            LocalModelRegistry._append_event(slow, first.arn, APPROVED, "slow approval")
            thread = threading.Thread(target=lambda: registered.append(register(registry, "v-two")))
            thread.start()
            with app_db.connect(autocommit=True) as observer:  # until the second writer waits on the lock
                deadline = time.monotonic() + 30
                while not observer.execute("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = "
                                           "'Lock' AND wait_event = 'relation')").fetchone()[0]:
                    assert time.monotonic() < deadline and thread.is_alive(), "the second writer never waited"
                    time.sleep(0.05)
            assert thread.is_alive() and registry.changes(cursor) == []  # the second change waits for the first
        thread.join(timeout=10)
    assert registered and [(c.package.model_version, c.status) for c in registry.changes(cursor)] == [
        ("v-one", APPROVED), ("v-two", PENDING)]


def test_an_unreachable_registry_is_a_clear_error(moto):
    from resources.postgres import ExternalPostgresDatabase

    port = free_port()  # nothing listens there once the probe socket is closed
    local = LocalModelRegistry(db=ExternalPostgresDatabase(url=f"postgresql://nobody@127.0.0.1:{port}/none"))
    with pytest.raises(RegistryError, match="the model registry's database is unreachable"):
        local.changes(None)
    remote = SageMakerModelRegistry(region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryError, match="cannot list model package group credit-dev-models"):
        remote.changes(None)
