"""`stylegen models stage`: parse the options, stage the weights (pipeline.models.stage), print the
run-config lines that point at them."""

from __future__ import annotations

from pathlib import Path

import typer

from manifests.cli_format import StylegenCommand, StylegenGroup
from pipeline.cli.errors import exits_on_user_error
from pipeline.errors import UsageError
from pipeline.models.stage import (
    DEFAULT_SCORER_MODELS,
    check_target,
    config_snippet,
    resolve_sources,
    stage,
)

models_app = typer.Typer(
    cls=StylegenGroup, help="Stage model weights in object storage for cluster runs.", no_args_is_help=True
)


STAGE_HELP = (
    "Copy a preset's weights to S3 once (from a machine with hub access, or from local folders) and print "
    "the run-config lines (`model_paths`, `scoring.options`) that make every node load them from there: "
    "each node downloads each folder once into its model cache and never calls the hub.\n\n"
    "Licence: the Stable Cascade weights (stabilityai/stable-cascade-prior, stabilityai/stable-cascade) are "
    "released under the stable-cascade-nc-community licence (non-commercial use). The repos are gated: "
    "accept the terms on their hub pages first, then set HF_TOKEN (or run `hf auth login`) on the machine "
    "that stages. The CSD checkpoint is not on the hub: pass --from csd=FILE (or set STYLEGEN_CSD).\n\n"
    "S3 credentials come from the standard AWS chain; the endpoint and addressing style from "
    "AWS_ENDPOINT_URL and STYLEGEN_S3_* variables. Rerunning uploads only what changed."
)


@models_app.command("stage", help=STAGE_HELP, cls=StylegenCommand)
@exits_on_user_error
def stage_command(
    to: str = typer.Option(..., "--to", help="Where to stage: s3://bucket/models/"),
    preset: str = typer.Option("stable-cascade", "--preset", help="stable-cascade | tiny"),
    sources: list[str] = typer.Option(
        None,
        "--from",
        metavar="COMPONENT=PATH...",
        help="COMPONENT=LOCAL_PATH instead of the hub: prior, decoder (folders with the hub layout), "
        "csd (checkpoint file), clip, dino (scorer model folders). Repeatable.",
    ),
    scorers: list[str] = typer.Option(
        list(DEFAULT_SCORER_MODELS),
        "--scorers",
        metavar="NAME...",
        help="Scorer models to stage too: clip, dino (the default scorers), aesthetic, nsfw; 'none' for none",
    ),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where the tiny preset is built"),
) -> None:
    check_target(to)  # before minutes of building or downloading models
    overrides = {}
    for item in sources or []:
        component, sep, path = item.partition("=")
        if not sep or not path:
            raise UsageError(f"--from {item!r}: expected COMPONENT=LOCAL_PATH")
        overrides[component.strip()] = path
    scorer_models = tuple(name for name in scorers if name != "none")
    resolved = resolve_sources(preset, overrides, cache_dir, scorer_models)
    result = stage(resolved, to, echo=lambda line: typer.echo(line, err=True))
    typer.echo(
        f"# staged {len(resolved)} components under {to}: {result.uploaded} files uploaded "
        f"({result.bytes_uploaded / 1e9:.2f} GB), {result.skipped} already there",
        err=True,
    )
    if "csd" not in result.uris and preset == "stable-cascade":
        typer.echo(
            "# no CSD checkpoint staged (--from csd=FILE): SOC uses the CLIP fallback descriptor", err=True
        )
    typer.echo("# add to your run config:")
    typer.echo(config_snippet(preset, result.uris), nl=False)
