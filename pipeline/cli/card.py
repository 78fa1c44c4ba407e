"""`stylegen card OUTPUT`: (re)write an output's Hugging Face dataset card, README.md (pipeline.dataset.card).

Every run, selection and dedup writes it at the end; this command is for an output whose card could not
be written then (a warning), or one made before cards existed (format 1). Only typer is imported here."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import exits_on_user_error
from pipeline.cli.storage_options import CONFIG_OPTION, ENDPOINT_OPTION, storage_options


@exits_on_user_error(exit_code=2, also=(ValueError,))
def card(
    output: str = typer.Argument(..., help="The output: a folder or s3://bucket/prefix."),
    config: Path | None = CONFIG_OPTION,
    endpoint_url: str | None = ENDPOINT_OPTION,
) -> None:
    """Write README.md, the dataset card, so `datasets.load_dataset(OUTPUT)` reads the shards typed."""
    from pipeline.dataset.card import write_dataset_card
    from pipeline.errors import OutputError
    from pipeline.storage import ObjectNotFound, open_store

    try:
        where = write_dataset_card(open_store(output, **storage_options([output], config, endpoint_url)))
    except ObjectNotFound as error:
        raise OutputError(f"no stylegen output at {output} ({error})") from None
    typer.echo(where)
