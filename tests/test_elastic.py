"""The elastic pool on a `ray.cluster_utils.Cluster` whose head has no GPU, as on an autoscaled cluster
(KubeRay / the Ray launcher with a GPU group starting at 0):

1. with no GPU node at all the run waits `capacity_timeout_s`, then stops with one clear line;
2. rerun on the same output with a target of 4 actors: GPU nodes join after it started (one with two
   GPUs, then two with one), one leaves mid-run. Every planned row lands exactly once, the tars are
   byte-identical to a run without Ray, the shards ran on three nodes (their parquets say where), no
   attempt was charged for the lost node, and summary.json records the actor counts over time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from run_fixtures import build_manifest, fake_config, reference_tars, shard_rows

from actors.health import CapacityTimeout
from manifests.read import read_manifest
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

ROWS, SHARD_SIZE = 480, 6  # 80 shards
LATENCY_S = 0.1  # per image: ~0.6 s a shard, ~24 s of work for the first node's two GPUs alone


@pytest.fixture
def gpu_less_cluster(no_shared_ray, monkeypatch):
    """A head with no GPU; the test adds GPU nodes. A private Ray temp folder (see test_multinode)."""
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = Path(tempfile.mkdtemp(prefix="stylegen-elastic-"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False}
    )
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()  # this cluster's own processes only; never `ray stop`
        shutil.rmtree(ray_tmp, ignore_errors=True)


def committed_nodes(output: Path) -> Counter:
    """node_id -> shards committed there, from the published shard parquets."""
    nodes: Counter = Counter()
    for path in (output / "metadata").glob("shard-*.parquet"):
        try:
            nodes[pq.read_table(path, columns=["node_id"]).column("node_id")[0].as_py()] += 1
        except (OSError, ValueError):  # being published right now
            continue
    return nodes


def wait_for(condition, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_gpu_nodes_join_and_leave_a_running_job(gpu_less_cluster, tmp_path):
    cluster = gpu_less_cluster
    manifest = build_manifest(tmp_path, rows=ROWS)
    output = tmp_path / "out"
    run = {"shard_size": SHARD_SIZE, "generator.fake.latency_s": LATENCY_S}
    # An actor waiting for a GPU has no start deadline (else these would be declared dead after 1 s)
    config = fake_config(**run, **{"execution.capacity_timeout_s": 1, "execution.actor_start_timeout_s": 1})

    # 1. no GPU ever comes: one clear error after capacity_timeout_s, nothing committed
    with pytest.raises(CapacityTimeout) as stopped:
        run_job(str(manifest), str(output), config, actors=4, address=cluster.address, live=False)
    message = str(stopped.value)
    assert "no generator actor was ready for 1 s (execution.capacity_timeout_s)" in message
    assert "4 actor(s) x 1 GPU still waiting" in message and "the cluster has 0 GPUs now" in message
    assert message.endswith("rerun the same command to resume")
    assert not list((output / "_SUCCESS").glob("*.json"))

    # 2. the same command (a generous capacity timeout), and GPU nodes join after it started. The run
    # goes on a thread: Cluster.add_node installs signal handlers, which only the main thread may do.
    config = fake_config(**run, **{"execution.capacity_timeout_s": 90})
    result: dict = {}

    def drive() -> None:
        try:
            result["summary"] = run_job(
                str(manifest), str(output), config, actors=4, address=cluster.address, live=False
            )
        except BaseException as error:
            result["error"] = error

    runner = threading.Thread(target=drive, daemon=True)
    runner.start()
    try:
        wait_for(lambda: len(list((output / "logs").iterdir())) == 2, "the second run to start")
        second_log = max((output / "logs").glob("run-*.log"))  # the names sort by start time
        # its actors are requested while no GPU exists
        wait_for(lambda: "GPU requested" in second_log.read_text(), "the second run to request its actors")
        a = cluster.add_node(num_cpus=1, num_gpus=2)
        wait_for(lambda: committed_nodes(output)[a.node_id] >= 1, "a shard on node a")
        b = cluster.add_node(num_cpus=1, num_gpus=1)
        c = cluster.add_node(num_cpus=1, num_gpus=1)
        # b leaves once b and c both worked: all four actors were ready at once
        wait_for(lambda: committed_nodes(output)[b.node_id] and committed_nodes(output)[c.node_id], "b and c")
        committed_before_removal = sum(committed_nodes(output).values())
        cluster.remove_node(b)  # preemption: its raylet and workers are killed
    finally:
        runner.join(240)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert committed_before_removal < ROWS // SHARD_SIZE, "node b left after the run had nothing left to do"

    # every planned row exactly once; the tars are the ones a run without Ray makes
    shards = ROWS // SHARD_SIZE
    assert (summary.shards_committed, summary.shards_failed, summary.kept, summary.failed) == (
        shards,
        0,
        ROWS,
        0,
    )
    planned = read_manifest(str(manifest)).column("uid").to_pylist()
    rows = shard_rows(output)
    assert Counter(row["uid"] for row in rows) == Counter(planned)
    tars = sorted(str(path) for path in (output / "shards").glob("*.tar"))
    assert Counter(sample["__key__"] for sample in wds.WebDataset(tars, shardshuffle=False)) == Counter(
        planned
    )
    expected = reference_tars(tmp_path, manifest, fake_config(shard_size=SHARD_SIZE), shards)
    assert {path.name: path.read_bytes() for path in sorted((output / "shards").glob("*.tar"))} == expected

    # the shards ran on the three GPU nodes (never the head), each parquet naming its node and actor
    by_node = committed_nodes(output)
    gpu_nodes = {a.node_id, b.node_id, c.node_id}
    assert set(by_node) == gpu_nodes and sum(by_node.values()) == shards, by_node
    assert all(row["actor_id"] for row in rows)
    # losing node b charged no attempt: every committed attempt is its shard's first
    markers = [json.loads(path.read_text()) for path in (output / "_SUCCESS").glob("*.json")]
    assert len(markers) == shards and all(m["attempt_id"].startswith("1-") for m in markers)
    log = "\n".join(path.read_text() for path in sorted((output / "logs").glob("run-*.log")))
    assert " died (" not in log, log

    # the actor counts over time: none ready at first, all four at the peak, three after b left
    assert (summary.actors, summary.actors_peak, summary.actors_final) == (4, 4, 3)
    saved = json.loads((output / "summary.json").read_text())
    timeline = saved["actor_timeline"]
    assert timeline[0][1:] == [0, 4] and [4, 0] in [entry[1:] for entry in timeline]
    assert timeline[-1][1:] == [3, 1]
    assert [entry[0] for entry in timeline] == sorted(entry[0] for entry in timeline)
