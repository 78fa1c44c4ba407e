"""Which samples `stylegen select` keeps: a pure function over a table of scored rows.

`select_uids(table, by, top=F)` keeps the best fraction F of rows by the score column `by` (DataComp's
strongest simple baseline is a top-30% CLIP-score filter); `minimum=V` keeps rows whose score is >= V.
With `per="style"` or `per="prompt"`, `top` applies within each group, so every style (or prompt) keeps
its own best fraction instead of a few styles taking the whole budget.

Definitions (deterministic, independent of row order):
- rank: score descending, ties broken by uid ascending;
- a group of n scored rows keeps its best round(F * n) rows, rounding halves up (F = 0.3, n = 10 -> 3;
  n = 1 -> 0), computed exactly from F's decimal form;
- rows whose score is null or NaN cannot be ranked: never selected and not counted in n.
The result is the selected uids, sorted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction
from typing import Literal

import pyarrow as pa

GROUPS = ("style", "prompt")


def select_uids(
    table: pa.Table,
    by: str,
    *,
    top: float | None = None,
    minimum: float | None = None,
    per: Literal["style", "prompt"] | None = None,
) -> list[str]:
    """Selected uids of `table` (columns `uid`, `by`, and `per` when given); see the module doc."""
    if (top is None) == (minimum is None):
        raise ValueError("give exactly one of top (a fraction) or minimum (a score)")
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, float)) or not 0 < top <= 1):
        raise ValueError(f"top must be a fraction in (0, 1], got {top!r}")
    if per is not None and per not in GROUPS:
        raise ValueError(f"per must be one of {', '.join(GROUPS)}, got {per!r}")
    if per is not None and minimum is not None:
        raise ValueError("per only applies to top: a minimum is the same threshold for every group")
    needed = ["uid", by] + ([per] if per else [])
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise ValueError(f"the table has no column {missing[0]!r} (columns: {', '.join(table.column_names)})")

    uids = table.column("uid").to_pylist()
    scores = table.column(by).to_pylist()
    groups = table.column(per).to_pylist() if per else [None] * len(uids)
    scored = [
        (group, uid, float(score))
        for uid, score, group in zip(uids, scores, groups, strict=True)
        if score is not None and not math.isnan(score)
    ]
    if minimum is not None:
        return sorted(uid for _, uid, score in scored if score >= minimum)

    ranked: dict[object, list[tuple[float, str]]] = defaultdict(list)
    for group, uid, score in scored:
        ranked[group].append((-score, uid))
    fraction = Fraction(str(top))
    selected: list[str] = []
    for members in ranked.values():
        members.sort()
        count = math.floor(fraction * len(members) + Fraction(1, 2))
        selected += [uid for _, uid in members[:count]]
    return sorted(selected)
