"""Everything the report shows, read from an output: run.json, the commit markers, the shard parquets.

Counts come from the shard parquets (every planned row of every committed shard), so they agree with
`stylegen status`, whose counts come from the markers' summaries. Thresholds come from run.json's
filter rules (`config.scoring.filters`) and, for a selection output, its `--min`.

The parquets are read as one dataset (pipeline.output.shard_dataset: Arrow's threads, no work per file
in Python), and only the small columns the charts and tables need are read for every row; the prompts
and content URIs are read only for the rows the page shows (gallery tiles, extremes, failed rows), from
their shards alone (`with_details`). The scan reads shards in order and each shard's rows are sorted by
uid, so `rows` is in (shard_id, uid) order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.columns import SCORE_PREFIX
from pipeline.output.accounting import planned_counts
from pipeline.output.run_record import generations, load_run_record, load_summary
from pipeline.output.shard_dataset import ShardDataset
from pipeline.output.shard_tables import newest_rows, with_status
from pipeline.report.buckets import BucketStats, StatusCounts, bucket_stats
from pipeline.report.runs import parse_time, run_history

STATUSES = ("kept", "rejected", "failed")
GENERATED = ("kept", "rejected")  # rows with an image (and scores)
TIME_PREFIX = "time_"
REPORT_COLUMNS = ("uid", "shard_id", "status", "reason", "filter_rule", "style")  # read for every row
REPORT_COLUMNS += ("width", "height")  # a run with per-row sizes (pipeline.report.buckets)
DETAIL_COLUMNS = ("prompt", "content")  # read only for the rows the page shows
HAS_CONTENT = "has_content"  # every row's "content is set", without the URI itself


@dataclass(frozen=True)
class Threshold:
    score: str
    value: float
    label: str  # "clip_t >= 0.3", as the rule reads with the score on the left


@dataclass
class ScoreValues:
    name: str
    kept: np.ndarray
    rejected: np.ndarray
    thresholds: list[Threshold]


@dataclass
class Throughput:
    minutes: list[tuple[datetime, int]]  # (minute start, images committed in that minute)
    images: int  # generated images (kept + rejected) in committed shards
    started: datetime | None
    finished: datetime | None

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()

    @property
    def images_per_s(self) -> float | None:
        seconds = self.seconds
        return self.images / seconds if seconds else None


@dataclass(frozen=True)
class Timing:
    name: str  # a time_* column without its prefix, or "total" (their sum per image)
    median: float
    p95: float
    images: int


@dataclass
class StyleStats(StatusCounts):
    style: str
    counts: dict[str, int]  # status -> rows
    score_means: dict[str, float | None]  # over the style's generated rows


@dataclass
class ReportData:
    output: str
    run: dict[str, Any]  # run.json ({} when missing)
    shards_planned: int | None
    shards_committed: int
    rows: pa.Table  # every uid's newest row (REPORT_COLUMNS, has_content, scores, timings), by (shard, uid)
    status_counts: dict[str, int]
    rule_counts: list[tuple[str, int]]  # rejection rule -> rows, most frequent first
    failed_rows: list[dict[str, Any]]  # the first `max_failed`, by (shard_id, uid)
    scores: list[ScoreValues]
    throughput: Throughput
    rejected_tars: set[int]  # shards whose rejected/ tar is committed
    timings: list[Timing] = field(default_factory=list)
    styles: list[StyleStats] = field(default_factory=list)
    buckets: list[BucketStats] = field(default_factory=list)  # per (width, height); none without sizes
    runs: list = field(default_factory=list)  # pipeline.report.runs.RunStats, oldest first
    latest_run: dict[str, Any] | None = None  # the newest run's summary
    notes: list[str] = field(default_factory=list)
    source: ShardDataset | None = None  # where `with_details` reads the shown rows' prompts and contents

    @property
    def is_selection(self) -> bool:
        """A `stylegen select` output: its shards were written from another run's samples, not generated."""
        return bool(self.run.get("selection"))


