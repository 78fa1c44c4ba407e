"""sweep_attempts: the end-of-run cleanup that costs one LIST of `_attempts/`, never a listing of the
shards, and completes interrupted publishes and removes dead attempts as the full checks would."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.storage.commit import committed_shards, sweep_attempts
from pipeline.storage.layout import table_key, tar_key
from tests.test_storage import (  # noqa: F401 - store: the fixture
    assert_published,
    build_shard,
    commit_dying_after_one_publish,
    keys,
    store,
)

pytest_plugins = ["s3_fixtures"]


@pytest.fixture
def listed(store, monkeypatch):  # noqa: F811
    """The prefixes the code under test lists."""
    prefixes = []
    real = store.list
    monkeypatch.setattr(store, "list", lambda prefix="": prefixes.append(prefix) or real(prefix))
    return prefixes


def test_an_interrupted_publish_is_completed_from_the_attempts_listing(store, tmp_path, monkeypatch, listed):  # noqa: F811, E501
    winner = build_shard(tmp_path, 8, "winner")
    commit_dying_after_one_publish(store, 8, winner, monkeypatch)
    markers = committed_shards(store)
    listed.clear()
    sweep = sweep_attempts(store, markers, older_than=timedelta(0))
    assert (sweep.completed, sweep.removed, listed) == ([8], [], ["_attempts/"])
    assert_published(store, 8, winner, markers[8])
    assert keys(store, "_attempts/") == []


def test_dead_attempts_are_removed_once_old_enough_and_young_ones_stay(store, tmp_path, listed):  # noqa: F811
    crashed = build_shard(tmp_path, 2, "crashed")
    for key, path in ((tar_key(2), crashed["tar"]), (table_key(2), crashed["table"])):
        store.put_file(f"_attempts/shard-000002/crashed/{key}", path)
    rerun = store.commit_shard(2, attempt_id="rerun", **build_shard(tmp_path, 2, "rerun"))
    markers = committed_shards(store)
    listed.clear()
    young = sweep_attempts(store, markers, older_than=timedelta(hours=1))
    assert (young.completed, young.removed) == ([], [])
    old = sweep_attempts(store, markers, older_than=timedelta(0))
    assert sorted(old.removed) == [
        f"_attempts/shard-000002/crashed/{table_key(2)}",
        f"_attempts/shard-000002/crashed/{tar_key(2)}",
    ]
    assert set(listed) == {"_attempts/"}
    assert keys(store, "_attempts/") == [] and rerun.won


def test_an_attempt_that_committed_after_the_view_was_taken_keeps_its_files(store, tmp_path, monkeypatch):  # noqa: F811
    files = build_shard(tmp_path, 5, "late")
    with monkeypatch.context() as patch:  # marker written, publish not yet done
        patch.setattr(store, "publish", lambda *args: (_ for _ in ()).throw(RuntimeError("crash")))
        with pytest.raises(RuntimeError):
            store.commit_shard(5, attempt_id="late", **files)
    stale_view: dict = {}  # taken before shard 5 committed
    sweep = sweep_attempts(store, stale_view, older_than=timedelta(0))
    assert (sweep.completed, sweep.removed) == ([5], [])
    assert_published(store, 5, files, committed_shards(store)[5])
