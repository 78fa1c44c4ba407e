"""What a run prints: only stylegen's own lines (Ray's go to the run log), no escape codes when piped,
nothing cut at 80 columns, a bar that never counts a shard twice, and one line where Ray would print
pages (a cluster that wants a token)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from run_fixtures import build_manifest, fake_config

from manifests.cli_format import PIPED_WIDTH, make_console
from pipeline.run.progress import RunProgress, summary_table
from pipeline.run.summary import RunSummary

REPO = Path(__file__).resolve().parents[1]


def test_a_committed_shard_is_not_also_counted_in_flight():
    """The heartbeats said shard 0 had 6 images done; it then commits its 6 rows before the next poll.
    Counted in flight and committed at once, the bar showed 15 and then fell back to 9."""
    progress = RunProgress(2, 12, console=Console(file=open(os.devnull, "w")), live=False)  # noqa: SIM115
    shown = []

    def step(call, *args):
        call(*args)
        shown.append(progress.shown_images)

    step(progress.images_in_flight, {0: 6, 1: 3})
    step(progress.shard_done, 0, 6, 5, 1, 0)  # the scheduler's next poll has not come yet
    step(progress.images_in_flight, {1: 3})
    step(progress.images_in_flight, {1: 0})  # shard 1 failed an attempt and starts again
    step(progress.images_in_flight, {1: 5})
    step(progress.shard_done, 1, 6, 6, 0, 0)
    assert shown == [9, 9, 9, 9, 11, 12]
    assert (progress.done_shards, progress.committed_images, progress.kept, progress.rejected) == (
        2,
        12,
        11,
        1,
    )


def test_piped_output_is_not_cut_at_80_columns(tmp_path):
    summary = RunSummary(
        output="s3://bucket/" + "a-rather-long-prefix/" * 5, shards_planned=2, shards_resumed=0,
        shards_committed=2, shards_failed=0, rows=12, kept=10, rejected=2, failed=0, images_this_run=12,
        elapsed_s=3.0, images_per_s=4.0, actors=2, config_fingerprint="c", plan_fingerprint="p",
        log_uri="s3://bucket/" + "a-rather-long-prefix/" * 5 + "logs/run-20260101T000000000000Z.log",
    )  # fmt: skip
    with open(tmp_path / "piped.txt", "w") as piped:
        console = make_console()
        console.file = piped  # not a terminal
        assert not console.is_terminal and console.width == PIPED_WIDTH
        console.print(summary_table(summary))
    text = (tmp_path / "piped.txt").read_text()
    assert summary.log_uri in text and "…" not in text
    assert re.search(r"GPUs per actor +│ +1 │", text)


def test_a_cluster_that_wants_a_token_gets_one_line_with_the_hint():
    from ray.exceptions import AuthenticationError

    from actors.cluster import connection_failure

    def chained() -> ConnectionError:  # how ray.init reports it: ConnectionError from RuntimeError from ...
        try:
            try:
                raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing")
            except AuthenticationError as error:
                raise RuntimeError("Failed to connect to GCS. Last connection error: ...") from error
        except RuntimeError as error:
            try:
                raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from error
            except ConnectionError as outer:
                return outer

    message = connection_failure("10.0.0.1:6379", chained())
    assert message == (
        "the Ray cluster at 10.0.0.1:6379 requires an authentication token: set RAY_AUTH_MODE=token and "
        "the cluster's token in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH)"
    )
    other = connection_failure("10.0.0.1:6379", ConnectionError("Failed to connect\ntraceback..."))
    assert other == "cannot connect to the Ray cluster at 10.0.0.1:6379: Failed to connect"


def _run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.cli.app", "run", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "", "TERM": "xterm-256color"}
    env.pop("RAY_AUTH_MODE", None)  # Ray's notice about token authentication must not reach the console
    process = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever its local Ray left behind
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


RAY_MARKS = ("(raylet)", "WARNING", "authentication_token", "gcs_client", "core_worker", "INFO ", "ray.")


@pytest.mark.slow
def test_a_piped_run_prints_only_stylegen_lines(tmp_path):
    manifest = build_manifest(tmp_path, rows=6)  # one shard
    config = fake_config(**{"generator.fake.fail_prompts": ["#3", "#5"]})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    output = tmp_path / "out"
    args = [str(manifest), "--output", str(output), "--config", str(config_file), "--actors", "2"]

    first = _run_cli(args)
    assert first.returncode == 0, first.stderr[-3000:]
    printed = first.stdout + first.stderr
    assert "\x1b" not in printed  # no colour or cursor codes in a pipe
    for mark in RAY_MARKS:
        assert mark not in printed, (mark, printed)
    lines = first.stderr.splitlines()
    fewer = (
        "running 1 actor(s), not 2: only 1 shard(s) left to run and an actor without a shard would "
        "only load models"
    )
    table_at = next(index for index, line in enumerate(lines) if "stylegen run: " in line)
    assert fewer in lines[:table_at]
    assert str(output / "logs") in first.stderr  # the log path whole, not cut at 80 columns
    assert "2 row(s) failed; most frequent reasons:" in first.stderr
    reason = " x generation: InjectedFailure: fake generator: injected failure for uid "
    assert first.stderr.count(reason) == 2  # each row's own reason, with its count
    log = next((output / "logs").glob("run-*.log")).read_text()
    assert "authentication_token" in log or "Token authentication" in log  # Ray's notice went here

    again = _run_cli(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.strip().startswith(f"nothing to do: all 1 shards of {output} are already committed")
    assert "images/s" not in again.stderr and "\x1b" not in again.stderr
