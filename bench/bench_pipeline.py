"""Pipeline efficiency: does scheduling, input loading and committing hide behind generation?

The FakeGenerator sleeps a fixed time per image (a stand-in for the GPU: a sleep leaves the CPU free, so
8 fake GPUs fit on a small machine). With N actors the ideal throughput is N / latency images/s; the
pipeline's efficiency is achieved / ideal, measured in steady state on a warm pool (actor start-up and
model loading are a one-off per run, reported separately). Per-shard overhead is the generator-idle
time per shard: (wall x N - images x latency) / shards.

    python bench/bench_pipeline.py [--latency 0.05] [--shard-size 16] [--shards-per-actor 8]

Ends with one line: efficiency_1=.. efficiency_2=.. efficiency_4=.. efficiency_8=.. shard_overhead_ms=..
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import ray  # noqa: E402
from run_fixtures import build_manifest, fake_config  # noqa: E402

from actors.deadlines import DeadlinePolicy  # noqa: E402
from actors.pool import GeneratorPool  # noqa: E402
from actors.scheduler import SchedulerHooks, ShardScheduler  # noqa: E402
from pipeline.run.plan import plan_run, write_plan  # noqa: E402
from pipeline.storage import open_store  # noqa: E402

ACTOR_COUNTS = (1, 2, 4, 8)


def measure(actors: int, latency: float, shard_size: int, shards_per_actor: int, folder: Path) -> dict:
    manifest = build_manifest(
        folder, rows=actors * (shards_per_actor + 1) * shard_size, styles=4, name=f"manifest-{actors}.parquet"
    )
    config = fake_config(
        shard_size=shard_size,
        **{"generator.fake.latency_s": latency, "generator.fake.size": 64, "execution.batch_size": 8},
    )
    output = folder / f"out-{actors}"
    store = open_store(output)
    plan, _ = plan_run(str(manifest), config)
    write_plan(store, plan)

    started = time.perf_counter()
    pool = GeneratorPool(config.model_dump_json(), store.uri, actors)
    pool.wait_ready(timeout_s=300)
    results: list[dict] = []
    hooks = SchedulerHooks(on_committed=lambda shard, result: results.append(result))
    scheduler = ShardScheduler(pool, DeadlinePolicy(4.0, 600.0, 60.0), 3, 600.0, hooks)
    try:
        # One shard per actor first: start-up and first-call costs (a one-off per actor, like loading
        # models) are reported apart from the steady state.
        scheduler.run({shard: plan.shard_sizes[shard] for shard in range(actors)})
        startup = time.perf_counter() - started
        timed = {shard: plan.shard_sizes[shard] for shard in range(actors, plan.num_shards)}
        started = time.perf_counter()
        scheduler.run(timed)
        wall = time.perf_counter() - started
    finally:
        pool.shutdown()
    rows = sum(timed.values())
    assert len(results) == plan.num_shards and all(r.kept == r.rows for r in results)
    achieved, ideal = rows / wall, actors / latency
    return {
        "actors": actors,
        "images": rows,
        "wall_s": wall,
        "startup_s": startup,
        "achieved": achieved,
        "ideal": ideal,
        "efficiency": achieved / ideal,
        "overhead_ms": 1000 * (wall * actors - rows * latency) / len(timed),
        "commit_ms": 1000 * statistics.median(r.commit_s for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=float, default=0.05, help="fake seconds per image")
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--shards-per-actor", type=int, default=8)
    parser.add_argument(
        "--actors", default=",".join(map(str, ACTOR_COUNTS)), help="comma-separated pool sizes"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.actors.split(",")]

    ray.init(address="local", num_gpus=max(counts), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
            rows = [
                measure(n, args.latency, args.shard_size, args.shards_per_actor, Path(folder) / str(n))
                for n in counts
            ]
    finally:
        ray.shutdown()

    print(
        f"fake latency {args.latency * 1000:.0f} ms/image, {args.shard_size} images/shard, "
        f"{args.shards_per_actor} shards/actor"
    )
    print(
        f"{'actors':>6} {'images':>7} {'wall s':>7} {'img/s':>8} {'ideal':>7} {'eff':>6} "
        f"{'idle ms/shard':>13} {'commit ms':>9} {'start s':>7}"
    )
    for r in rows:
        print(
            f"{r['actors']:>6} {r['images']:>7} {r['wall_s']:>7.2f} {r['achieved']:>8.1f} {r['ideal']:>7.1f} "
            f"{r['efficiency']:>6.3f} {r['overhead_ms']:>13.1f} {r['commit_ms']:>9.1f} {r['startup_s']:>7.1f}"
        )
    summary = " ".join(f"efficiency_{r['actors']}={r['efficiency']:.3f}" for r in rows)
    overhead = statistics.median(r["overhead_ms"] for r in rows)
    commit = statistics.median(r["commit_ms"] for r in rows)
    latency_ms = args.latency * 1000
    print(f"{summary} shard_overhead_ms={overhead:.1f} commit_ms={commit:.1f} latency_ms={latency_ms:.0f}")


if __name__ == "__main__":
    main()
