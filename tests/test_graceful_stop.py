"""SIGTERM to a real `stylegen run` (a subprocess joining the suite's shared local Ray) drains and exits
143 with one line and no Ray crash dump, and a rerun of the same run (in this process, on that Ray)
finishes with tars byte-identical to a run without Ray; SIGINT then a second signal (no Ray needed):
the second exits at once; SIGTERM while Ray starts (its handlers stood in for ray.init's) stops with 143."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from run_fixtures import build_manifest, fake_config, reference_tars, shard_rows

from manifests.read import read_manifest
from pipeline.run.job import run_job
from pipeline.run.stop import RunStopped

REPO = Path(__file__).resolve().parents[1]
SHARDS = 8


def start(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    return subprocess.Popen(  # its own process group: whatever it leaves behind is killed with it
        command, cwd=REPO, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout_s: float = 180) -> str:
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return stderr


def markers(output: Path) -> list[Path]:
    return sorted((output / "_SUCCESS").glob("*.json"))


def wait_for_markers(process: subprocess.Popen, output: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(markers(output)) < count:
        assert process.poll() is None, f"the run ended before committing {count} shards"
        assert time.monotonic() < deadline, "no commit in 120 s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_drains_and_exits_143_then_a_rerun_finishes_byte_identical(ray_cluster, tmp_path):
    manifest = build_manifest(tmp_path, rows=6 * SHARDS)
    config = fake_config(**{"generator.fake.latency_s": 0.1})  # about 0.6 s a shard
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    output = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli.app", "run", str(manifest), "--output", str(output)]
    # it joins the module's Ray (a Ray start of its own would cost seconds); ray.init installs its
    # SIGTERM handlers in a driver that connects as in one that starts Ray
    command += ["--config", str(config_file), "--actors", "2"]
    command += ["--address", ray_cluster.get_runtime_context().gcs_address]

    # 1. SIGTERM after the first commit: drains, one line, exit 143, the log says why
    driver = start(command)
    wait_for_markers(driver, output, 1)
    driver.send_signal(signal.SIGTERM)
    stderr = finish(driver)
    assert driver.returncode == 143, stderr[-3000:]
    assert "*** SIGTERM received" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    line = re.search(r"stylegen: stopped by SIGTERM: (\d+) of 8 shards committed \((\d+) by this run\); "
                     r"rerun the same command to resume", stderr)  # fmt: skip
    assert line, stderr[-3000:]
    committed = len(markers(output))
    assert int(line[1]) == int(line[2]) == committed and 1 <= committed < SHARDS
    log = "\n".join(path.read_text() for path in sorted((output / "logs").glob("run-*.log")))
    assert "SIGTERM received: stopping" in log and "run stopped by SIGTERM" in log

    # 2. the same run again finishes the rest: every row once, the tars of a run without Ray
    rerun = run_job(str(manifest), str(output), config, actors=2, live=False)
    assert (rerun.shards_resumed, rerun.shards_committed, rerun.shards_failed) == (
        committed,
        SHARDS - committed,
        0,
    )
    rows = shard_rows(output)
    planned = read_manifest(str(manifest)).column("uid").to_pylist()
    assert sorted(row["uid"] for row in rows) == sorted(planned)
    expected = reference_tars(tmp_path, manifest, fake_config(), SHARDS)
    assert {path.name: path.read_bytes() for path in sorted((output / "shards").glob("*.tar"))} == expected


SECOND_SIGNAL_SCRIPT = """
import sys, time
from pipeline.run.stop import StopSignals
with StopSignals() as stop:
    stop.interruptible = False  # like the scheduler: the first signal only asks
    print("ready", flush=True)
    while not stop.requested:
        time.sleep(0.01)
    print("draining", flush=True)
    time.sleep(60)  # a drain that would take long
print("not reached", flush=True)
"""


def test_a_second_signal_exits_at_once():
    process = subprocess.Popen(
        [sys.executable, "-c", SECOND_SIGNAL_SCRIPT],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGINT)  # Ctrl-C asks to stop, like SIGTERM
        assert process.stdout.readline() == "draining\n"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143 and time.monotonic() - started < 10
    assert stdout == "" and stderr.endswith(
        "\nstylegen: second SIGTERM: exiting now; rerun the same command to resume\n"
    )
    assert "SIGINT received: stopping" in stderr


def test_sigterm_while_ray_starts_stops_the_run_with_143(tmp_path, monkeypatch):
    import actors.cluster

    def ray_init_interrupted(address, num_gpus, num_cpus=None):
        """What ray.init does in the driver: its own SIGTERM handler (exit status 15 mid-start), then
        seconds of starting, during which the SIGTERM comes."""
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # Python runs the handler here
        return False  # a cluster we did not start: nothing to shut down

    monkeypatch.setattr(actors.cluster, "start_ray", ray_init_interrupted)
    monkeypatch.setattr(actors.cluster, "detect_gpus", lambda: 0)
    manifest = build_manifest(tmp_path, rows=6)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunStopped, match=r"stopped by SIGTERM: 0 of 1 shards committed") as stopped:
        run_job(str(manifest), str(tmp_path / "out"), fake_config(), actors=1, live=False)
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # ours were removed, and Ray's never installed
