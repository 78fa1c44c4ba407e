"""`stylegen select OUTPUT --by SCORE (--top F | --count N | --min V) [--per COLUMN] -o NEW_OUTPUT`.

Offline selection: a new dataset of fresh shards made of a finished run's best KEPT samples.

1. Read every committed shard parquet of OUTPUT (the markers say which) and keep the `kept` rows.
2. Choose uids with pipeline.scoring.select_plan.select_uids (ranking, ties by uid, rounding live there);
   with --count, the groups that had fewer than N scored samples are named in the summary.
3. Write the chosen samples to NEW_OUTPUT with pipeline.dataset.subset (fresh shards in source order,
   run.json with the selection, plan.parquet; resumes the same selection, refuses anything else).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.columns import SCORE_PREFIX
from pipeline.dataset.subset import SelectError, SelectSummary, open_source, write_subset
from pipeline.output.shard_tables import read_shard_tables, with_status


@dataclass(frozen=True)
class Selection:
    """What to keep: the best `top` fraction or the `count` best by score `by` (optionally within each
    group of the column `per`: style, prompt or any other shard parquet column), or every sample whose
    score is >= `minimum`."""

    by: str
    top: float | None = None
    minimum: float | None = None
    per: str | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if sum(value is not None for value in (self.top, self.count, self.minimum)) != 1:
            raise SelectError("give exactly one of --top FRACTION, --count N or --min VALUE")
        if self.top is not None and not 0 < self.top <= 1:
            raise SelectError(f"--top must be a fraction in (0, 1], got {self.top}")
        if self.count is not None and self.count < 1:
            raise SelectError(f"--count must be at least 1, got {self.count}")
        if self.minimum is not None and not math.isfinite(self.minimum):
            raise SelectError(f"--min must be a finite number, got {self.minimum}")
        if self.per is not None and not self.per:
            raise SelectError("--per needs a column name: style, prompt or another shard parquet column")
        if self.per is not None and self.minimum is not None:
            raise SelectError(
                "--per only applies to --top and --count: --min is the same threshold for every group"
            )

    @property
    def score(self) -> str:
        """The score's name without the parquet column prefix (`score_clip_t` and `clip_t` both work)."""
        return self.by.removeprefix(SCORE_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        # `count` only when given: a --top or --min selection records what it did before --count existed
        counted = {} if self.count is None else {"count": self.count}
        return {"by": self.score, "top": self.top, "min": self.minimum, "per": self.per, **counted}


@dataclass
class CountSummary(SelectSummary):
    """--count's summary: how many groups there were, and each group that had fewer than N scored
    kept samples (all of them were selected) with how many it had."""

    groups: int = 0
    short_groups: dict[str, int] = field(default_factory=dict)


# --- the whole selection -----------------------------------------------------------------------------


def select_output(
    source: str,
    output: str,
    selection: Selection,
    *,
    shard_size: int | None = None,
    allow_partial: bool = False,
    workers: int = 4,
    storage: dict[str, Any] | None = None,
    lease=None,
) -> SelectSummary | CountSummary:
    """Write the selection of `source`'s kept samples to `output` (folders or s3://); see the module doc.
    `storage`: open_store options for the s3:// one(s); `lease(output_store)`: a context manager held
    while writing (pipeline.dataset.subset.write_subset)."""
    import pyarrow as pa

    from pipeline.scoring.select_plan import group_sizes, select_uids

    source_store, output_store, source_run, markers = open_source(source, output, allow_partial, storage)

    def needed(name: str) -> bool:  # only what the choice needs; each new shard re-reads its parquets
        return name in ("uid", "shard_id", "status", selection.per) or name.startswith(SCORE_PREFIX)

    rows, schema = read_shard_tables(source_store, markers, keep=needed)
    rows = with_status(rows, "kept")
    column = _score_column(rows, selection, source_store.uri)
    if selection.per:
        _check_group_column(schema, selection.per, source_store.uri)
    candidates = {"uid": rows.column("uid"), selection.score: rows.column(column)}
    if selection.per:
        candidates[selection.per] = rows.column(selection.per)
    candidates = pa.table(candidates)
    chosen = select_uids(
        candidates,
        selection.score,
        top=selection.top,
        count=selection.count,
        minimum=selection.minimum,
        per=selection.per,
    )
    summary = write_subset(
        source_store,
        output_store,
        source_run,
        markers,
        rows.select(["uid", "shard_id"]),
        schema,
        chosen,
        selection.to_dict(),
        shard_size=shard_size,
        workers=workers,
        lease=lease,
    )
    if selection.count is None:
        return summary
    sizes = group_sizes(candidates, selection.score, selection.per)
    short = {str(group): size for group, size in sorted(sizes.items(), key=str) if size < selection.count}
    return CountSummary(**summary.to_dict(), groups=len(sizes), short_groups=short)


def _check_group_column(schema, per: str, where: str) -> None:
    """--per names a column of plain values (strings, numbers) that the shard parquets have."""
    import pyarrow as pa

    if per not in schema.names:
        from pipeline.suggest import did_you_mean

        columns = sorted(schema.names)
        raise SelectError(
            f"unknown column {per!r} for --per{did_you_mean(per, columns)}; the shard parquets of {where} "
            f"have: {', '.join(columns)}"
        )
    kind = schema.field(per).type
    if pa.types.is_nested(kind):
        raise SelectError(f"--per {per}: the column holds {kind} values; group by a column of plain values")


def _score_column(rows, selection: Selection, where: str) -> str:
    available = sorted(  # a score column that is null everywhere was never computed in this run
        c.removeprefix(SCORE_PREFIX)
        for c in rows.column_names
        if c.startswith(SCORE_PREFIX) and rows.column(c).null_count < rows.num_rows
    )
    if selection.score not in available:
        from pipeline.suggest import did_you_mean

        raise SelectError(
            f"unknown score {selection.score!r} for --by{did_you_mean(selection.score, available)}; "
            f"the shard parquets of {where} have: "
            + (", ".join(available) or "no scores at all (was scoring disabled?)")
        )
    return SCORE_PREFIX + selection.score
