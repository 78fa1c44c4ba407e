"""Near-duplicate grouping (pipeline.scoring.duplicates) against the naive approach, and what 10M costs.

Data: N float16 unit vectors of D = 768 dims (DINOv2-base's width) with 10% planted near-duplicates
(noisy copies at cosine ~0.97), threshold 0.95.

Measured in one run on this machine:
- ours at N (blockwise float32 products on CPU, exact float64 check of the candidates, union-find):
  seconds, samples/s, compared pairs/s, and the peak memory it added (tracemalloc: numpy buffers;
  torch's block products add about block^2 * 5 bytes, 84 MB at block 4096, reported beside it);
- the naive approach at `--naive-n`, where it fits: the full N x N float64 cosine matrix in numpy, then
  connected components of "cosine >= T" by breadth-first search; ours at the same N on the same data,
  with the groups checked equal;
- `--within` groups: the same N split into G styles, compared only within a style.

Estimated for 10M samples (scaling the measured pair rate by N^2 / 2; memory from the formula):
the whole run at once and within 10k styles of 1000 samples, on this CPU; and the whole run on one
H100 from its fp16 FLOPs (not measured here).

    .venv/bin/python bench/bench_dedup.py [--n 16384] [--naive-n 6000] [--block 4096]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.scoring.duplicates import duplicate_groups  # noqa: E402

DIMS, THRESHOLD = 768, 0.95
H100_FP16_FLOPS = 989e12  # dense, SXM


def planted(count: int, seed: int = 0) -> np.ndarray:
    """Unit vectors; every tenth one is a noisy copy (cosine ~0.97) of an earlier one."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, DIMS)).astype(np.float32)
    copies = np.arange(10, count, 10)
    sources = rng.integers(0, copies, len(copies))
    vectors[copies] = vectors[sources] + 0.25 * rng.normal(size=(len(copies), DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float16)


def naive_groups(vectors: np.ndarray, threshold: float) -> np.ndarray:
    unit = vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    linked = unit @ unit.T >= threshold
    labels = np.full(len(vectors), -1)
    for start in range(len(vectors)):
        if labels[start] >= 0:
            continue
        labels[start] = start
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for other in np.flatnonzero(linked[node]):
                if labels[other] < 0:
                    labels[other] = start
                    queue.append(other)
    return labels


def measured(call):
    """(result, seconds, peak bytes traced while it ran)."""
    tracemalloc.start()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--naive-n", type=int, default=6000)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--styles", type=int, default=16)
    args = parser.parse_args()
    import torch

    print(f"torch threads: {torch.get_num_threads()}, D = {DIMS}, threshold {THRESHOLD}, block {args.block}")

    small = planted(args.naive_n, seed=1)
    expected, naive_s, naive_peak = measured(lambda: naive_groups(small, THRESHOLD))
    ours_small, ours_small_s, ours_small_peak = measured(
        lambda: duplicate_groups(small, THRESHOLD, block=args.block, device="cpu")
    )
    assert np.array_equal(ours_small, expected), "the groups differ from the naive computation"
    print(
        f"N = {args.naive_n}: naive {naive_s:.2f} s, peak {naive_peak / 2**20:.0f} MiB; "
        f"ours {ours_small_s:.2f} s, peak {ours_small_peak / 2**20:.0f} MiB; identical groups"
    )

    vectors = planted(args.n)
    labels, ours_s, ours_peak = measured(
        lambda: duplicate_groups(vectors, THRESHOLD, block=args.block, device="cpu")
    )
    pairs = args.n * (args.n - 1) / 2
    groups = int((np.bincount(labels) > 1).sum())
    print(
        f"N = {args.n}: ours {ours_s:.2f} s, {args.n / ours_s:.0f} samples/s, "
        f"{pairs / ours_s / 1e6:.0f} M pairs/s, peak +{ours_peak / 2**20:.0f} MiB traced "
        f"(+{args.block**2 * 5 / 2**20:.0f} MiB torch block); {groups} groups of near-duplicates"
    )

    partition = np.arange(args.n) % args.styles
    _, within_s, _ = measured(
        lambda: duplicate_groups(vectors, THRESHOLD, partition=partition, block=args.block, device="cpu")
    )
    print(f"N = {args.n} within {args.styles} styles: {within_s:.2f} s ({ours_s / within_s:.1f}x faster)")

    rate = pairs / ours_s
    ten_million = 10_000_000
    whole_hours = ten_million**2 / 2 / rate / 3600
    within_hours = 10_000 * 1000**2 / 2 / rate / 3600
    memory_gb = ten_million * (DIMS * 2 + 8 + 8) / 1e9  # float16 vectors (memory-mapped) + norms + union-find
    print(
        f"10M samples on this CPU (estimate, N^2 scaling of the measured pair rate): whole run "
        f"{whole_hours:.0f} h, within 10k styles of 1000: {within_hours:.2f} h; "
        f"memory {memory_gb:.1f} GB of memory-mapped embeddings + O(block^2)"
    )
    # Not measured (no GPU here): the products are the whole cost; at 40% of an H100's dense fp16 peak.
    gpu_minutes = 2 * DIMS * ten_million**2 / 2 / (0.4 * H100_FP16_FLOPS) / 60
    print(
        f"10M samples on one H100 (estimate from FLOPs, fp16 products at 40% of peak): {gpu_minutes:.0f} min"
    )
    summary = {
        "n": args.n,
        "seconds": f"{ours_s:.2f}",
        "samples_per_s": f"{args.n / ours_s:.0f}",
        "mpairs_per_s": f"{rate / 1e6:.0f}",
        "peak_traced_mib": f"{ours_peak / 2**20:.0f}",
        "naive_n": args.naive_n,
        "naive_over_ours_time": f"{naive_s / ours_small_s:.2f}",
        "naive_over_ours_memory": f"{naive_peak / max(ours_small_peak, 1):.1f}",
        "within_speedup": f"{ours_s / within_s:.1f}",
        "est_10m_whole_cpu_h": f"{whole_hours:.0f}",
        "est_10m_within_1000_cpu_h": f"{within_hours:.2f}",
        "est_10m_memory_gb": f"{memory_gb:.1f}",
        "est_10m_whole_h100_min": f"{gpu_minutes:.0f}",
    }
    print(" ".join(f"{key}={value}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