def gather(store, *, max_failed: int = 50, latest_run: dict[str, Any] | None = None) -> ReportData:
    """Read an output into a ReportData (no images: pipeline.report.gallery loads those).
    `latest_run`: the newest run's summary, when the caller has it (else summary.json)."""
    from pipeline.storage.layout import rejected_key

    run = read_run(store)
    markers = store.committed_shards()
    if not markers and not run:
        raise ValueError(f"no stylegen output at {store.uri}: no run.json and no committed shards")
    source = ShardDataset(store, markers, first_shards=_first_shards(run))
    rows = newest_rows(source.read(report_columns(source)))  # a retried row counts once: its newest result
    planned, _ = planned_counts(store)
    statuses = Counter(_column(rows, "status"))
    rejected_tars = {shard for shard, marker in markers.items() if rejected_key(shard) in marker.files}
    selection = bool(run.get("selection"))
    latest_run = None if selection else (latest_run or load_summary(store))
    return ReportData(
        output=store.uri,
        run=run,
        shards_planned=planned,
        shards_committed=len(markers),
        rows=rows,
        status_counts={status: statuses.get(status, 0) for status in STATUSES},
        rule_counts=rule_counts(rows),
        failed_rows=with_details(source, failed_rows(rows, max_failed), ("prompt",)),
        scores=score_values(rows, thresholds(run)),
        throughput=throughput(markers, run),
        rejected_tars=rejected_tars,
        timings=timings(rows),
        styles=style_stats(rows),
        buckets=bucket_stats(rows),
        runs=[] if selection else run_history(store, markers, latest_run, run),
        latest_run=latest_run,
        source=source,
    )


def report_columns(source: ShardDataset) -> dict:
    """What the report reads of every row: REPORT_COLUMNS, scores, timings and whether it has a content
    image (not the prompts, URIs or the bulky per-row JSON: params, models, versions)."""
    wanted = source.columns(
        lambda name: name in REPORT_COLUMNS or name.startswith((SCORE_PREFIX, TIME_PREFIX))
    )
    columns = {name: ds.field(name) for name in wanted}
    if "content" in source.schema.names:
        columns[HAS_CONTENT] = ds.field("content").is_valid()
    return columns


def with_details(
    source: ShardDataset | None, rows: list[dict[str, Any]], details: tuple[str, ...] = DETAIL_COLUMNS
) -> list[dict[str, Any]]:
    """`rows` (each with its uid and shard_id) with their `details` columns, read from their shards only."""
    if source is None or not rows:
        return rows
    columns = ["uid", "shard_id", *(c for c in details if c in source.schema.names)]
    wanted = {(row["uid"], row["shard_id"]) for row in rows}
    found = source.read(columns, shards={shard for _, shard in wanted}).to_pylist()
    by_row = {(item["uid"], item["shard_id"]): item for item in found}
    return [{**by_row.get((row["uid"], row["shard_id"]), {}), **row} for row in rows]


def _first_shards(run: dict[str, Any]) -> list[int]:
    """The first shard of each of the run's generations (a selection output has one)."""
    try:
        return [int(generation["first_shard"]) for generation in generations(run)]
    except (KeyError, TypeError, ValueError):
        return [0]


def read_run(store) -> dict[str, Any]:
    """run.json, or {} for an output without one."""
    return load_run_record(store) or {}


def _column(rows: pa.Table, name: str) -> list:
    return rows.column(name).to_pylist() if name in rows.column_names else [None] * rows.num_rows


def rule_of(rule: str | None, reason: str | None) -> str:
    """A rejected row's rule: its `filter_rule`, else its reason up to the worker's ' (value ...)'."""
    return rule or (reason or "?").split(" (value", 1)[0]


