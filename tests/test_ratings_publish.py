"""Publishing a run's output (`ratings_etl.publish_staged` / `publish`), the step every engine ends with: the
previous output stays whole whatever fails before the manifest is written, nothing is rolled back after, and two
runs at once never leave a manifest that lists a missing file."""

from __future__ import annotations

import os
import threading
import time

import pytest
from pydantic import PrivateAttr

from recsys_assets import ratings_etl
from resources.artifacts import LocalArtifactStore

PREFIX = "ratings_ml_training"
COUNTS = {"rows": 4, "customers": 2, "products": 2, "rating_histogram": {"5": 4}}


def stage(store, run_tag: str, customers=(103, 112)) -> None:
    for customer in customers:
        store.write_bytes(f"{ratings_etl.staging_prefix(PREFIX, run_tag)}/customernumber={customer}/part-0.parquet",
                          f"{run_tag}:{customer}".encode())


def publish(store, run_tag: str) -> dict:
    stage(store, run_tag)
    return ratings_etl.publish_staged(store, PREFIX, run_tag, COUNTS, "source", "spark")


def readable(store) -> dict[str, bytes]:
    """What a reader following the manifest gets; fails if the manifest lists a missing file."""
    manifest = store.read_json(f"{PREFIX}/_manifest.json")
    return {relative: store.read_bytes(f"{PREFIX}/{relative}") for relative in manifest["files"]}


def test_a_publish_replaces_the_previous_output_and_removes_its_staging(local_artifacts):
    publish(local_artifacts, "aaaa")
    result = publish(local_artifacts, "bbbb")
    assert sorted(readable(local_artifacts).values()) == [b"bbbb:103", b"bbbb:112"]
    assert result["stale_files_removed"] == 2
    assert not local_artifacts.list(f"{PREFIX}/_staging/")
    assert local_artifacts.exists(f"{PREFIX}/_SUCCESS")


class Interrupted(BaseException):
    pass


class FailingStore(LocalArtifactStore):
    """Fails the `fail_on`-th call to `method` (`move` or `delete`)."""

    method: str = "move"
    fail_on: int = 1
    interrupt: bool = False  # raise as Dagster does when a run is stopped (a BaseException), not an OSError
    _calls: list = PrivateAttr(default_factory=lambda: [0])

    def _maybe_fail(self, name: str) -> None:
        if name == self.method:
            self._calls[0] += 1
            if self._calls[0] == self.fail_on:
                raise (Interrupted if self.interrupt else OSError)(f"{name} failed (injected)")

    def move(self, source: str, target: str) -> str:
        self._maybe_fail("move")
        return super().move(source, target)

    def delete(self, keys) -> int:
        self._maybe_fail("delete")
        return super().delete(keys)


def test_a_failure_while_moving_leaves_the_previous_output_whole_and_marked_complete(tmp_path):
    root = str(tmp_path / "artifacts")
    publish(LocalArtifactStore(root=root), "aaaa")
    before = readable(LocalArtifactStore(root=root))
    failing = FailingStore(root=root, method="move", fail_on=2)
    with pytest.raises(OSError, match="injected"):
        publish(failing, "bbbb")
    store = LocalArtifactStore(root=root)
    assert readable(store) == before and store.exists(f"{PREFIX}/_SUCCESS")
    assert not [i.key for i in store.list(f"{PREFIX}/") if "bbbb" in i.key]  # neither staged nor moved


def test_a_failure_after_the_manifest_is_written_rolls_nothing_back(tmp_path):
    root = str(tmp_path / "artifacts")
    publish(LocalArtifactStore(root=root), "aaaa")
    failing = FailingStore(root=root, method="delete", fail_on=2)  # 1: _SUCCESS withdrawn; 2: the stale files
    result = publish(failing, "bbbb")
    store = LocalArtifactStore(root=root)
    assert sorted(readable(store).values()) == [b"bbbb:103", b"bbbb:112"] and store.exists(f"{PREFIX}/_SUCCESS")
    assert "injected" in result["stale_files_left"]
    publish(store, "cccc")  # the next run removes what was left: the replaced manifest's files, old or not
    assert {i.key.rsplit("/", 1)[-1] for i in store.list(f"{PREFIX}/customernumber=103/")} == {"part-cccc-00000.parquet",
                                                                                               "part-aaaa-00000.parquet"}


def test_files_of_a_killed_run_are_removed_once_a_day_old(local_artifacts):
    publish(local_artifacts, "aaaa")
    stage(local_artifacts, "dead")  # a run killed after staging ...
    orphan = f"{PREFIX}/customernumber=103/part-dead-00000.parquet"
    local_artifacts.write_bytes(orphan, b"dead")  # ... and one killed while moving
    publish(local_artifacts, "bbbb")
    assert local_artifacts.exists(orphan)  # young: it may be a run in progress
    day_old = time.time() - 25 * 3600
    for info in local_artifacts.list(f"{PREFIX}/"):
        if "dead" in info.key:
            os.utime(local_artifacts.local_path(info.key), (day_old, day_old))
    publish(local_artifacts, "cccc")
    assert not [i.key for i in local_artifacts.list(f"{PREFIX}/") if "dead" in i.key]


def test_two_runs_publishing_at_once_never_leave_a_manifest_listing_a_missing_file(local_artifacts):
    publish(local_artifacts, "aaaa")
    for attempt in range(20):
        tags = (f"x{attempt:03d}", f"y{attempt:03d}")
        errors = []

        def run(tag):
            try:
                publish(local_artifacts, tag)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(tag,)) for tag in tags]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert len(readable(local_artifacts)) == 2  # every file the winning manifest lists is there


def test_a_run_stopped_after_its_manifest_is_written_keeps_its_output(tmp_path):
    root = str(tmp_path / "artifacts")
    publish(LocalArtifactStore(root=root), "aaaa")
    with pytest.raises(Interrupted):
        publish(FailingStore(root=root, method="delete", fail_on=2, interrupt=True), "bbbb")
    assert sorted(readable(LocalArtifactStore(root=root)).values()) == [b"bbbb:103", b"bbbb:112"]
