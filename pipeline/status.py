"""`stylegen status OUTPUT`: how far an output is, read from its commit markers.

Committed shards and the kept/rejected/failed sample counts come from `_SUCCESS/` (one LIST plus the
markers); planned shards and rows from run.json (`plan.shards`, `manifest.rows`), or else from
plan.parquet: its footer (row count, `stylegen.plan` metadata's num_shards) or its `shard_id` column."""

from __future__ import annotations

import json
from typing import Any

import typer

from pipeline.storage.layout import PLAN_KEY, RUN_KEY

SAMPLE_STATUSES = ("kept", "rejected", "failed")


def planned_counts(store) -> tuple[int | None, int | None]:
    """(planned shards, planned rows), None where the output does not say."""
    from pipeline.storage import ObjectNotFound

    try:
        record = json.loads(store.get_bytes(RUN_KEY))
    except ObjectNotFound:
        record = None
    except ValueError as error:  # not JSON, or not UTF-8
        raise ValueError(f"{store.url(RUN_KEY)} is not valid JSON: {error}") from None
    if isinstance(record, dict) and isinstance(record.get("plan"), dict) and "shards" in record["plan"]:
        rows = record.get("manifest", {}).get("rows") if isinstance(record.get("manifest"), dict) else None
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


def collect_status(store) -> dict[str, Any]:
    """The status of the output in `store` as a plain dict (what `--json` prints)."""
    markers = store.committed_shards()
    shards_planned, rows_planned = planned_counts(store)
    if not markers and shards_planned is None and rows_planned is None and not store.exists(RUN_KEY):
        raise ValueError(f"no stylegen output at {store.uri} (no run.json, plan.parquet or commit markers)")
    samples = {status: 0 for status in SAMPLE_STATUSES}
    rows_done = 0
    for marker in markers.values():
        for status in SAMPLE_STATUSES:
            samples[status] += int(marker.summary.get(status, 0))
        rows_done += int(marker.summary.get("rows", sum(marker.summary.get(s, 0) for s in SAMPLE_STATUSES)))
    retried = _retried_rows(store, markers)  # rows of --retry-failed shards: each counts once
    samples["failed"] -= retried
    rows_done -= retried
    return {
        "output": store.uri,
        "shards_committed": len(markers),
        "shards_planned": shards_planned,
        "shards_failed": sum(1 for marker in markers.values() if marker.summary.get("shard_failed")),
        "rows_planned": rows_planned,
        "rows_committed": rows_done,
        "samples": samples,
        "complete": shards_planned is not None and len(markers) >= shards_planned,
    }


def _retried_rows(store, markers) -> int:
    from pipeline.retry import retried_rows
    from pipeline.storage import ObjectNotFound

    try:
        record = json.loads(store.get_bytes(RUN_KEY))
    except (ObjectNotFound, ValueError):
        return 0
    return retried_rows(record, markers) if isinstance(record, dict) and "generations" in record else 0


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