def rule_counts(rows: pa.Table) -> list[tuple[str, int]]:
    """Rejected rows per filter rule, most frequent first (Arrow counts; Python only for rows without
    a `filter_rule`)."""
    rejected = with_status(rows, "rejected")
    counts: Counter[str] = Counter()
    if "filter_rule" in rejected.column_names:
        rules = rejected.column("filter_rule")
        for item in pc.value_counts(pc.drop_null(rules)).to_pylist():
            counts[item["values"]] += item["counts"]
        rejected = rejected.filter(pc.is_null(rules))
    for reason in _column(rejected, "reason"):
        counts[rule_of(None, reason)] += 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def failed_rows(rows: pa.Table, limit: int) -> list[dict[str, Any]]:
    """The first `limit` failed rows (uid, shard_id, reason; `with_details` adds their prompts)."""
    failed = with_status(rows, "failed").slice(0, limit)
    columns = [c for c in ("uid", "shard_id", "reason") if c in failed.column_names]
    return failed.select(columns).to_pylist()


# --- thresholds ------------------------------------------------------------------------------------

_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def thresholds(run: dict[str, Any]) -> list[Threshold]:
    """The numbers the run's filter rules compare each score with, plus a selection's --min."""
    import operator

    from pipeline.scoring.rules import FilterRules, RuleError

    symbols = {
        operator.lt: "<",
        operator.le: "<=",
        operator.gt: ">",
        operator.ge: ">=",
        operator.eq: "==",
        operator.ne: "!=",
    }
    filters = ((run.get("config") or {}).get("scoring") or {}).get("filters") or []
    found: list[Threshold] = []
    try:
        comparisons = FilterRules.parse(list(filters), None).comparisons
    except RuleError:
        comparisons = []
    for comparison in comparisons:
        index = comparison.operands.index(comparison.score)
        if index > 0:  # number OP score, read as score FLIPPED-OP number
            symbol = _FLIPPED[symbols[comparison.ops[index - 1]]]
            value = comparison.operands[index - 1]
            found.append(Threshold(comparison.score, value, f"{comparison.score} {symbol} {value:g}"))
        if index < len(comparison.ops):
            value = comparison.operands[index + 1]
            symbol = symbols[comparison.ops[index]]
            found.append(Threshold(comparison.score, value, f"{comparison.score} {symbol} {value:g}"))
    selection = run.get("selection") or {}
    if selection.get("min") is not None and selection.get("by"):
        score, value = selection["by"], float(selection["min"])
        found.append(Threshold(score, value, f"selected: {score} >= {value:g}"))
    return found


def score_columns(rows: pa.Table) -> list[str]:
    """Every score_* column, whatever scorers the run had."""
    return sorted(c for c in rows.column_names if c.startswith(SCORE_PREFIX))


def score_values(rows: pa.Table, limits: list[Threshold]) -> list[ScoreValues]:
    """Kept and rejected values of each score that has any (a score no sample has, e.g. clip_content
    in a stylization-only output, gets no chart)."""
    kept, rejected = with_status(rows, "kept"), with_status(rows, "rejected")
    result = []
    for column in score_columns(rows):
        name = column.removeprefix(SCORE_PREFIX)
        values = ScoreValues(
            name,
            _finite(kept.column(column)),
            _finite(rejected.column(column)),
            [limit for limit in limits if limit.score == name],
        )
        if values.kept.size or values.rejected.size:
            result.append(values)
    return result


def generated_rows(rows: pa.Table) -> pa.Table:
    if "status" not in rows.column_names:
        return rows.slice(0, 0)
    return rows.filter(pc.is_in(rows.column("status"), value_set=pa.array(GENERATED)))


def timings(rows: pa.Table) -> list[Timing]:
    """Median and 95th percentile of each time_* column over the generated rows, and of their sum per
    image (seconds per image: generation plus scoring)."""
    generated = generated_rows(rows)
    columns = sorted(c for c in generated.column_names if c.startswith(TIME_PREFIX))
    if not columns or not generated.num_rows:
        return []
    matrix = np.column_stack([_floats(generated.column(c)) for c in columns])
    result = []
    for index, column in enumerate(columns):
        values = matrix[:, index]
        result.append(_timing(column.removeprefix(TIME_PREFIX), values[np.isfinite(values)]))
    timed = np.isfinite(matrix).any(axis=1)
    result.append(_timing("total", np.nansum(matrix[timed], axis=1)))
    return [timing for timing in result if timing.images]


