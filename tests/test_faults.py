"""Fault scenarios end to end on local Ray (FakeGenerator with fixed latency): a killed actor, a hung
shard, rows that raise, a shard that crashes its actor every time, a killed driver."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from run_fixtures import build_manifest, fake_config, planned_uids, reference_tars, shard_rows

from manifests.read import read_manifest
from pipeline.run.job import run_job

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def kill_group(pgid: int) -> None:
    """Stop whatever a driver subprocess left behind, by its own process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def run_log(output: Path) -> str:
    return "\n".join(path.read_text() for path in sorted((output / "logs").glob("run-*.log")))


def assert_every_row_once(manifest: Path, output: Path) -> list[dict]:
    rows = shard_rows(output)
    assert sorted(row["uid"] for row in rows) == sorted(
        read_manifest(str(manifest)).column("uid").to_pylist()
    )
    return rows


def test_sigkill_of_an_actor_mid_shard(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=24)
    output, flags = tmp_path / "out", tmp_path / "flags"
    config = fake_config(**{"generator.fake.latency_s": 0.02})
    victim = None

    def kill_when_the_slow_row_runs() -> None:
        nonlocal victim
        flag = flags / f"{target}.hung"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (flag.exists() and flag.read_text()):
            time.sleep(0.05)
        if flag.exists():
            victim = int(flag.read_text())
            os.kill(victim, signal.SIGKILL)

    # the first time this row runs, its generation takes 5 s: long enough to be killed mid-shard
    target = planned_uids(manifest, 1)[2]
    config = fake_config(
        **{
            "generator.fake.latency_s": 0.02,
            "generator.fake.hang_uids": [target],
            "generator.fake.hang_s": 5.0,
            "generator.fake.hang_flag_dir": str(flags),
        }
    )
    killer = threading.Thread(target=kill_when_the_slow_row_runs)
    killer.start()
    summary = run_job(str(manifest), str(output), config, actors=2, live=False)
    killer.join()

    assert victim is not None
    rows = assert_every_row_once(manifest, output)
    assert all(row["status"] == "kept" for row in rows)
    assert (summary.shards_committed, summary.shards_failed) == (4, 0)
    log = run_log(output)
    assert re.search(r"shard 1: attempt 1: actor \d died \(ActorUnavailableError\); retrying", log), log


def test_a_hung_shard_is_killed_at_its_deadline_and_resubmitted(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=12)
    output = tmp_path / "out"
    uids = read_manifest(str(manifest)).column("uid").to_pylist()
    config = fake_config(
        **{
            "generator.fake.latency_s": 0.02,
            "generator.fake.hang_uids": [uids[5]],  # hangs (for an hour) the first time only
            "generator.fake.hang_flag_dir": str(tmp_path / "flags"),
            "execution.first_deadline_s": 3.0,  # a healthy shard here takes under a second
            "execution.min_deadline_s": 3.0,
        }
    )
    started = time.monotonic()
    summary = run_job(str(manifest), str(output), config, actors=2, live=False)
    assert time.monotonic() - started < 90
    rows = assert_every_row_once(manifest, output)
    assert all(row["status"] == "kept" for row in rows)
    assert (summary.shards_committed, summary.shards_failed) == (2, 0)
    log = run_log(output)
    assert "past its deadline); Ray restarts it" in log, log
    assert re.search(r"shard \d: attempt 1: deadline of \d+ s exceeded; retrying", log), log


def test_rows_that_raise_fail_and_a_row_that_always_crashes_its_actor_fails_alone(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=18)
    output = tmp_path / "out"
    raising = [planned_uids(manifest, 0)[1], planned_uids(manifest, 1)[4]]
    crasher = planned_uids(manifest, 2)[0]
    config = fake_config(
        **{
            "generator.fake.latency_s": 0.02,
            "generator.fake.fail_uids": raising,
            "generator.fake.crash_uids": [crasher],  # the process exits whenever this row generates
            "execution.max_attempts": 2,
        }
    )
    summary = run_job(str(manifest), str(output), config, actors=2, live=False)

    rows = {row["uid"]: row for row in assert_every_row_once(manifest, output)}
    # the shard failed both attempts, so it was rerun row by row: only the crashing row is failed
    reason = rows[crasher]["reason"]
    assert rows[crasher]["status"] == "failed"
    assert reason.startswith("this row failed its shard every time it ran (attempt 3: actor ")
    assert "died (ActorUnavailableError)" in reason
    for uid in raising:
        assert rows[uid]["status"] == "failed"
        assert (
            rows[uid]["reason"]
            == f"generation: InjectedFailure: fake generator: injected failure for uid {uid}"
        )
    assert all(row["status"] == "kept" for uid, row in rows.items() if uid not in {crasher, *raising})
    assert (summary.shards_committed, summary.shards_failed, summary.failed, summary.kept) == (3, 0, 3, 15)
    assert summary.failed_shard_errors == {}
    log = run_log(output)
    assert "shard 2: failed 2 times (attempt 2: actor " in log and "rerunning it one row at a time" in log


def test_sigkill_of_the_driver_then_rerun_gives_identical_tars(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=36)
    config = fake_config(**{"generator.fake.latency_s": 0.1})
    expected = reference_tars(tmp_path, manifest, fake_config(), shards=6)  # the tars of a run without Ray

    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    output = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli.app", "run", str(manifest), "--output", str(output)]
    # it joins the module's Ray (a Ray start of its own would cost seconds): its actors die with it
    address = ray_cluster.get_runtime_context().gcs_address
    command += ["--config", str(config_file), "--actors", "2", "--address", address]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    driver = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)  # its own process group
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((output / "_SUCCESS").glob("*.json")):
            assert driver.poll() is None, "the driver ended before committing anything"
            time.sleep(0.1)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        kill_group(driver.pid)
    committed_before = len(list((output / "_SUCCESS").glob("*.json")))
    assert 1 <= committed_before < 6

    # the rerun, in this process (on the module's Ray): what it resumes from is the killed driver's output
    rerun = run_job(str(manifest), str(output), config, actors=2, live=False)
    assert rerun.shards_resumed >= committed_before and rerun.shards_failed == 0
    assert rerun.shards_resumed + rerun.shards_committed == 6
    assert_every_row_once(manifest, output)
    for name, data in expected.items():
        assert (output / "shards" / name).read_bytes() == data, name
    assert len(list((output / "shards").glob("*.tar"))) == 6
    assert not list(output.glob("_attempts/**/*.tar"))  # finalize removed the killed attempts' uploads
