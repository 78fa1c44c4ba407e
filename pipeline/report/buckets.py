"""The report's size buckets: rows per status and the kept share, per (width, height), for a run whose
manifest has per-row sizes (manifests/row_settings.py); nothing for a run without them."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

import pyarrow as pa

STATUSES = ("kept", "rejected", "failed")


class StatusCounts:
    """Rows and kept share of a group of rows with `counts` (status -> rows): a style, a size bucket."""

    counts: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def kept_share(self) -> float | None:
        """Kept over generated (kept + rejected): what the filters let through."""
        generated = self.counts["kept"] + self.counts["rejected"]
        return self.counts["kept"] / generated if generated else None


@dataclass
class BucketStats(StatusCounts):
    width: int | None  # None: a row that left its size to the run and has no image (failed)
    height: int | None
    counts: dict[str, int]  # status -> rows

    @property
    def label(self) -> str:
        return "run's size (failed)" if self.width is None else f"{self.width}x{self.height}"


def bucket_stats(rows: pa.Table) -> list[BucketStats]:
    """Per (width, height), largest bucket first (one Arrow group-by)."""
    if "width" not in rows.column_names or not rows.num_rows:
        return []
    grouped = rows.group_by(["width", "height", "status"], use_threads=False).aggregate([("uid", "count")])
    buckets: dict[tuple, BucketStats] = {}
    for item in grouped.to_pylist():
        key = (item["width"], item["height"])
        stats = buckets.setdefault(key, BucketStats(*key, dict.fromkeys(STATUSES, 0)))
        stats.counts[item["status"]] = item["uid_count"]
    return sorted(buckets.values(), key=lambda b: (-b.rows, b.width is None, b.width or 0, b.height or 0))


def bucket_table(buckets: list[BucketStats]) -> str:
    """The HTML section: the bucket mix (share of all rows) and the kept share per bucket."""
    if not buckets:
        return ""
    total = sum(b.rows for b in buckets)
    rows = []
    for stats in buckets:
        share = stats.kept_share
        rows.append(
            f'<tr data-bucket="{escape(stats.label)}"><td>{escape(stats.label)}</td>'
            f'<td class="count" data-field="rows">{stats.rows}</td>'
            f'<td class="count" data-field="mix">{100 * stats.rows / total:.1f}%</td>'
            + "".join(f'<td class="count" data-field="{s}">{stats.counts[s]}</td>' for s in STATUSES)
            + f'<td class="count" data-field="kept_share" data-value="{share!r}">'
            f"{'-' if share is None else f'{100 * share:.1f}%'}</td></tr>"
        )
    return (
        '<h2>Size buckets</h2><table id="bucket-table"><tr><th>width x height</th><th>rows</th>'
        "<th>share of rows</th><th>kept</th><th>rejected</th><th>failed</th><th>kept / generated</th></tr>"
        + "".join(rows)
        + "</table>"
    )
