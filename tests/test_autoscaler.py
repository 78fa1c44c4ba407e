"""Ray's real autoscaler adds GPU workers for the pool's pending actors.

Ray's fake multi-node provider (`ray/autoscaler/_private/fake_multi_node`) runs the real autoscaler
(monitor, resource demand scheduler, node launcher) and starts each "node" as local Ray processes. Its
helper `ray.cluster_utils.AutoscalingCluster` is not used: its start/shutdown run `ray stop --force`,
which would kill every Ray on the machine. The head is started here with `ray start --head
--autoscaling-config`, with its own temp folder and port, in its own session; the fake nodes the
autoscaler launches live in that session, and the cleanup kills exactly that session's processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from run_fixtures import build_manifest, fake_config, shard_rows

from manifests.read import read_manifest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GPU_WORKERS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_config(port: int) -> dict:
    """A head without GPUs and a GPU worker type from 0 to GPU_WORKERS nodes of one GPU each."""
    empty_lists = [
        "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
        "head_start_ray_commands", "worker_start_ray_commands", "rsync_exclude", "rsync_filter",
    ]  # fmt: skip
    return {
        "cluster_name": "stylegen-autoscaler-test",
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",
        },
        "auth": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 100 * 1024**2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": GPU_WORKERS,
            },
        },
        "head_node_type": "ray.head.default",
        "max_workers": GPU_WORKERS,
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
    }


def session_pids(session_id: int) -> list[int]:
    """The live processes of that session (a zombie has exited: it only waits for its parent)."""
    listing = subprocess.run(
        ["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True
    ).stdout
    pids = []
    for line in listing.splitlines():
        pid, sid, stat = line.split()
        if int(sid) == session_id and int(pid) != os.getpid() and not stat.startswith("Z"):
            pids.append(int(pid))
    return pids


def stop_session(session_id: int, grace_s: float = 2) -> None:
    """SIGTERM, then SIGKILL to what is left after `grace_s`, to the processes of that session only
    (never `ray stop`). The GCS and the runtime-env agents outlast a SIGTERM by more than 10 s: a longer
    grace would only wait."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        for pid in session_pids(session_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while session_pids(session_id) and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture
def autoscaling_head():
    """(address, env): the head's address and the environment for processes that join it. Ray's
    auth mode is process-wide state, so only child processes join this cluster, never the test's."""
    folder = Path(tempfile.mkdtemp(prefix="sg-as-"))  # short: Ray's socket paths live under it
    port = free_port()
    config = folder / "cluster.json"
    config.write_text(json.dumps(cluster_config(port)))
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_TMPDIR": str(folder),
        "PYTHONPATH": str(REPO),
        "RAY_AUTH_MODE": "disabled",  # the driver (this process) has no copy of a generated token
    }
    ray_cli = Path(sys.executable).with_name("ray")
    command = [
        str(ray_cli), "start", "--head", f"--autoscaling-config={config}", "--num-gpus=0", "--num-cpus=1",
        f"--port={port}", "--node-ip-address=127.0.0.1", f"--temp-dir={folder}", "--include-dashboard=false",
        "--disable-usage-stats",
    ]  # fmt: skip
    head = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = head.communicate(timeout=120)
        assert head.returncode == 0, output.decode(errors="replace")[-3000:]
        yield f"127.0.0.1:{port}", env
    finally:
        if head.poll() is None:
            head.kill()
        stop_session(head.pid)
        shutil.rmtree(folder, ignore_errors=True)


GPU_NODES = """
import json, ray
ray.init(include_dashboard=False, log_to_driver=False)
print(json.dumps(sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU"))))
"""


def test_pending_actors_make_the_autoscaler_add_gpu_workers(autoscaling_head, tmp_path):
    address, env = autoscaling_head
    manifest = build_manifest(tmp_path, rows=48)
    output = tmp_path / "out"
    config_file = tmp_path / "run.yaml"
    config = fake_config(**{"generator.fake.latency_s": 0.05})  # 8 shards
    config_file.write_text(yaml.safe_dump(config.to_dict()))

    command = [sys.executable, "-m", "pipeline.cli.app", "run", str(manifest), "--output", str(output)]
    command += ["--config", str(config_file), "--actors", str(GPU_WORKERS), "--address", address]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]

    summary = json.loads((output / "summary.json").read_text())
    assert (summary["shards_committed"], summary["kept"], summary["failed"]) == (8, 48, 0)
    assert summary["actor_timeline"][0][1:] == [0, GPU_WORKERS]  # requested before any GPU existed
    assert summary["actors_peak"] == GPU_WORKERS
    planned = read_manifest(str(manifest)).column("uid").to_pylist()
    rows = shard_rows(output)
    assert Counter(row["uid"] for row in rows) == Counter(planned)
    # the shards ran on the GPU workers the autoscaler launched, not on the GPU-less head
    nodes = subprocess.run(
        [sys.executable, "-c", GPU_NODES],
        env={**env, "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    gpu_nodes = set(json.loads(nodes.stdout.strip().splitlines()[-1]))
    assert len(gpu_nodes) == GPU_WORKERS
    assert {row["node_id"] for row in rows} <= gpu_nodes and len({row["node_id"] for row in rows}) >= 1
