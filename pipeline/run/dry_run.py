"""`stylegen run ... --dry-run`: the plan and its bill, with nothing written and no Ray started.

It reads and plans the manifest exactly as a run would (every check included), then counts rows, shards,
image-size buckets and quota groups, estimates the rows a quota may add at an assumed acceptance, and
prices the whole in GPU-hours from the preset's seconds per image:

- acceptance: `--assume-acceptance`, else the kept share of what an earlier output's filters scored
  (`--like OUTPUT`, kept / (kept + rejected) from its commit markers), else 0.5;
- quota rows: a group of P planned rows keeps about a x P; when that is short of the target N it needs
  about N / a rows in all, of which at most (max_factor - 1) x P are added (all of them when a is 0);
- seconds per image at 1024 x 1024 and the preset's steps (`SECONDS_PER_IMAGE`, with where each figure
  comes from), scaled by the image area of each bucket and by a row's own `steps`; the fake generator's
  is its configured latency.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from pipeline.run_config import RunConfig

# Seconds per 1024 x 1024 image at the preset's own steps, and where the figure comes from.
SECONDS_PER_IMAGE = {
    "stable-cascade": (
        2.5,
        "FLOP estimate, not measured: 315 TFLOP per 1024² image at the official settings "
        "(bench/bench_fullsize.py) on an H100 at 40% of peak, batch 1 (README, GPU estimate)",
    ),
    "tiny": (0.05, "rough CPU figure of the tiny random-weight preset (tests and demos only)"),
}
PRESET_STEPS = {"stable-cascade": 20, "tiny": 2}  # Stage C steps the figure above assumes
REFERENCE_AREA = 1024 * 1024


@dataclass
class DryRun:
    rows: int
    shards: int
    shard_size: int
    buckets: dict[tuple[int, int], int]  # (width, height) -> rows
    acceptance: float
    acceptance_source: str
    seconds_per_image: dict[tuple[int, int], float]  # at the preset's steps
    cost_source: str
    gpu_hours: float  # planned rows
    groups: int = 0  # quota groups (0: no quota)
    groups_short: int = 0  # expected to need reseeding at the assumed acceptance
    quota_rows_expected: int = 0
    quota_rows_max: int = 0
    quota_gpu_hours: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            "dry run: nothing was written and no Ray was started",
            f"rows {self.rows:,} in {self.shards:,} shards of {self.shard_size}",
            "size buckets: "
            + ", ".join(
                f"{w}x{h} {rows:,} rows ({self.seconds_per_image[(w, h)]:.3g} s/image)"
                for (w, h), rows in sorted(self.buckets.items())
            ),
            f"GPU-hours for the planned rows: {self.gpu_hours:,.2f} ({self.cost_source})",
        ]
        if self.groups:
            out += [
                f"quota groups: {self.groups:,}; at acceptance {self.acceptance:.2f} "
                f"({self.acceptance_source}) {self.groups_short:,} would be reseeded",
                f"rows the quota may add: about {self.quota_rows_expected:,} "
                f"(at most {self.quota_rows_max:,}), about {self.quota_gpu_hours:,.2f} GPU-hours more",
            ]
        return out + self.notes


def dry_run(
    manifest: str, config: RunConfig, *, assume_acceptance: float | None = None, like: str | None = None
) -> DryRun:
    from pipeline.run.plan import plan_run

    plan, _ = plan_run(manifest, config)
    default = default_size(config)
    per_image, source = _seconds_per_image(config)
    preset_steps = PRESET_STEPS.get(config.preset, 1)
    quota = config.quota
    buckets: Counter = Counter()
    seconds = 0.0
    groups: dict[str, list[float]] = {}  # group -> [rows, seconds]
    for batch in _plan_batches(plan, ["width", "height", "steps", quota.per if quota else None]):
        sizes = _sizes(batch, default)
        steps = (
            batch.column("steps").to_pylist() if "steps" in batch.column_names else [None] * batch.num_rows
        )
        row_seconds = [
            per_image * (w * h / REFERENCE_AREA) * ((s or preset_steps) / preset_steps)
            for (w, h), s in zip(sizes, steps, strict=True)
        ]
        buckets.update(sizes)
        seconds += sum(row_seconds)
        if quota is not None:
            for value, cost in zip(batch.column(quota.per).to_pylist(), row_seconds, strict=True):
                group = groups.setdefault(quota.group_key(value), [0, 0.0])
                group[0], group[1] = group[0] + 1, group[1] + cost
    acceptance, acceptance_source = _acceptance(assume_acceptance, like, config)
    result = DryRun(
        rows=plan.num_rows,
        shards=plan.num_shards,
        shard_size=plan.shard_size,
        buckets=dict(buckets),
        acceptance=acceptance,
        acceptance_source=acceptance_source,
        seconds_per_image={size: per_image * size[0] * size[1] / REFERENCE_AREA for size in buckets},
        cost_source=source,
        gpu_hours=seconds / 3600,
    )
    if quota is not None:
        _price_quota(result, groups, config)
    return result


def _plan_batches(plan, columns: list[str | None]):
    """The plan's rows, a batch at a time, with only `columns` (those it has): a streamed plan is read
    from its file, so a 10^8-row dry run never holds the plan."""
    if hasattr(plan, "path"):  # manifests.plan_stream.StreamedPlan
        import pyarrow.parquet as pq

        file = pq.ParquetFile(plan.path)
        wanted = [name for name in columns if name in file.schema_arrow.names]
        yield from file.iter_batches(columns=wanted or ["uid"])
        return
    table = plan.table
    yield from table.select([name for name in columns if name in table.column_names]).to_batches()


def default_size(config: RunConfig) -> tuple[int, int]:
    """The image size of a row without its own: the run's rbmod setting, else the preset's."""
    if config.generator.kind == "fake":
        return config.generator.fake.size, config.generator.fake.size
    from manifests.row_settings import DEFAULT_SIZE

    width, height = config.rbmod.get("width"), config.rbmod.get("height")
    if width and height:
        return int(width), int(height)
    side = config.rbmod.get("resolution") or (128 if config.preset == "tiny" else None)
    return (int(side), int(side)) if side else DEFAULT_SIZE


def _sizes(table, default: tuple[int, int]) -> list[tuple[int, int]]:
    if "width" not in table.column_names:
        return [default] * table.num_rows
    widths, heights = table.column("width").to_pylist(), table.column("height").to_pylist()
    return [(w, h) if w and h else default for w, h in zip(widths, heights, strict=True)]


def _seconds_per_image(config: RunConfig) -> tuple[float, str]:
    if config.generator.kind == "fake":
        fake = config.generator.fake
        return (
            fake.latency_s + fake.batch_latency_s / config.execution.batch_size,
            "the fake generator's latency",
        )
    seconds, source = SECONDS_PER_IMAGE[config.preset]
    return seconds, source


def _acceptance(assume: float | None, like: str | None, config: RunConfig) -> tuple[float, str]:
    if assume is not None:
        return assume, "--assume-acceptance"
    if like is not None:
        from pipeline.output.accounting import sample_counts
        from pipeline.storage import open_store

        store = open_store(like, **config.storage)
        counts = sample_counts(store.committed_shards())
        scored = counts.kept + counts.rejected
        if scored:
            return counts.kept / scored, f"kept {counts.kept:,} of {scored:,} in {like}"
        return 0.5, f"{like} has no scored samples: 0.5 assumed"
    if not config.scoring.filters:
        return 1.0, "no filters: every image is kept"
    return 0.5, "assumed; give --assume-acceptance or --like OUTPUT"


def _price_quota(result: DryRun, groups: dict[str, list[float]], config: RunConfig) -> None:
    quota, a = config.quota, result.acceptance
    expected = most = 0
    extra_seconds = 0.0
    for planned, seconds in groups.values():
        budget = max(math.floor(quota.max_factor * planned) - planned, 0)
        if a * planned >= quota.kept:
            continue
        result.groups_short += 1
        needed = budget if a <= 0 else min(budget, max(math.ceil(quota.kept / a) - planned, 0))
        expected, most = expected + needed, most + budget
        extra_seconds += needed * seconds / planned
    result.groups = len(groups)
    result.quota_rows_expected, result.quota_rows_max = expected, most
    result.quota_gpu_hours = extra_seconds / 3600
