"""Elastic pool efficiency: GPU nodes join and leave a running job; how much of the GPU time present
turns into images, and how fast does a joining node get to work?

A `ray.cluster_utils.Cluster` with a GPU-less head (as an autoscaled cluster starts) and a schedule of
one-GPU nodes joining and leaving while the pool (target = the most GPUs the schedule ever has) runs
shards of the FakeGenerator (a fixed sleep per image stands in for the GPU).

- efficiency = images committed x latency / GPU-seconds present, where GPU-seconds present is the
  integral over the run of the actors ready (start-up excluded: an actor counts from the moment it
  answered its probe). Lost work (the in-flight shards of a node that left), scheduling gaps and the
  tail all lower it. Target >= 0.9.
- join_to_first_commit_s: median seconds from a node joining (add_node returned) to the first shard
  committed on it; join_to_ready_s: to its actor being ready (process start, imports, code shipping);
  ready_to_first_commit_s: from ready to its first commit (the pool's part: one shard's time + hand-off).

    python bench/bench_elastic.py [--latency 0.05] [--shard-size 16] [--shards 120]
        [--schedule "0:+2,8:+2,16:-1,22:+1"]   (steps after the first count from the first actor ready)

Ends with one line: efficiency=.. join_to_first_commit_s=.. join_to_ready_s=.. ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from run_fixtures import build_manifest, fake_config  # noqa: E402


def parse_schedule(text: str) -> list[tuple[float, int]]:
    """ "0:+2,8:+2,16:-1" -> [(0.0, 2), (8.0, 2), (16.0, -1)]: seconds after start, nodes added/removed."""
    steps = []
    for item in text.split(","):
        at, change = item.split(":")
        steps.append((float(at), int(change)))
    return sorted(steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.05, help="fake seconds per image")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--shards", type=int, default=120)
    parser.add_argument("--schedule", default="0:+2,8:+2,16:-1,22:+1", help="seconds:+/-nodes, ...")
    args = parser.parse_args()
    schedule = parse_schedule(args.schedule)
    most, nodes_now = 0, 0
    for _, change in schedule:
        nodes_now += change
        most = max(most, nodes_now)

    ray_tmp = tempfile.mkdtemp(prefix="bench-elastic-")
    os.environ["RAY_TMPDIR"] = ray_tmp  # a private Ray temp folder: nobody else's "latest cluster"
    import ray
    from ray.cluster_utils import Cluster

    from actors.cluster import start_ray
    from actors.deadlines import DeadlinePolicy
    from actors.pool import GeneratorPool
    from actors.scheduler import SchedulerHooks, ShardScheduler
    from pipeline.run.plan import plan_run, write_plan
    from pipeline.storage import open_store

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False}
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-elastic-out-"))
    try:
        manifest = build_manifest(folder, rows=args.shards * args.shard_size, styles=4)
        config = fake_config(
            shard_size=args.shard_size,
            **{
                "generator.fake.latency_s": args.latency,
                "generator.fake.size": 64,
                "execution.batch_size": 8,
            },
        )
        store = open_store(folder / "out")
        plan, _ = plan_run(str(manifest), config)
        write_plan(store, plan)
        start_ray(cluster.address, None)

        commits: list[tuple[float, str, int]] = []  # (time, node id, rows)
        first_ready: dict[str, float] = {}  # node id -> when its actor was first ready
        pool = GeneratorPool(config.model_dump_json(), store.uri, most)

        def actors_changed(ready: int, pending: int) -> None:
            now = time.monotonic()
            for slot in pool.slots:
                if slot.usable and slot.info:
                    first_ready.setdefault(slot.info["node_id"], now)

        hooks = SchedulerHooks(
            on_committed=lambda shard, result: commits.append(
                (time.monotonic(), result.node_id, result.rows)
            ),
            on_actors=actors_changed,
        )
        scheduler = ShardScheduler(pool, DeadlinePolicy(4.0, 600.0, 60.0), 3, 600.0, hooks)
        shards = {shard: plan.shard_sizes[shard] for shard in range(plan.num_shards)}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                scheduler.run(shards)
            except BaseException as error:
                errors.append(error)

        # The schedule runs on this thread (Cluster.add_node installs signal handlers: main thread only).
        runner = threading.Thread(target=run, daemon=True)
        started = time.monotonic()
        runner.start()
        joined: dict[str, float] = {}
        alive: list = []
        left = 0
        for at, change in schedule:
            # Later steps count from the first actor ready, so a slow start does not squeeze them together.
            while at > 0 and not first_ready and runner.is_alive():
                time.sleep(0.05)
            origin = min(first_ready.values()) if at > 0 else started
            while time.monotonic() - origin < at and runner.is_alive():
                time.sleep(0.05)
            if not runner.is_alive():
                break
            for _ in range(change):
                node = cluster.add_node(num_cpus=1, num_gpus=1)
                joined[node.node_id] = time.monotonic()
                alive.append(node)
            for _ in range(-change):
                # a node whose actor is working (preemption does not wait for a quiet moment)
                working = [node for node in alive if node.node_id in first_ready] or alive
                victim = working[0]
                alive.remove(victim)
                cluster.remove_node(victim)
                left += 1
        runner.join()
        ended = time.monotonic()
        pool.shutdown()
        if errors:
            raise errors[0]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # GPU-seconds present: the integral of ready actors over the run (1 GPU each)
    timeline = scheduler.actor_timeline
    gpu_seconds = sum(
        ready * ((timeline[i + 1][0] if i + 1 < len(timeline) else ended) - at)
        for i, (at, ready, _) in enumerate(timeline)
    )
    images = sum(rows for _, _, rows in commits)
    efficiency = images * args.latency / gpu_seconds
    first_commit = {}
    for at, node, _ in commits:
        first_commit.setdefault(node, at)
    to_commit = [first_commit[node] - at for node, at in joined.items() if node in first_commit]
    to_ready = [first_ready[node] - at for node, at in joined.items() if node in first_ready]
    # from ready to committed: the pool's part (the first shard's own time + the hand-off)
    ready_to_commit = [first_commit[node] - first_ready[node] for node in first_ready if node in first_commit]
    print(
        f"schedule {args.schedule} (seconds:+/-nodes of 1 GPU), fake {args.latency * 1000:.0f} ms/image, "
        f"{args.shard_size} images/shard, {args.shards} shards, pool target {most}"
    )
    print(f"wall {ended - started:.1f} s, images {images}, GPU-seconds present {gpu_seconds:.1f}")
    for node, at in joined.items():
        ready = f"{first_ready[node] - at:.1f}" if node in first_ready else "-"
        commit = f"{first_commit[node] - at:.1f}" if node in first_commit else "-"
        joined_at = f"{at - started:5.1f}"
        print(f"  node {node[:12]} joined at {joined_at} s: ready after {ready} s, first commit {commit} s")
    print(
        f"efficiency={efficiency:.3f} join_to_first_commit_s={statistics.median(to_commit):.2f} "
        f"join_to_ready_s={statistics.median(to_ready):.2f} "
        f"ready_to_first_commit_s={statistics.median(ready_to_commit):.2f} "
        f"images={images} gpu_seconds={gpu_seconds:.1f} "
        f"nodes_joined={len(joined)} nodes_left={left} latency_ms={args.latency * 1000:.0f}"
    )


if __name__ == "__main__":
    main()
