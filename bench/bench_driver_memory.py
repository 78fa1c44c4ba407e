"""The driver's peak memory against the manifest's size: planning a big synthetic manifest and running its
first shards, as `stylegen run` does, in memory (the whole manifest and plan held: what the driver did
before, and still does below pipeline.run.plan.STREAM_ROWS rows) and streamed (manifests/plan_stream.py:
sorted runs spilled to Parquet and merged; the driver keeps the plan's counts and its file).

Each measurement is its own child process, so its peak RSS (getrusage ru_maxrss) is its own:
plan_run -> run.json -> plan.parquet into a local output -> the first shards through a ShardWorker with
the fake generator (reading their rows from plan.parquet, committing them). Both are measured at N/4 and
N rows; the slope extrapolates each to 10^8 rows (an estimate unless --rows is 10^8 itself). The
streamed plan.parquet is checked to hold the same rows as the in-memory one (at N/4).

    .venv/bin/python bench/bench_driver_memory.py [--rows 10000000] [--shards 2] [--skip-memory-at-n]

Ends with one line: rows=.. memory_rss_gb=.. streamed_rss_gb=.. ratio_rss=.. memory_s=.. streamed_s=..
memory_rss_1e8_gb=.. streamed_rss_1e8_gb=.. (estimates)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

STYLES = 1000
CHUNK_ROWS = 1 << 20


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def write_manifest(folder: Path, rows: int) -> Path:
    """`rows` rows: STYLES real style images x prompts, written a chunk at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from run_fixtures import make_image

    (folder / "styles").mkdir(exist_ok=True)
    styles = [str(make_image(folder / "styles" / f"s{i:04d}.png", (i % 256, 90, 160))) for i in range(STYLES)]
    path = folder / f"manifest-{rows}.parquet"
    schema = pa.schema([("style", pa.string()), ("prompt", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, CHUNK_ROWS):
            index = np.arange(start, min(start + CHUNK_ROWS, rows))
            style = pa.array(styles).take(pa.array(index % STYLES))
            prompt = pa.array([f"a watercolor painting of a horse, variant {i // STYLES}" for i in index])
            writer.write_table(pa.table([style, prompt], schema=schema))
    return path


def step_driver(manifest: Path, output: Path, mode: str, shards: int) -> dict:
    from run_fixtures import fake_config

    import pipeline.run.plan as run_plan
    from pipeline.models.fake_generator import FakeGenerator
    from pipeline.output.run_record import store_run_record
    from pipeline.storage import open_store
    from pipeline.worker.shard_worker import ShardWorker

    run_plan.STREAM_ROWS = 1 if mode == "streamed" else 10**12
    config = fake_config(shard_size=64, **{"generator.fake.size": 8})
    started = time.perf_counter()
    plan, record = run_plan.plan_run(str(manifest), config)
    store = open_store(str(output))
    store_run_record(store, record)
    run_plan.write_plan(store, plan)
    plan_s = time.perf_counter() - started
    worker = ShardWorker(FakeGenerator(config.generator.fake), None, None, store, config, model_info={})
    try:
        for shard_id in range(shards):
            worker.run_shard(shard_id, f"bench-{shard_id}")
    finally:
        worker.close()
    return {"rss_gb": peak_rss_gb(), "plan_s": plan_s, "seconds": time.perf_counter() - started}


def run_child(manifest: Path, output: Path, mode: str, shards: int) -> dict:
    command = [sys.executable, __file__, "--step", mode, "--manifest", str(manifest), "--output", str(output)]
    command += ["--shards", str(shards)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{mode} driver failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=2, help="first shards the driver runs")
    parser.add_argument("--skip-memory-at-n", action="store_true", help="in-memory only at N/4 (RAM)")
    parser.add_argument("--step")
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step_driver(args.manifest, args.output, args.step, args.shards)))
        return

    import pyarrow.parquet as pq

    figures: dict[str, dict[int, dict]] = {"memory": {}, "streamed": {}}
    sizes = (args.rows // 4, args.rows)
    with tempfile.TemporaryDirectory(prefix="stylegen-bench-driver-") as name:
        folder = Path(name)
        for rows in sizes:
            manifest = write_manifest(folder, rows)
            for mode in ("streamed", "memory"):
                if mode == "memory" and rows == args.rows and args.skip_memory_at_n:
                    continue
                output = folder / f"out-{mode}-{rows}"
                figures[mode][rows] = found = run_child(manifest, output, mode, args.shards)
                print(
                    f"{mode:8} {rows:>11,} rows: peak RSS {found['rss_gb']:5.2f} GB, "
                    f"plan {found['plan_s']:6.1f} s, with {args.shards} shards {found['seconds']:6.1f} s",
                    flush=True,
                )
            if rows == sizes[0]:
                same = pq.read_table(folder / f"out-streamed-{rows}" / "plan.parquet").equals(
                    pq.read_table(folder / f"out-memory-{rows}" / "plan.parquet")
                )
                print(f"  the streamed plan.parquet holds the in-memory one's rows: {same}")
                if not same:
                    raise SystemExit("the streamed plan differs from the in-memory one")
            manifest.unlink()
    summary = {"rows": args.rows}
    for mode, found in figures.items():
        known = sorted(found)
        top = found[known[-1]]
        slope = (top["rss_gb"] - found[known[0]]["rss_gb"]) / (known[-1] - known[0]) if len(known) > 1 else 0
        if len(known) == 1:  # in memory at N/4 only: memory grows with the rows (the measured per-row cost)
            slope = top["rss_gb"] / known[0]
        summary[f"{mode}_rss_gb"] = round(top["rss_gb"], 3)
        summary[f"{mode}_rows"] = known[-1]
        summary[f"{mode}_s"] = round(top["seconds"], 1)
        summary[f"{mode}_rss_1e8_gb"] = round(top["rss_gb"] + max(slope, 0.0) * (1e8 - known[-1]), 2)
    common = max(set(figures["memory"]) & set(figures["streamed"]))
    summary["ratio_rss"] = round(
        figures["memory"][common]["rss_gb"] / figures["streamed"][common]["rss_gb"], 2
    )
    summary["ratio_rss_rows"] = common
    print(
        f"at 10^8 rows (estimate): in memory {summary['memory_rss_1e8_gb']:.1f} GB, "
        f"streamed {summary['streamed_rss_1e8_gb']:.2f} GB"
    )
    print(" ".join(f"{key}={value}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
