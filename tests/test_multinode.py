"""Multi-node rehearsal of the distributed run: a `ray.cluster_utils.Cluster` on this machine (a head
without GPUs and two nodes with two logical GPUs each), the driver connecting to it by address (so the
project ships to the nodes as a runtime_env), and one GPU node removed mid-run.

Where each actor runs comes from the actors themselves: `GeneratorActor.ready()` reports
`ray.get_runtime_context().get_node_id()`, and the scheduler keeps that answer in the pool's slots;
the test reads it through a pool subclass that only records the pool it was given.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from run_fixtures import build_manifest, fake_config, recording_pools, reference_tars

from manifests.read import read_manifest
from pipeline.run.job import run_job

pytestmark = pytest.mark.slow

GPUS_PER_NODE = 2
ROWS, SHARD_SIZE = 120, 6  # 20 shards
LATENCY_S = 0.12  # per image: a shard takes ~0.7 s, the whole run several seconds
REMOVE_AFTER_MARKERS = 2  # remove a node once this many shards have committed


@pytest.fixture
def cluster(no_shared_ray, monkeypatch):
    """A head without GPUs and two GPU nodes. Its Ray temp folder is private: a Cluster records its
    address as "the latest cluster" there, and a plain ray.init() elsewhere would connect to it."""
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = Path(tempfile.mkdtemp(prefix="stylegen-multinode-"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False}
    )
    try:
        gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=GPUS_PER_NODE) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, gpu_nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()  # this cluster's own processes only; never `ray stop`
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_run_spreads_over_two_gpu_nodes_and_survives_losing_one(cluster, tmp_path, monkeypatch):
    import ray

    ray_cluster, gpu_nodes = cluster
    manifest = build_manifest(tmp_path, rows=ROWS)
    output = tmp_path / "out"
    config = fake_config(**{"shard_size": SHARD_SIZE, "generator.fake.latency_s": LATENCY_S})
    pools = recording_pools(monkeypatch)
    seen: dict = {}

    def remove_a_gpu_node_mid_run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            infos = [slot.info for pool in pools for slot in pool.slots]
            markers = list((output / "_SUCCESS").glob("shard-*.json"))
            if len(infos) == 2 * GPUS_PER_NODE and all(infos) and len(markers) >= REMOVE_AFTER_MARKERS:
                break
            time.sleep(0.02)
        else:
            return
        seen["actor_nodes"] = {info["actor_index"]: info["node_id"] for info in infos}
        driver_node = ray.get_runtime_context().get_node_id()
        victim = next(node for node in reversed(gpu_nodes) if node.node_id != driver_node)
        seen["victim"] = victim.node_id
        seen["removing_at"] = time.time()
        seen["markers_before"] = {
            path.name: json.loads(path.read_text())["attempt_id"]
            for path in (output / "_SUCCESS").glob("shard-*.json")
        }
        ray_cluster.remove_node(victim)  # kills the node's raylet and workers, and waits for them
        seen["removed"] = True

    remover = threading.Thread(target=remove_a_gpu_node_mid_run, daemon=True)
    remover.start()
    summary = run_job(
        str(manifest), str(output), config, actors=2 * GPUS_PER_NODE, address=ray_cluster.address, live=False
    )
    remover.join(10)

    # 1. the actors ran on both GPU nodes (never on the GPU-less head)
    gpu_node_ids = {node.node_id for node in gpu_nodes}
    assert seen.get("removed"), f"the node was never removed: {seen}"
    assert sorted(seen["actor_nodes"]) == [0, 1, 2, 3]
    assert set(seen["actor_nodes"].values()) == gpu_node_ids
    victim_actors = {index for index, node in seen["actor_nodes"].items() if node == seen["victim"]}
    assert len(victim_actors) == GPUS_PER_NODE

    # 2. the shards in flight on the removed node were rerun on the surviving one
    log = "\n".join(path.read_text() for path in sorted((output / "logs").glob("run-*.log")))
    deaths = list(re.finditer(r"shard (\d+): attempt \d+: actor (\d+) died", log))
    deaths += re.finditer(r"shard (\d+): resubmitted, not charged \(actor (\d+) was lost", log)
    assert deaths, log
    assert {int(death[2]) for death in deaths} <= victim_actors, log  # only the victim's actors died
    # losing a node is preemption, not a fault of its shards: they are resubmitted without being charged
    assert not re.search(r"attempt \d+: actor \d+ died", log) and "its node was lost" in log, log
    wins = {int(m[1]): m for m in re.finditer(r"shard (\d+) committed \(attempt ([\w-]+), ours\)", log)}
    markers = {path.name: path for path in (output / "_SUCCESS").iterdir()}
    rerun = set()
    for death in deaths:
        shard_id, name = int(death[1]), f"shard-{death[1].zfill(6)}.json"
        attempt_id = json.loads(markers[name].read_text())["attempt_id"]
        if name in seen["markers_before"]:  # it committed just before its actor died: the retry lost
            assert attempt_id == seen["markers_before"][name], log
            continue
        # its commit came from an attempt that returned after the death, when only the survivor was left
        assert wins[shard_id].start() > death.start() and wins[shard_id][2] == attempt_id, log
        assert markers[name].stat().st_mtime >= seen["removing_at"]
        rerun.add(shard_id)
    assert rerun, log

    # nothing lost: every shard committed once, every planned row in exactly one shard parquet
    assert (summary.shards_planned, summary.shards_committed, summary.shards_failed) == (20, 20, 0)
    assert (summary.kept, summary.failed, summary.actors) == (ROWS, 0, 2 * GPUS_PER_NODE)
    names = [f"shard-{shard_id:06d}" for shard_id in range(ROWS // SHARD_SIZE)]
    assert sorted(markers) == [f"{name}.json" for name in names]
    for name in names:
        marker = json.loads(markers[f"{name}.json"].read_text())
        assert marker["shard_id"] == int(name.removeprefix("shard-"))
        for key in (f"shards/{name}.tar", f"metadata/{name}.parquet"):  # the published files are the winner's
            assert hashlib.sha256((output / key).read_bytes()).hexdigest() == marker["files"][key]["sha256"]
    assert not [path for path in output.glob("_attempts/**/*") if path.is_file()]

    planned = read_manifest(str(manifest)).column("uid").to_pylist()
    assert len(set(planned)) == ROWS
    rows = [
        row for name in names for row in pq.read_table(output / "metadata" / f"{name}.parquet").to_pylist()
    ]
    assert Counter(row["uid"] for row in rows) == Counter(planned)
    assert {row["status"] for row in rows} == {"kept"}

    # nothing duplicated: each kept uid exactly once in the tars, which match a run without Ray
    tars = [str(output / "shards" / f"{name}.tar") for name in names]
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert Counter(sample["__key__"] for sample in samples) == Counter(planned)
    assert all({"png", "json"} <= set(sample) for sample in samples)
    expected = reference_tars(tmp_path, manifest, fake_config(shard_size=SHARD_SIZE), len(names))
    assert {path.name: path.read_bytes() for path in sorted((output / "shards").glob("*.tar"))} == expected
