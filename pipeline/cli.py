"""The `stylegen` command line. Each command lives beside the code it drives; this file only joins them.
The command modules import their heavy parts (torch, ray, transformers) inside the commands, so
`stylegen --help` stays fast."""

from __future__ import annotations

import typer

from manifests.cli import manifest_app
from pipeline.demo import demo_command
from pipeline.model_stage import models_app
from pipeline.report.command import report
from pipeline.run_cli import run
from pipeline.select import select
from pipeline.status import status

app = typer.Typer(
    name="stylegen",
    help="Style-personalized synthetic image datasets at cluster scale (RB-Modulation on Ray).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(manifest_app, name="manifest")
app.add_typer(models_app, name="models")
app.command("run")(run)
app.command("demo")(demo_command)
app.command("status")(status)
app.command("select")(select)
app.command("report")(report)


if __name__ == "__main__":
    app()
