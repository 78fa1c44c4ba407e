"""Quotas: how many rows a run generates to reach N kept samples per group, and whether the reseeding
rounds leave the pool idle.

Groups of different acceptance: each style is a flat grey, and the filter keeps `brightness >= 0.5`; a
fake image is half its style's colour and half seeded noise, so a group's acceptance is the share of
noise draws that lift its grey over the threshold. That share is measured first, apart from the run, on
`--calibration` seeds per style (FakeGenerator images, luminance computed here with numpy). The ideal for
a group of acceptance a is N / a rows; the run's rows per kept sample are compared with it.

Pool efficiency: generation time (rows x fake latency) over actors x wall time from the moment every
actor is ready to the end of the run, for the quota run and for a plain run of the same number of rows
(the same pipeline without rounds), measured in the same process.

    python bench/bench_quota.py [--kept 40] [--actors 4] [--latency 0.1]

Ends with one line: rows_per_ideal=.. rounds_max=.. efficiency_quota=.. efficiency_plain=.. ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
from PIL import Image  # noqa: E402
from run_fixtures import fake_config  # noqa: E402

from pipeline.models.fake_config import FakeGeneratorConfig  # noqa: E402
from pipeline.models.fake_generator import FakeGenerator  # noqa: E402
from pipeline.rbmod.requests import GenerationRequest, StyleRef  # noqa: E402
from pipeline.run.job import run_job  # noqa: E402

GREYS = (138, 134, 130, 126, 123, 121)  # flat greys around the threshold: acceptance from high to low
THRESHOLD = 0.5
SIZE = 16


def flat_grey(path: Path, grey: int) -> Path:
    Image.new("RGB", (32, 32), (grey, grey, grey)).save(path)
    return path


def acceptance(style: Path, seeds: int) -> float:
    """The share of fake images of this style the filter keeps (luminance as ITU-R BT.601, here)."""
    generator = FakeGenerator(FakeGeneratorConfig(size=SIZE))
    reference = StyleRef(Image.open(style).convert("RGB"))
    kept = 0
    for seed in range(seeds):
        request = GenerationRequest(prompt="calibration", styles=(reference,), seed=10**9 + seed)
        pixels = np.asarray(generator.generate([request])[0].image, dtype=np.float64)
        kept += (pixels.mean(axis=(0, 1)) @ np.array([0.299, 0.587, 0.114]) / 255.0) >= THRESHOLD
    return kept / seeds


def manifest(folder: Path, rows_per_style: int, styles: list[Path]) -> Path:
    table = pa.table(
        {
            "prompt": [f"prompt {i}" for _ in styles for i in range(rows_per_style)],
            "style": [str(style) for style in styles for _ in range(rows_per_style)],
        }
    )
    path = folder / f"manifest-{rows_per_style}.parquet"
    pq.write_table(table, path)
    return path


def config(latency: float, shard_size: int, quota: dict | None):
    overrides = {
        "shard_size": shard_size,
        "generator.fake.latency_s": latency,
        "scoring.enabled": True,
        "scoring.scorers": ["brightness"],
        "scoring.filters": [f"brightness >= {THRESHOLD}"],
        "execution.batch_size": 4,
    }
    if quota:
        overrides["quota"] = quota
    return fake_config(**overrides)


def efficiency(summary, actors: int, latency: float) -> float:
    """Generation time over actors x wall from the moment every actor was ready to the end."""
    ready_at = next((t for t, ready, _ in summary.actor_timeline if ready >= actors), 0.0)
    return summary.images_this_run * latency / (actors * (summary.elapsed_s - ready_at))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--kept", type=int, default=40, help="kept samples wanted per group (also planned rows)"
    )
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.1, help="fake seconds per image")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=2000, help="seeds per style to measure acceptance")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-quota-") as name:
        folder = Path(name)
        styles = [flat_grey(folder / f"grey-{g}.png", g) for g in GREYS]
        accept = {str(style): acceptance(style, args.calibration) for style in styles}
        quota = {"kept": args.kept, "max_rounds": 6, "max_factor": 10.0}
        ray.init(address="local", num_gpus=args.actors, include_dashboard=False, log_to_driver=False)
        try:
            run = run_job(
                str(manifest(folder, args.kept, styles)),
                str(folder / "quota"),
                config(args.latency, args.shard_size, quota),
                actors=args.actors,
                live=False,
            )
            plain_rows = -(-run.rows // len(styles))
            plain = run_job(
                str(manifest(folder, plain_rows, styles)),
                str(folder / "plain"),
                config(args.latency, args.shard_size, None),
                actors=args.actors,
                live=False,
            )
        finally:
            ray.shutdown()

    print(
        f"N={args.kept} kept per group, {len(styles)} groups, {args.actors} actors, "
        f"{args.latency * 1000:.0f} ms/image"
    )
    print(
        f"{'group':>12} {'acceptance':>10} {'rows':>5} {'ideal':>7} {'ratio':>6} {'kept':>5} {'rounds':>6}"
        "  reason"
    )
    rows = ideal = 0.0
    for group in run.quota:
        a = accept[group["group"]]
        best = args.kept / a if a else float("inf")
        reached = group["reason"] is None
        if reached:
            rows, ideal = rows + group["rows"], ideal + best
        print(
            f"{Path(group['group']).stem:>12} {a:>10.3f} {group['rows']:>5} {best:>7.1f} "
            f"{group['rows'] / best:>6.2f} {group['kept']:>5} {group['rounds']:>6}  "
            f"{group['reason'] or 'reached'}"
        )
    quota_eff = efficiency(run, args.actors, args.latency)
    plain_eff = efficiency(plain, args.actors, args.latency)
    print(
        f"quota run: {run.images_this_run} rows in {run.elapsed_s:.1f} s; "
        f"plain run: {plain.images_this_run} rows in {plain.elapsed_s:.1f} s"
    )
    print(
        f"rows_per_ideal={rows / ideal:.3f} rounds_max={max(g['rounds'] for g in run.quota)} "
        f"groups_reached={sum(g['reason'] is None for g in run.quota)}/{len(run.quota)} "
        f"efficiency_quota={quota_eff:.3f} efficiency_plain={plain_eff:.3f} "
        f"efficiency_ratio={quota_eff / plain_eff:.3f} actors={args.actors}"
    )


if __name__ == "__main__":
    main()
