"""The `stylegen` command line. Each command group lives beside the code it drives; this file only
joins them, so `stylegen --help` stays fast (heavy imports happen inside the commands)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="stylegen",
    help="Style-personalized synthetic image datasets at cluster scale (RB-Modulation on Ray).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# --- command registrations (one line each) ---


if __name__ == "__main__":
    app()
