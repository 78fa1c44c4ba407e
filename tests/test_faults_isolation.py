"""A slow or crashing row takes only itself, a passing storage fault takes nothing, and nothing a worker
or the failed-shard record raises stops the driver (local Ray, FakeGenerator)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from run_fixtures import build_manifest, fake_config, planned_uids, shard_rows

from actors.faults import StorageDown
from manifests.read import read_manifest
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

DEADLINE_S = 3  # a healthy shard here takes under a second, even on a loaded machine


def run_log(output: Path) -> str:
    return "\n".join(path.read_text() for path in sorted((output / "logs").glob("run-*.log")))


def rows_once(manifest: Path, output: Path) -> dict[str, dict]:
    rows = shard_rows(output)
    assert sorted(row["uid"] for row in rows) == sorted(
        read_manifest(str(manifest)).column("uid").to_pylist()
    )
    return {row["uid"]: row for row in rows}


def test_a_row_that_hangs_every_time_fails_alone(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=12)
    output = tmp_path / "out"
    hanger = planned_uids(manifest, 1)[2]
    config = fake_config(
        **{
            "generator.fake.latency_s": 0.02,
            "generator.fake.hang_uids": [hanger],
            "generator.fake.hang_every_time": True,
            "execution.max_attempts": 2,
            "execution.first_deadline_s": DEADLINE_S,
            "execution.min_deadline_s": DEADLINE_S,
        }
    )
    summary = run_job(str(manifest), str(output), config, actors=2, live=False)
    rows = rows_once(manifest, output)
    assert rows[hanger]["status"] == "failed"
    reason = rows[hanger]["reason"]
    assert reason.startswith(
        f"this row failed its shard every time it ran (attempt 3: deadline of {DEADLINE_S} s exceeded)"
    )
    assert all(row["status"] == "kept" for uid, row in rows.items() if uid != hanger)
    assert (summary.kept, summary.failed, summary.shards_failed) == (11, 1, 0)
    log = run_log(output)
    # Attempt 2's deadline may come from the observed pace (shard 0 done first), never under DEADLINE_S.
    pattern = r"shard 1: failed 2 times \(attempt 2: deadline of (\d+) s exceeded\); rerunning it one row"
    retried = re.search(pattern, log)
    assert retried and int(retried.group(1)) >= DEADLINE_S
    assert f"shard 1: row {hanger} isolated (attempt 3: deadline of {DEADLINE_S} s exceeded)" in log


def test_a_failed_shard_record_that_raises_leaves_the_shard_to_the_rerun_which_isolates_the_crash(
    ray_cluster, tmp_path, monkeypatch
):
    import pipeline.run.execute

    manifest = build_manifest(tmp_path, rows=12)
    output = tmp_path / "out"
    crasher = planned_uids(manifest, 0)[4]
    settings = {
        "generator.fake.latency_s": 0.02,
        "generator.fake.crash_uids": [crasher],
        "execution.max_attempts": 1,
        "execution.isolate_culprits": False,  # the whole shard is handed back as failed...
    }

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(pipeline.run.execute, "commit_failed_shard", broken)  # ...and recording it raises
    summary = run_job(str(manifest), str(output), fake_config(**settings), actors=2, live=False)
    assert (summary.shards_planned, summary.shards_committed, summary.failed) == (2, 1, 0)
    assert not (output / "_SUCCESS" / "shard-000000.json").exists()
    assert "shard 0: could not record its rows as failed (IndexError: list index out of range)" in run_log(
        output
    )

    monkeypatch.undo()
    settings["execution.isolate_culprits"] = True
    summary = run_job(str(manifest), str(output), fake_config(**settings), actors=2, live=False)
    rows = rows_once(manifest, output)
    assert rows[crasher]["status"] == "failed" and "died" in rows[crasher]["reason"]
    assert rows[crasher]["reason"].startswith(
        "this row failed its shard every time it ran (attempt 2: actor "
    )
    assert all(row["status"] == "kept" for uid, row in rows.items() if uid != crasher)
    assert (summary.shards_committed, summary.kept, summary.failed, summary.shards_failed) == (1, 11, 1, 0)


def block_storage_when_the_run_starts(output: Path, lasting: bool) -> threading.Thread:
    """Once run.json exists, make every commit fail (a file where the attempts folder goes): for good,
    or until the run has logged a storage failure and half a second more (the first retry, 1 s after
    the failure, then finds storage back)."""
    blocker = output / "_attempts"

    def block() -> None:
        deadline = time.monotonic() + 120
        while not (output / "run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        blocker.write_text("not a folder")
        if lasting:
            return
        while "storage failed" not in run_log(output) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        blocker.unlink()

    thread = threading.Thread(target=block, daemon=True)
    thread.start()
    return thread


def test_a_passing_storage_fault_is_waited_out_and_a_lasting_one_stops_the_run(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=12)
    config = fake_config(**{"generator.fake.latency_s": 0.05, "execution.max_attempts": 1})

    output = tmp_path / "passing"
    blocker = block_storage_when_the_run_starts(output, lasting=False)
    summary = run_job(str(manifest), str(output), config, actors=2, live=False)
    blocker.join()
    rows = rows_once(manifest, output)
    assert all(row["status"] == "kept" for row in rows.values())
    assert (summary.shards_committed, summary.kept, summary.failed) == (2, 12, 0)
    assert "storage failed (StorageError: cannot write" in run_log(output)
    assert "not charged, retrying in" in run_log(output)

    output = tmp_path / "lasting"
    blocker = block_storage_when_the_run_starts(output, lasting=True)
    lasting = fake_config(**{"generator.fake.latency_s": 0.05, "execution.storage_outage_s": 1})
    with pytest.raises(StorageDown, match=r"storage has been failing for \d+ s .* rerun the same command"):
        run_job(str(manifest), str(output), lasting, actors=2, live=False)
    blocker.join()
    assert not list(output.glob("_SUCCESS/*.json"))  # nothing recorded failed
    (output / "_attempts").unlink()
    summary = run_job(str(manifest), str(output), lasting, actors=2, live=False)
    assert all(row["status"] == "kept" for row in rows_once(manifest, output).values())
    assert (summary.shards_committed, summary.kept) == (2, 12)
