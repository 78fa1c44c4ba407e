"""`stylegen report OUTPUT [-o FILE]`: write an output's report.html (pipeline.report.build). Only typer
is imported here."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import exits_on_user_error
from pipeline.cli.storage_options import CONFIG_OPTION, ENDPOINT_OPTION, storage_options


@exits_on_user_error(exit_code=2, also=(ValueError,))
def report(
    output: str = typer.Argument(..., help="The output: a folder or s3://bucket/prefix."),
    destination: Path | None = typer.Option(
        None, "-o", "--output", help="Write the report to this file instead of OUTPUT/report.html."
    ),
    per_style: int = typer.Option(8, "--per-style", min=1, help="Sample thumbnails per style."),
    max_styles: int = typer.Option(30, "--max-styles", min=1, help="Styles shown."),
    config: Path | None = CONFIG_OPTION,
    endpoint_url: str | None = ENDPOINT_OPTION,
) -> None:
    """Write a self-contained report.html (images inline, no external assets) into OUTPUT or to FILE."""
    from pipeline.report.build import write_report

    storage = storage_options([output], config, endpoint_url)
    typer.echo(write_report(output, destination, storage, per_style=per_style, max_styles=max_styles))
