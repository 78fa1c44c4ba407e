"""Manifest build + plan at 10M rows (3,000 styles x 3,400 prompts), through the real code paths.

Each step runs in its own child process so its peak RSS (getrusage ru_maxrss) is its own:
  build   stylegen manifest build (collect 3,000 image files, read prompts, stream the cross product)
  plan    read_manifest(compact=True) (normalize + uids) -> make_plan (sort, duplicates, fingerprint)
          -> plan.write; then the same from a plain read_manifest, as the memory baseline
  read    read_shard of one shard vs reading the whole plan.parquet and filtering (the baseline)
Plus, in this process, vectorized compute_uids vs the scalar compute_uid loop on the same rows.
Targets on a 2-core machine: build and plan each < 60 s and < 2 GB.

    .venv/bin/python bench/bench_plan.py [--styles 3000] [--prompts 3400] [--shard-size 256]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tiny_png() -> bytes:
    """A real 1x1 PNG: the build only lists files, but they should be images."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def step_build(work: Path) -> dict:
    from manifests.build import build_manifest

    start = time.perf_counter()
    result = build_manifest([str(work / "styles")], str(work / "prompts.txt"), str(work / "manifest.parquet"))
    return {"rows": result.rows, "seconds": time.perf_counter() - start, "rss_gb": peak_rss_gb()}


def step_plan(work: Path, shard_size: int, compact: bool) -> dict:
    from manifests.plan import make_plan
    from manifests.read import read_manifest

    start = time.perf_counter()
    table = read_manifest(str(work / "manifest.parquet"), compact=compact)  # compact: as plan_manifest does
    read_s = time.perf_counter() - start
    plan = make_plan(table, shard_size)
    make_s = time.perf_counter() - start - read_s
    plan.write(work / ("plan" if compact else "plan-plain"))
    write_s = time.perf_counter() - start - read_s - make_s
    return {
        "seconds": time.perf_counter() - start,
        "read_s": read_s,
        "make_s": make_s,
        "write_s": write_s,
        "shards": plan.num_shards,
        "rss_gb": peak_rss_gb(),
    }


def step_read(work: Path, shard_id: int) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from manifests.plan import read_shard

    path = work / "plan" / "plan.parquet"
    read_shard(path, 0)  # warm up imports and the page cache before timing either side
    start = time.perf_counter()
    shard = read_shard(path, shard_id)
    shard_s = time.perf_counter() - start
    start = time.perf_counter()
    everything = pq.read_table(path)
    baseline = everything.filter(pc.equal(everything.column("shard_id"), shard_id))
    full_s = time.perf_counter() - start
    assert shard.equals(baseline)
    return {"shard_s": shard_s, "full_s": full_s}


def run_child(step: str, work: Path, *extra: str) -> dict:
    command = [sys.executable, __file__, "--step", step, "--work", str(work), *extra]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def uid_speed(rows: int) -> tuple[float, float]:
    """Rows per second of compute_uids, and its speed-up over the scalar loop on the same rows."""
    import pyarrow as pa

    from manifests.uid import compute_uid, compute_uids

    styles = [f"/data/styles/style-{i % 3000:04d}.png" for i in range(rows)]
    prompts = [f"a watercolor painting of a horse, number {i % 3400}" for i in range(rows)]
    table = pa.table({"style": styles, "content": pa.nulls(rows, pa.string()), "prompt": prompts})
    table = table.append_column("seed", pa.nulls(rows, pa.int64()))
    compute_uids(table.slice(0, 1000))  # warm up Arrow's kernels before timing
    start = time.perf_counter()
    vectorized = compute_uids(table)
    vector_s = time.perf_counter() - start
    start = time.perf_counter()
    scalar = [compute_uid(s, None, p, None) for s, p in zip(styles, prompts, strict=True)]
    scalar_s = time.perf_counter() - start
    assert vectorized.to_pylist() == scalar
    return rows / vector_s, scalar_s / vector_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--styles", type=int, default=3000)
    parser.add_argument("--prompts", type=int, default=3400)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--step")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--shard-id", type=int, default=0)
    args = parser.parse_args()
    if args.step == "build":
        print(json.dumps(step_build(args.work)))
        return
    if args.step in ("plan", "plan-plain"):
        print(json.dumps(step_plan(args.work, args.shard_size, compact=args.step == "plan")))
        return
    if args.step == "read":
        print(json.dumps(step_read(args.work, args.shard_id)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        work = Path(tmp)
        (work / "styles").mkdir()
        png = tiny_png()
        for i in range(args.styles):
            (work / "styles" / f"style-{i:05d}.png").write_bytes(png)
        prompts = [f"a watercolor painting of a horse, variant {i}" for i in range(args.prompts)]
        (work / "prompts.txt").write_text("\n".join(prompts) + "\n")

        build = run_child("build", work)
        print(f"build: {build['rows']:,} rows in {build['seconds']:.1f} s, peak RSS {build['rss_gb']:.2f} GB")
        plan = run_child("plan", work, "--shard-size", str(args.shard_size))
        print(
            f"plan: {plan['shards']:,} shards in {plan['seconds']:.1f} s (read+uid {plan['read_s']:.1f} s, "
            f"sort+fingerprint {plan['make_s']:.1f} s, write {plan['write_s']:.1f} s), "
            f"peak RSS {plan['rss_gb']:.2f} GB"
        )
        plain = run_child("plan-plain", work, "--shard-size", str(args.shard_size))
        same_bytes = (work / "plan" / "plan.parquet").read_bytes() == (
            work / "plan-plain" / "plan.parquet"
        ).read_bytes()
        print(
            f"plan from a plain read: {plain['seconds']:.1f} s, peak RSS {plain['rss_gb']:.2f} GB, "
            f"same plan.parquet bytes: {same_bytes}"
        )
        read = run_child("read", work, "--shard-id", str(plan["shards"] // 2))
        read_ratio = read["full_s"] / read["shard_s"]
        print(f"read_shard: {read['shard_s'] * 1e3:.0f} ms vs full read+filter {read['full_s']:.2f} s")
    rate, uid_ratio = uid_speed(200_000)
    print(f"compute_uids: {rate:,.0f} rows/s, {uid_ratio:.1f}x the scalar loop")
    peak = max(build["rss_gb"], plan["rss_gb"])
    print(
        f"rows={build['rows']} build_s={build['seconds']:.1f} plan_s={plan['seconds']:.1f} "
        f"build_rss_gb={build['rss_gb']:.2f} plan_rss_gb={plan['rss_gb']:.2f} peak_rss_gb={peak:.2f} "
        f"plain_plan_rss_gb={plain['rss_gb']:.2f} compact_rss_saving={plain['rss_gb'] / plan['rss_gb']:.2f} "
        f"read_shard_ms={read['shard_s'] * 1e3:.0f} read_shard_speedup={read_ratio:.0f} "
        f"uid_rows_per_s={rate:.0f} uid_speedup={uid_ratio:.1f}"
    )


if __name__ == "__main__":
    main()
