"""Everything the report shows, read from an output: run.json, the commit markers, the shard parquets.

Counts come from the shard parquets (every planned row of every committed shard), so they agree with
`stylegen status`, whose counts come from the markers' summaries. Thresholds come from run.json's
filter rules (`config.scoring.filters`) and, for a selection output, its `--min`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.retry import newest_rows
from pipeline.select import SCORE_PREFIX, read_shard_tables
from pipeline.storage.layout import RUN_KEY

STATUSES = ("kept", "rejected", "failed")
REPORT_COLUMNS = ("uid", "shard_id", "status", "reason", "filter_rule", "style", "content", "prompt")


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


@dataclass
class ReportData:
    output: str
    run: dict[str, Any]  # run.json ({} when missing)
    shards_planned: int | None
    shards_committed: int
    rows: pa.Table  # every row of every committed shard parquet
    status_counts: dict[str, int]
    rule_counts: list[tuple[str, int]]  # rejection rule -> rows, most frequent first
    failed_rows: list[dict[str, Any]]  # the first `max_failed`, by (shard_id, uid)
    scores: list[ScoreValues]
    throughput: Throughput
    rejected_tars: set[int]  # shards whose rejected/ tar is committed
    notes: list[str] = field(default_factory=list)


def gather(store, *, max_failed: int = 50) -> ReportData:
    """Read an output into a ReportData (no images: pipeline.report.gallery loads those)."""
    from pipeline.status import planned_counts
    from pipeline.storage.layout import rejected_key

    run = read_run(store)
    markers = store.committed_shards()
    if not markers and not run:
        raise ValueError(f"no stylegen output at {store.uri}: no run.json and no committed shards")
    rows, _ = read_shard_tables(store, markers, keep=_report_column)
    rows = newest_rows(rows)  # a row retried by --retry-failed counts once: its newest result
    rows = rows.sort_by([("shard_id", "ascending"), ("uid", "ascending")]) if rows.num_rows else rows
    planned, _ = planned_counts(store)
    statuses = Counter(_column(rows, "status"))
    rejected_tars = {shard for shard, marker in markers.items() if rejected_key(shard) in marker.files}
    return ReportData(
        output=store.uri,
        run=run,
        shards_planned=planned,
        shards_committed=len(markers),
        rows=rows,
        status_counts={status: statuses.get(status, 0) for status in STATUSES},
        rule_counts=rule_counts(rows),
        failed_rows=failed_rows(rows, max_failed),
        scores=score_values(rows, thresholds(run)),
        throughput=throughput(markers, run),
        rejected_tars=rejected_tars,
    )


def _report_column(name: str) -> bool:
    """The columns the report uses (not the bulky per-row JSON: params, models, versions)."""
    return name in REPORT_COLUMNS or name.startswith(SCORE_PREFIX)


def read_run(store) -> dict[str, Any]:
    from pipeline.storage import ObjectNotFound

    try:
        run = json.loads(store.get_bytes(RUN_KEY))
    except ObjectNotFound:
        return {}
    except ValueError as error:
        raise ValueError(f"{store.url(RUN_KEY)} is not valid JSON: {error}") from None
    return run if isinstance(run, dict) else {}


def _column(rows: pa.Table, name: str) -> list:
    return rows.column(name).to_pylist() if name in rows.column_names else [None] * rows.num_rows


def with_status(rows: pa.Table, status: str) -> pa.Table:
    if "status" not in rows.column_names:
        return rows.slice(0, 0)
    return rows.filter(pc.equal(rows.column("status"), status))


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
    failed = with_status(rows, "failed").slice(0, limit)
    columns = [c for c in ("uid", "shard_id", "prompt", "reason") if c in failed.column_names]
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


def score_values(rows: pa.Table, limits: list[Threshold]) -> list[ScoreValues]:
    kept, rejected = with_status(rows, "kept"), with_status(rows, "rejected")
    result = []
    for column in sorted(c for c in rows.column_names if c.startswith(SCORE_PREFIX)):
        name = column.removeprefix(SCORE_PREFIX)
        result.append(
            ScoreValues(
                name,
                _finite(kept.column(column)),
                _finite(rejected.column(column)),
                [limit for limit in limits if limit.score == name],
            )
        )
    return result


def _finite(values: pa.ChunkedArray) -> np.ndarray:
    array = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return array[np.isfinite(array)]


# --- throughput ------------------------------------------------------------------------------------


def throughput(markers: dict, run: dict[str, Any]) -> Throughput:
    """Images committed per minute, from the markers' commit times (one-second resolution)."""
    commits = []
    for marker in markers.values():
        summary = marker.summary
        images = int(summary.get("kept", 0)) + int(summary.get("rejected", 0))
        commits.append((_parse_time(marker.committed_at), images))
    commits = [(when, images) for when, images in commits if when is not None]
    total = sum(images for _, images in commits)
    if not commits:
        return Throughput([], total, None, None)
    first = min(when for when, _ in commits)
    finished = max(when for when, _ in commits)
    created = _parse_time(run.get("created"))
    started = created if created is not None and created <= first else first
    origin = started.replace(second=0, microsecond=0)
    buckets: Counter[int] = Counter()
    for when, images in commits:
        buckets[int((when - origin).total_seconds() // 60)] += images
    minutes = [(origin + timedelta(minutes=m), buckets.get(m, 0)) for m in range(max(buckets) + 1)]
    return Throughput(minutes, total, started, finished)


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
