"""`stylegen select OUTPUT --by SCORE (--top F | --count N | --min V) [--per COLUMN] -o NEW_OUTPUT`: a new
dataset of a finished run's best kept samples (pipeline.dataset.select). Only typer is imported here."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from pipeline.cli.errors import exits_on_user_error
from pipeline.cli.storage_options import CONFIG_OPTION, ENDPOINT_OPTION, storage_options

LEASE_TTL_S = 120.0  # as `stylegen run`'s execution.lease_ttl_s: a killed command's lease lapses after it
WAIT_FOR_LEASE_OPTION = typer.Option(
    0.0, "--wait-for-lease", min=0, help="Wait up to S seconds for another writer of -o to finish."
)


class Group(str, Enum):
    """What --within (dedup) groups by."""

    style = "style"
    prompt = "prompt"


@exits_on_user_error(exit_code=2)
def select(
    output: str = typer.Argument(
        ..., help="The finished run to select from: a folder or s3://bucket/prefix."
    ),
    by: str = typer.Option(..., "--by", help="The score to rank by, e.g. clip_t or csd_style."),
    top: float | None = typer.Option(None, "--top", help="Keep the best FRACTION (0 < F <= 1) of the kept."),
    count: int | None = typer.Option(
        None, "--count", min=1, help="Keep the N best (of each --per group; all of a smaller group)."
    ),
    minimum: float | None = typer.Option(None, "--min", help="Keep the samples whose score is >= VALUE."),
    per: str | None = typer.Option(
        None, "--per", help="Apply --top / --count within each group: style, prompt or another column."
    ),
    new_output: str = typer.Option(
        ..., "-o", "--output", help="Where the new dataset goes (folder or s3://)."
    ),
    shard_size: int | None = typer.Option(
        None, "--shard-size", min=1, help="Samples per new shard (default: the source's shard size)."
    ),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Select from an unfinished run's committed shards."
    ),
    workers: int = typer.Option(4, "--workers", min=1, help="New shards written in parallel."),
    wait_for_lease: float = WAIT_FOR_LEASE_OPTION,
    config: Path | None = CONFIG_OPTION,
    endpoint_url: str | None = ENDPOINT_OPTION,
) -> None:
    """Write a new dataset of fresh shards from OUTPUT's kept samples, chosen by a score."""
    from manifests.cli_format import make_console
    from pipeline.dataset.select import Selection, select_output

    selection = Selection(by, top, minimum, per, count)
    summary = select_output(
        output,
        new_output,
        selection,
        shard_size=shard_size,
        allow_partial=allow_partial,
        workers=workers,
        storage=storage_options([output, new_output], config, endpoint_url),
        lease=output_lease(wait_for_lease),
    )
    console = make_console()
    console.print(summary_table("select", summary))
    short = getattr(summary, "short_groups", None)
    if short:
        named = ", ".join(f"{group!r} ({size})" for group, size in short.items())
        console.print(
            f"{len(short)} of {summary.groups} groups had fewer than {count} scored kept samples, "
            f"so all of theirs were selected: {named}"
        )


def output_lease(wait_s: float):
    """The new output's one-writer lease, as `stylegen run` takes on its output (pipeline.run.lease)."""
    from pipeline.run.lease import OutputLease

    return lambda store: OutputLease(store, LEASE_TTL_S, wait_s=wait_s)


def summary_table(command: str, summary):
    """The table `stylegen select` and `stylegen dedup` print: source -> new output and the counts."""
    from rich.table import Table

    table = Table(title=f"stylegen {command}: {summary.source} -> {summary.output}", show_header=False)
    for name, value in summary.to_dict().items():
        if isinstance(value, dict):  # select --count's short groups: named in a line of their own
            value = len(value)
        table.add_row(name.replace("_", " "), str(value))
    return table