def _timing(name: str, values: np.ndarray) -> Timing:
    if not values.size:
        return Timing(name, float("nan"), float("nan"), 0)
    return Timing(name, float(np.median(values)), float(np.percentile(values, 95)), int(values.size))


def style_stats(rows: pa.Table) -> list[StyleStats]:
    """Rows per status and the mean of every score over the generated rows, per style (Arrow
    group-bys, so thousands of styles cost two passes)."""
    if "style" not in rows.column_names or not rows.num_rows:
        return []
    counts: dict[str, dict[str, int]] = {}
    grouped = rows.group_by(["style", "status"]).aggregate([("uid", "count")])
    for item in grouped.to_pylist():
        if item["style"] is not None:
            counts.setdefault(item["style"], dict.fromkeys(STATUSES, 0))[item["status"]] = item["uid_count"]
    generated = generated_rows(rows)
    columns = score_columns(rows)
    names = [c.removeprefix(SCORE_PREFIX) for c in columns]
    means: dict[str, dict[str, float | None]] = {}
    if columns and generated.num_rows:
        finite = {c: pa.array(_floats(generated.column(c)), from_pandas=True) for c in columns}  # NaN -> null
        table = pa.table({"style": generated.column("style"), **finite})
        for item in table.group_by("style").aggregate([(c, "mean") for c in columns]).to_pylist():
            means[item["style"]] = {n: item[f"{c}_mean"] for c, n in zip(columns, names, strict=True)}
    return [
        StyleStats(style, counts[style], means.get(style, dict.fromkeys(names))) for style in sorted(counts)
    ]


def extremes(rows: pa.Table, score: str, count: int, shown: np.ndarray) -> tuple[list[dict], list[dict]]:
    """The `count` highest and lowest scored samples among those whose image the report can show
    (`shown`: a boolean mask over `rows`), ties broken by uid."""
    column = SCORE_PREFIX + score
    candidates = rows.filter(pa.array(np.isfinite(_floats(rows.column(column))) & shown))
    if not candidates.num_rows:
        return [], []
    best = candidates.sort_by([(column, "descending"), ("uid", "ascending")]).slice(0, count)
    worst = candidates.sort_by([(column, "ascending"), ("uid", "ascending")]).slice(0, count)
    return best.to_pylist(), worst.to_pylist()


def _floats(values: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _finite(values: pa.ChunkedArray) -> np.ndarray:
    array = _floats(values)
    return array[np.isfinite(array)]


# --- throughput ------------------------------------------------------------------------------------


def throughput(markers: dict, run: dict[str, Any]) -> Throughput:
    """Images committed per minute, from the markers' commit times (one-second resolution)."""
    commits = []
    for marker in markers.values():
        summary = marker.summary
        images = int(summary.get("kept", 0)) + int(summary.get("rejected", 0))
        commits.append((parse_time(marker.committed_at), images))
    commits = [(when, images) for when, images in commits if when is not None]
    total = sum(images for _, images in commits)
    if not commits:
        return Throughput([], total, None, None)
    first = min(when for when, _ in commits)
    finished = max(when for when, _ in commits)
    created = parse_time(run.get("created"))
    started = created if created is not None and created <= first else first
    origin = started.replace(second=0, microsecond=0)
    buckets: Counter[int] = Counter()
    for when, images in commits:
        buckets[int((when - origin).total_seconds() // 60)] += images
    minutes = [(origin + timedelta(minutes=m), buckets.get(m, 0)) for m in range(max(buckets) + 1)]
    return Throughput(minutes, total, started, finished)
