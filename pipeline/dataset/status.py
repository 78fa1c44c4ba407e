"""How far an output is, read from its commit markers (what `stylegen status OUTPUT` shows).

Committed shards and the kept/rejected/failed sample counts come from `_SUCCESS/`: one LIST, plus the
commit ledger and a GET of each marker it lacks (pipeline/storage/ledger.py). Planned shards and rows
come from run.json (`plan.shards`, `manifest.rows`), or else from plan.parquet: its footer (row count,
`stylegen.plan` metadata's num_shards) or its `shard_id` column. A run with a quota adds its groups as
the last run left them (summary.json)."""

from __future__ import annotations

from typing import Any

from pipeline.errors import OutputError
from pipeline.output.accounting import planned_counts, sample_counts
from pipeline.output.run_record import load_run_record, load_summary, require_stylegen_output
from pipeline.storage.ledger import rebuild_ledger


def collect_status(store) -> dict[str, Any]:
    """The status of the output in `store` as a plain dict (what `--json` prints)."""
    markers = store.committed_shards()
    record = load_run_record(store)
    shards_planned, rows_planned = planned_counts(store, record)
    if not markers and shards_planned is None and rows_planned is None and record is None:
        raise OutputError(f"no stylegen output at {store.uri} (no run.json, plan.parquet or commit markers)")
    counts = sample_counts(markers, record)
    return {
        "output": store.uri,
        "shards_committed": len(markers),
        "shards_planned": shards_planned,
        "shards_failed": counts.shards_failed,
        "rows_planned": rows_planned,
        "rows_committed": counts.rows,
        "samples": counts.as_dict(),
        "complete": shards_planned is not None and len(markers) >= shards_planned,
        **({"quota": quota} if (quota := last_quota(store)) is not None else {}),
    }


def last_quota(store) -> list[dict[str, Any]] | None:
    """The quota groups as the last run left them (summary.json's `quota`), for a run with a quota."""
    groups = (load_summary(store) or {}).get("quota")
    return groups if isinstance(groups, list) else None


def rebuild_output_ledger(store) -> int:
    """`status --rebuild-ledger`: write the output's commit ledger anew from its markers (one GET each);
    only into a stylegen output (run or derived dataset). Returns how many markers it holds."""
    require_stylegen_output(store)
    return rebuild_ledger(store)
