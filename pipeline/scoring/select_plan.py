"""Which samples `stylegen select` keeps: a pure function over a table of scored rows.

`select_uids(table, by, top=F)` keeps the best fraction F of rows by the score column `by` (DataComp's
strongest simple baseline is a top-30% CLIP-score filter); `count=N` keeps the N best; `minimum=V` keeps
rows whose score is >= V. With `per=COLUMN` (style, prompt or any other column), `top` and `count` apply
within each group of rows sharing that column's value, so every style (or prompt) keeps its own best
instead of a few styles taking the whole budget.

Definitions (deterministic, independent of row order):
- rank: score descending, ties broken by uid ascending;
- a group of n scored rows keeps its best round(F * n) rows, rounding halves up (F = 0.3, n = 10 -> 3;
  n = 1 -> 0), computed exactly from F's decimal form; with `count`, its best min(N, n) rows (all of a
  smaller group: `group_sizes` tells which groups had fewer than N);
- rows whose score is null or NaN cannot be ranked: never selected and not counted in n;
- rows whose group value is null form one group of their own.
The result is the selected uids, sorted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction

import pyarrow as pa


def select_uids(
    table: pa.Table,
    by: str,
    *,
    top: float | None = None,
    count: int | None = None,
    minimum: float | None = None,
    per: str | None = None,
) -> list[str]:
    """Selected uids of `table` (columns `uid`, `by`, and `per` when given); see the module doc."""
    if sum(value is not None for value in (top, count, minimum)) != 1:
        raise ValueError("give exactly one of top (a fraction), count (rows per group) or minimum (a score)")
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, float)) or not 0 < top <= 1):
        raise ValueError(f"top must be a fraction in (0, 1], got {top!r}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a whole number of at least 1, got {count!r}")
    if per is not None and minimum is not None:
        raise ValueError("per only applies to top and count: a minimum is the same threshold for every group")
    groups = ranked_groups(table, by, per)
    selected: list[str] = []
    for members in groups.values():
        if minimum is not None:
            selected += [uid for negative, uid in members if -negative >= minimum]
        elif count is not None:
            selected += [uid for _, uid in members[:count]]
        else:
            keep = math.floor(Fraction(str(top)) * len(members) + Fraction(1, 2))
            selected += [uid for _, uid in members[:keep]]
    return sorted(selected)


def group_sizes(table: pa.Table, by: str, per: str | None = None) -> dict[object, int]:
    """The number of rows with a score in each group of `per` (one group, key None, without `per`):
    what `count` is compared with."""
    return {group: len(members) for group, members in ranked_groups(table, by, per).items()}


def ranked_groups(table: pa.Table, by: str, per: str | None) -> dict[object, list[tuple[float, str]]]:
    """Each group's scored rows as (-score, uid), best first (ties by uid)."""
    needed = ["uid", by] + ([per] if per else [])
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise ValueError(f"the table has no column {missing[0]!r} (columns: {', '.join(table.column_names)})")
    uids = table.column("uid").to_pylist()
    scores = table.column(by).to_pylist()
    keys = table.column(per).to_pylist() if per else [None] * len(uids)
    ranked: dict[object, list[tuple[float, str]]] = defaultdict(list)
    for uid, score, group in zip(uids, scores, keys, strict=True):
        if score is not None and not math.isnan(score):
            ranked[group].append((-float(score), uid))
    for members in ranked.values():
        members.sort()
    return dict(ranked)
