"""`stylegen select OUTPUT --by SCORE (--top F | --min V) [--per style|prompt] -o NEW_OUTPUT`.

Offline selection: a new dataset of fresh shards made of a finished run's best KEPT samples.

1. Read every committed shard parquet of OUTPUT (the markers say which) and keep the `kept` rows.
2. Choose uids with pipeline.scoring.select_plan.select_uids (ranking, ties and rounding live there).
3. Write the chosen samples to NEW_OUTPUT with pipeline.dataset.subset (fresh shards in source order,
   run.json with the selection, plan.parquet; resumes the same selection, refuses anything else).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.columns import SCORE_PREFIX
from pipeline.dataset.subset import SelectError, SelectSummary, open_source, write_subset
from pipeline.output.shard_tables import read_shard_tables, with_status


@dataclass(frozen=True)
class Selection:
    """What to keep: the best `top` fraction by score `by` (optionally per style/prompt), or every
    sample whose score is >= `minimum`."""

    by: str
    top: float | None = None
    minimum: float | None = None
    per: str | None = None

    def __post_init__(self) -> None:
        if (self.top is None) == (self.minimum is None):
            raise SelectError("give exactly one of --top FRACTION or --min VALUE")
        if self.top is not None and not 0 < self.top <= 1:
            raise SelectError(f"--top must be a fraction in (0, 1], got {self.top}")
        if self.minimum is not None and not math.isfinite(self.minimum):
            raise SelectError(f"--min must be a finite number, got {self.minimum}")
        if self.per is not None and self.per not in ("style", "prompt"):
            raise SelectError(f"--per must be style or prompt, got {self.per!r}")
        if self.per is not None and self.minimum is not None:
            raise SelectError("--per only applies to --top: --min is the same threshold for every group")

    @property
    def score(self) -> str:
        """The score's name without the parquet column prefix (`score_clip_t` and `clip_t` both work)."""
        return self.by.removeprefix(SCORE_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.score, "top": self.top, "min": self.minimum, "per": self.per}


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
) -> SelectSummary:
    """Write the selection of `source`'s kept samples to `output` (folders or s3://); see the module doc.
    `storage`: open_store options for the s3:// one(s)."""
    import pyarrow as pa

    from pipeline.scoring.select_plan import select_uids

    source_store, output_store, source_run, markers = open_source(source, output, allow_partial, storage)
    # Only the columns the choice needs; each new shard re-reads its few source parquets in full.
    rows, schema = read_shard_tables(source_store, markers, keep=_selection_column)
    rows = with_status(rows, "kept")
    column = _score_column(rows, selection, source_store.uri)
    if selection.per and selection.per not in rows.column_names:
        raise SelectError(f"{source_store.uri}: the shard parquets have no {selection.per!r} column")
    candidates = {"uid": rows.column("uid"), selection.score: rows.column(column)}
    if selection.per:
        candidates[selection.per] = rows.column(selection.per)
    chosen = select_uids(
        pa.table(candidates), selection.score, top=selection.top, minimum=selection.minimum, per=selection.per
    )
    return write_subset(
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
    )


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


def _selection_column(name: str) -> bool:
    return name in ("uid", "shard_id", "status", "style", "prompt") or name.startswith(SCORE_PREFIX)
