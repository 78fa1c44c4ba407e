"""The `stylegen` command line: every command lives in this folder, one file each; this file only joins them.
The command modules import their heavy parts (torch, ray, transformers) inside the commands, so
`stylegen --help` stays fast. Each command turns a user error into one line and its exit code through
pipeline/cli/errors.py."""

from __future__ import annotations

import typer

from manifests.cli_format import StylegenCommand, StylegenGroup
from pipeline.cli.card import card
from pipeline.cli.dedup import dedup
from pipeline.cli.demo import demo_command
from pipeline.cli.manifest import manifest_app
from pipeline.cli.models import models_app
from pipeline.cli.report import report
from pipeline.cli.run import run
from pipeline.cli.select import select
from pipeline.cli.status import status

app = typer.Typer(
    cls=StylegenGroup,
    name="stylegen",
    help="Style-personalized synthetic image datasets at cluster scale (RB-Modulation on Ray).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"stylegen {version('stylegen')}")
        raise typer.Exit()


@app.callback()
def main(
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Style-personalized synthetic image datasets at cluster scale (RB-Modulation on Ray)."""


app.add_typer(manifest_app, name="manifest")
app.add_typer(models_app, name="models")
for name, command in (
    ("run", run),
    ("demo", demo_command),
    ("status", status),
    ("select", select),
    ("dedup", dedup),
    ("report", report),
    ("card", card),
):
    app.command(name, cls=StylegenCommand)(command)


if __name__ == "__main__":
    app()
