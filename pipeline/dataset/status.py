"""`stylegen status OUTPUT`: how far an output is, read from its commit markers.

Committed shards and the kept/rejected/failed sample counts come from `_SUCCESS/` (one LIST plus the
markers); planned shards and rows from run.json (`plan.shards`, `manifest.rows`), or else from
plan.parquet: its footer (row count, `stylegen.plan` metadata's num_shards) or its `shard_id` column."""

from __future__ import annotations

import json
from typing import Any

import typer

from pipeline.output.accounting import SAMPLE_STATUSES, planned_counts, sample_counts
from pipeline.output.run_record import load_run_record


def collect_status(store) -> dict[str, Any]:
    """The status of the output in `store` as a plain dict (what `--json` prints)."""
    markers = store.committed_shards()
    record = load_run_record(store)
    shards_planned, rows_planned = planned_counts(store, record)
    if not markers and shards_planned is None and rows_planned is None and record is None:
        raise ValueError(f"no stylegen output at {store.uri} (no run.json, plan.parquet or commit markers)")
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
    }


def _table(status: dict[str, Any]):
    from rich.table import Table

    def show(value: Any) -> str:
        return "?" if value is None else f"{value:,}"

    table = Table(title=f"stylegen status: {status['output']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(
        "shards committed / planned", f"{show(status['shards_committed'])} / {show(status['shards_planned'])}"
    )
    table.add_row(
        "rows committed / planned", f"{show(status['rows_committed'])} / {show(status['rows_planned'])}"
    )
    for name in SAMPLE_STATUSES:
        table.add_row(f"samples {name}", show(status["samples"][name]))
    if status["shards_failed"]:
        table.add_row("shards that failed every attempt", show(status["shards_failed"]))
    table.add_row("complete", "yes" if status["complete"] else "no")
    return table


def status(
    output: str = typer.Argument(..., help="The output: a folder or s3://bucket/prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """Shards committed / planned and samples kept / rejected / failed of an output."""
    from manifests.cli_format import make_console
    from pipeline.storage import StorageError, open_store

    try:
        result = collect_status(open_store(output))
    except (StorageError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        make_console().print(_table(result))
