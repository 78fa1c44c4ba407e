"""The commit ledger (pipeline/storage/ledger.py): the markers stay the truth, the ledger only saves
their GETs. Every case compares read_commits with the markers read one by one, on a folder and on S3."""

from __future__ import annotations

import logging

import pytest

from pipeline.storage import commit as commit_module
from pipeline.storage import ledger as ledger_module
from pipeline.storage.layout import LEDGER_PREFIX, MARKER_PREFIX, is_run_output_key, marker_key
from pipeline.storage.ledger import LedgerWriter, fold_into_ledger, read_commits, rebuild_ledger
from tests.test_storage import build_shard, store  # noqa: F401 - the store fixture (local and s3)

pytest_plugins = ["s3_fixtures"]


def commit(store, tmp_path, shard_id: int, attempt: str):  # noqa: F811 - the fixture's name
    files = build_shard(tmp_path, shard_id, attempt)
    return store.commit_shard(shard_id, attempt_id=attempt, **files)


def markers_one_by_one(store) -> dict[int, str]:  # noqa: F811
    """{shard id: attempt id} from a GET of every listed marker: the truth the ledger must agree with."""
    found = {}
    for info in store.list(MARKER_PREFIX):
        marker = commit_module.read_marker(store, int(info.key.split("-")[1].split(".")[0]))
        found[marker.shard_id] = marker.attempt_id
    return found


def attempts(commits) -> dict[int, str]:
    return {shard_id: marker.attempt_id for shard_id, marker in commits.markers.items()}


@pytest.fixture
def marker_gets(monkeypatch):
    """How many marker GETs the code under test makes."""
    calls = []
    real = ledger_module._get_markers
    monkeypatch.setattr(ledger_module, "_get_markers", lambda s, infos: calls.extend(infos) or real(s, infos))
    return calls


def test_a_folded_ledger_replaces_every_marker_get(store, tmp_path, marker_gets):  # noqa: F811
    for shard_id in range(5):
        commit(store, tmp_path, shard_id, f"a{shard_id}")
    first = read_commits(store)
    assert attempts(first) == markers_one_by_one(store) == {n: f"a{n}" for n in range(5)}
    assert len(first.unledgered) == 5 and len(marker_gets) == 5
    fold_into_ledger(store, first.unledgered, first.ledger_files)
    marker_gets.clear()
    second = read_commits(store)
    assert attempts(second) == attempts(first) and second.unledgered == [] and marker_gets == []
    assert second.markers == first.markers  # the same ShardMarker values, summaries included


def test_a_lagging_ledger_reads_only_the_newer_markers(store, tmp_path, marker_gets):  # noqa: F811
    for shard_id in range(3):
        commit(store, tmp_path, shard_id, f"a{shard_id}")
    commits = read_commits(store)
    fold_into_ledger(store, commits.unledgered, commits.ledger_files)
    # committed after the fold (a crash between a marker and the driver's next ledger write looks the same)
    commit(store, tmp_path, 3, "late3")
    commit(store, tmp_path, 7, "late7")
    marker_gets.clear()
    lagging = read_commits(store)
    assert (
        attempts(lagging) == markers_one_by_one(store) == {0: "a0", 1: "a1", 2: "a2", 3: "late3", 7: "late7"}
    )
    assert sorted(info.key for info in marker_gets) == [marker_key(3), marker_key(7)]


def test_a_damaged_ledger_file_is_skipped_and_the_markers_decide(store, tmp_path, caplog):  # noqa: F811
    for shard_id in range(3):
        commit(store, tmp_path, shard_id, f"a{shard_id}")
    commits = read_commits(store)
    (written,) = fold_into_ledger(store, commits.unledgered, [])
    store.put_bytes(written, b"not parquet at all")
    with caplog.at_level(logging.WARNING):
        damaged = read_commits(store)
    assert attempts(damaged) == {0: "a0", 1: "a1", 2: "a2"} and len(damaged.unledgered) == 3
    assert f"ledger file {written} is unreadable" in caplog.text
    assert rebuild_ledger(store) == 3
    assert [info.key for info in store.list(LEDGER_PREFIX)] != [written]
    assert read_commits(store).unledgered == []


def test_a_marker_removed_by_hand_is_not_committed_whatever_the_ledger_says(store, tmp_path, caplog):  # noqa: F811
    for shard_id in range(3):
        commit(store, tmp_path, shard_id, f"a{shard_id}")
    commits = read_commits(store)
    fold_into_ledger(store, commits.unledgered, [])
    store.delete([marker_key(1)])
    with caplog.at_level(logging.WARNING):
        after = read_commits(store)
    assert attempts(after) == markers_one_by_one(store) == {0: "a0", 2: "a2"}
    assert f"the ledger lists {marker_key(1)}, which no longer exists" in caplog.text


def test_a_marker_written_again_wins_over_its_ledger_entry(store, tmp_path, caplog):  # noqa: F811
    commit(store, tmp_path, 0, "first")
    commits = read_commits(store)
    fold_into_ledger(store, commits.unledgered, [])
    store.delete([marker_key(0)])
    commit(store, tmp_path, 0, "again")  # same size of marker, other content
    with caplog.at_level(logging.WARNING):
        after = read_commits(store)
    assert attempts(after) == markers_one_by_one(store) == {0: "again"}
    assert "the ledger disagrees with" in caplog.text


def test_many_small_folds_merge_by_size_tier_and_keep_every_marker(store, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ledger_module, "TIER_FILES", 3)  # tiers: 1-2 entries, 3-8, 9-26, ...
    files: list[str] = []
    for shard_id in range(10):
        result = commit(store, tmp_path, shard_id, f"a{shard_id}")
        files = fold_into_ledger(store, [result.ledger_entry], files)
    listed = [info.key for info in store.list(LEDGER_PREFIX)]
    # 10 single folds: three merges of 3 singles into files of 3, then one of those into a file of 9
    assert listed == sorted(files) and sorted(ledger_module._name_field(key, 2) for key in files) == [1, 9]
    commits = read_commits(store)
    assert commits.unledgered == [] and attempts(commits) == markers_one_by_one(store)
    assert len(commits.markers) == 10


def test_the_commit_result_gives_the_entry_a_listing_would(store, tmp_path):  # noqa: F811
    result = commit(store, tmp_path, 4, "a4")
    (listed,) = read_commits(store).unledgered
    assert result.ledger_entry.matches(store.head(marker_key(4)))
    assert (result.ledger_entry.key, result.ledger_entry.size) == (listed.key, listed.size)
    lost = commit(store, tmp_path, 4, "b4")  # a late attempt: the winner's marker, as listed
    assert not lost.won and lost.ledger_entry.matches(store.head(marker_key(4)))


def test_the_writer_folds_every_n_commits_and_on_flush(store, tmp_path):  # noqa: F811
    writer = LedgerWriter(store, [], every=2, interval_s=3600)
    for shard_id in range(3):
        writer.add(commit(store, tmp_path, shard_id, f"a{shard_id}").ledger_entry)
    assert len(store.list(LEDGER_PREFIX)) == 1 and len(read_commits(store).unledgered) == 1
    writer.flush()
    assert len(store.list(LEDGER_PREFIX)) == 2 and read_commits(store).unledgered == []


def test_restart_deletes_the_ledger_too():
    assert is_run_output_key("_ledger/ledger-00000003-000000512-0123abcd.parquet")
    assert not is_run_output_key("_ledger/notes.txt")
