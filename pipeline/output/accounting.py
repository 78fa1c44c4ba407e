"""What an output's commit markers count: samples by status, rows done, shards planned.

The one place that adds up marker summaries, for the run summary, status and the report. Rows of
--retry-failed shards each replaced one failed row counted in an older shard, so they are taken off
the failed count: every row counts once, with its newest result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.output.run_record import load_run_record, retry_shards
from pipeline.storage.layout import PLAN_KEY

SAMPLE_STATUSES = ("kept", "rejected", "failed")


@dataclass(frozen=True)
class SampleCounts:
    kept: int = 0
    rejected: int = 0
    failed: int = 0
    rows: int = 0  # rows the markers account for
    shards_failed: int = 0  # shards recorded with every row failed

    def as_dict(self) -> dict[str, int]:
        return {status: getattr(self, status) for status in SAMPLE_STATUSES}


def sample_counts(markers: Mapping[int, Any], record: dict[str, Any] | None = None) -> SampleCounts:
    """Samples kept / rejected / failed and rows done over `markers` (shard id -> commit marker), each
    row once: with the run `record`, rows of committed retry shards come off the failed count."""
    totals = dict.fromkeys(SAMPLE_STATUSES, 0)
    rows = shards_failed = 0
    for marker in markers.values():
        summary = marker.summary
        for status in SAMPLE_STATUSES:
            totals[status] += int(summary.get(status, 0))
        rows += int(summary.get("rows", sum(int(summary.get(s, 0)) for s in SAMPLE_STATUSES)))
        shards_failed += bool(summary.get("shard_failed"))
    retried = retried_rows(record, markers) if record else 0
    return SampleCounts(
        totals["kept"], totals["rejected"], totals["failed"] - retried, rows - retried, shards_failed
    )


def retried_rows(record: dict[str, Any], markers: Mapping[int, Any]) -> int:
    """Rows of committed retry shards: each replaced one failed row counted in an older shard."""
    if "generations" not in record:
        return 0
    return sum(int(markers[s].summary.get("rows", 0)) for s in retry_shards(record) if s in markers)


def planned_counts(store, record: dict[str, Any] | None = None) -> tuple[int | None, int | None]:
    """(planned shards, planned rows), None where the output does not say: from run.json (`record`,
    read when not given), else from plan.parquet's footer or its shard_id column."""
    if record is None:
        record = load_run_record(store)
    if isinstance(record, dict) and isinstance(record.get("plan"), dict) and "shards" in record["plan"]:
        rows = record.get("manifest", {}).get("rows") if isinstance(record.get("manifest"), dict) else None
        if rows is not None:  # and the rows a quota added to the manifest's
            rows += sum(g["rows"] for g in record.get("generations") or [] if g.get("quota"))
        return int(record["plan"]["shards"]), rows
    if not store.exists(PLAN_KEY):
        return None, None
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from manifests.plan import METADATA_KEY

    with store.open(PLAN_KEY) as file:
        plan = pq.ParquetFile(file)
        rows = plan.metadata.num_rows
        info = json.loads((plan.schema_arrow.metadata or {}).get(METADATA_KEY, b"{}"))
        if "num_shards" in info:
            return int(info["num_shards"]), rows
        if "shard_id" not in plan.schema_arrow.names:
            return None, rows
        shard_ids = plan.read(columns=["shard_id"]).column("shard_id")
        return pc.count_distinct(shard_ids).as_py(), rows
