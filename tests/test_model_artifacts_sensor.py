"""`model_artifacts_sensor`: each complete version requested exactly once, on a local folder and on S3."""

import json
import uuid

import dagster as dg
import pytest

import recsys_assets as recsys
from recsys_assets.embeddings import ITEM_FILE, USER_FILE
from resources.model_registry import PENDING, LocalModelRegistry
from resources.pgvector import PgVectorStore
from tests.test_embeddings_files import publish


@pytest.fixture
def registry(app_db, request):
    """A registry environment of the test's own, with the version policy `newest`."""
    return LocalModelRegistry(db=app_db, version_policy="newest", env=f"t{uuid.uuid4().hex[:10]}")


def tick(artifacts, registry, cursor=None):
    with dg.build_sensor_context(cursor=cursor, resources={"artifacts": artifacts, "registry": registry}) as context:
        result = recsys.model_artifacts_sensor(context)
    return result, result.cursor


def requested(result) -> list[str]:
    return [r.tags["model_version"] for r in result.run_requests or []]


@pytest.fixture(params=["local", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_artifacts")


def test_each_complete_version_once_whatever_the_upload_order(store, registry):
    result, cursor = tick(store, registry)
    assert requested(result) == [] and result.skip_reason  # nothing there yet
    publish(store, "20260101-000000-bbbbbbbb")
    result, cursor = tick(store, registry, cursor)
    assert requested(result) == ["20260101-000000-bbbbbbbb"]
    assert [r.run_key[:len("embeddings-20260101-000000-bbbbbbbb")] for r in result.run_requests] == [
        "embeddings-20260101-000000-bbbbbbbb"]
    assert result.run_requests[0].run_config["ops"]["embeddings_tables"]["config"]["version"] == "20260101-000000-bbbbbbbb"

    result, cursor = tick(store, registry, cursor)
    assert requested(result) == []  # an unchanged bucket requests nothing

    # half-uploaded: the manifest is there but one file it lists is not -> wait
    publish(store, "20260101-000000-aaaaaaaa", skip=(USER_FILE,))
    result, cursor = tick(store, registry, cursor)
    assert requested(result) == []
    # it completes later; its key sorts before the version already seen, and it is still not skipped
    store.write_text(f"ml-artifacts/20260101-000000-aaaaaaaa/{USER_FILE}", "id,embedding\n1,[1,2,3,4]\n")
    result, cursor = tick(store, registry, cursor)
    assert requested(result) == ["20260101-000000-aaaaaaaa"]

    # a restart: a new evaluation with the stored cursor replays nothing
    result, cursor = tick(store, registry, json.loads(json.dumps(cursor)))
    assert requested(result) == []
    assert set(dict(json.loads(cursor)["requested"])) == {"20260101-000000-aaaaaaaa", "20260101-000000-bbbbbbbb"}

    # a version republished in place (a corrected file) is requested again, under a new run key
    store.write_text(f"ml-artifacts/20260101-000000-bbbbbbbb/{ITEM_FILE}", "id,embedding\nS1,[1,2,3,4]\n")
    result, cursor = tick(store, registry, cursor)
    assert requested(result) == ["20260101-000000-bbbbbbbb"]
    result, cursor = tick(store, registry, cursor)
    assert requested(result) == []


def test_an_unreadable_manifest_is_reported_not_loaded(store, registry):
    store.write_text(f"ml-artifacts/broken/{ITEM_FILE}", "id,embedding\n")
    store.write_text("ml-artifacts/broken/manifest.json", "{not json")
    problems = []
    from recsys_assets.embeddings import complete_versions

    assert complete_versions(store, problems) == {}
    assert len(problems) == 1 and "broken/manifest.json is not readable" in problems[0]
    result, _ = tick(store, registry)  # the sensor passes it over: nothing registered, nothing loaded
    assert requested(result) == [] and registry.find("recsys", "broken") is None


def test_files_without_a_manifest_or_unlisted_layout_are_not_versions(store, registry):
    store.write_text(f"ml-artifacts/loose/{ITEM_FILE}", "id,embedding\n")
    store.write_text("ml-artifacts/readme.txt", "not a version")
    publish(store, "only-items", manifest_files=[ITEM_FILE])
    result, _cursor = tick(store, registry)
    assert requested(result) == []


def test_a_requested_run_loads_that_version(local_artifacts, app_db, registry):
    publish(local_artifacts, "hand-made-1", items=4, users=3, rows={"item_embeddings": 4, "user_embeddings": 3})
    result, _cursor = tick(local_artifacts, registry)
    [request] = result.run_requests
    package = registry.find("recsys", "hand-made-1")  # published by hand: registered by the sensor
    assert package.status == PENDING and package.model_data_url == local_artifacts.uri("ml-artifacts/hand-made-1")
    pgvector = PgVectorStore(db=app_db)
    outcome = dg.materialize(
        [recsys.recsys_model, recsys.embeddings_tables],
        selection=dg.AssetSelection.assets(recsys.embeddings_tables),
        resources={"artifacts": local_artifacts, "pgvector": pgvector, "sagemaker": None, "registry": registry},
        run_config=request.run_config,
    )
    assert outcome.success
    assert pgvector.active_version("item_emb") == "hand-made-1" and pgvector.active_version("user_emb") == "hand-made-1"
    assert pgvector.row_count("item_emb") == 4 and pgvector.row_count("user_emb") == 3
    pgvector.close()


def test_with_the_approved_policy_new_versions_are_registered_and_wait(local_artifacts, registry):
    strict = LocalModelRegistry(db=registry.db, env=registry.env, version_policy="approved")
    publish(local_artifacts, "v-approve-me")
    result, cursor = tick(local_artifacts, strict)
    package = strict.find("recsys", "v-approve-me")
    assert package.status == PENDING
    # the tick says what it did: which version it registered, where, and what happens next
    message = result.skip_reason.skip_message
    assert not result.run_requests
    assert f"registered v-approve-me (new): {package.group} version {package.version}, PendingManualApproval" in message
    assert "Approve a version to load its embeddings" in message
    result, _ = tick(local_artifacts, strict, cursor)
    assert not result.run_requests and "nothing new under" in result.skip_reason.skip_message
