"""`stylegen status OUTPUT [--json]`: how far an output is (pipeline.dataset.status.collect_status).
Only typer is imported here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pipeline.cli.errors import exits_on_user_error
from pipeline.cli.storage_options import CONFIG_OPTION, ENDPOINT_OPTION, storage_options


@exits_on_user_error(exit_code=2, also=(ValueError,))
def status(
    output: str = typer.Argument(..., help="The output: a folder or s3://bucket/prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
    config: Path | None = CONFIG_OPTION,
    endpoint_url: str | None = ENDPOINT_OPTION,
    rebuild_ledger: bool = typer.Option(
        False, "--rebuild-ledger", help="Write the commit ledger anew from the markers (one read each) first."
    ),
) -> None:
    """Shards committed / planned and samples kept / rejected / failed of an output."""
    import json

    from manifests.cli_format import make_console
    from pipeline.dataset.status import collect_status, rebuild_output_ledger
    from pipeline.storage import open_store

    store = open_store(output, **storage_options([output], config, endpoint_url))
    if rebuild_ledger:
        typer.echo(f"ledger rebuilt from {rebuild_output_ledger(store):,} commit markers", err=True)
    result = collect_status(store)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        make_console().print(status_table(result))


def status_table(status: dict[str, Any]):
    """The rich table `stylegen status` prints."""
    from rich.table import Table

    from pipeline.output.accounting import SAMPLE_STATUSES

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
    if status.get("quota"):
        groups = status["quota"]
        short = [group for group in groups if group["reason"]]
        table.add_row(
            "quota groups reached (last run)",
            f"{len(groups) - len(short):,} / {len(groups):,} at {groups[0]['target']:,} kept",
        )
        for group in short[:10]:
            table.add_row(f"  short: {group['group']}", f"{group['kept']:,} kept: {group['reason']}")
    return table
