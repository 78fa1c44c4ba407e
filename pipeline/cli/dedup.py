"""`stylegen dedup OUTPUT --by dino --threshold T [--within style|prompt] [--prefer SCORE] -o NEW_OUTPUT`:
a new dataset keeping one sample of every group of near-duplicates (pipeline.dataset.dedup). Only typer
is imported here."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import exits_on_user_error
from pipeline.cli.select import WAIT_FOR_LEASE_OPTION, Group, output_lease, summary_table
from pipeline.cli.storage_options import CONFIG_OPTION, ENDPOINT_OPTION, storage_options


@exits_on_user_error(exit_code=2)
def dedup(
    output: str = typer.Argument(
        ..., help="The finished run to deduplicate: a folder or s3://bucket/prefix."
    ),
    by: str = typer.Option(
        "dino", "--by", help="The embedding: dino reads embedding_dino (dino_embedding scorer)."
    ),
    threshold: float = typer.Option(
        ..., "--threshold", help="Cosine >= T makes two samples near-duplicates."
    ),
    within: Group | None = typer.Option(
        None, "--within", help="Only compare samples of the same style/prompt."
    ),
    prefer: str | None = typer.Option(
        None, "--prefer", help="Keep each group's best by this score (e.g. aesthetic)."
    ),
    new_output: str = typer.Option(
        ..., "-o", "--output", help="Where the new dataset goes (folder or s3://)."
    ),
    shard_size: int | None = typer.Option(None, "--shard-size", min=1, help="Samples per new shard."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Use an unfinished run's committed shards."
    ),
    workers: int = typer.Option(4, "--workers", min=1, help="New shards written in parallel."),
    block: int = typer.Option(4096, "--block", min=1, help="Rows per block of the similarity products."),
    wait_for_lease: float = WAIT_FOR_LEASE_OPTION,
    config: Path | None = CONFIG_OPTION,
    endpoint_url: str | None = ENDPOINT_OPTION,
) -> None:
    """Write a new dataset of fresh shards keeping one sample of every group of near-duplicates."""
    from rich.console import Console

    from pipeline.dataset.dedup import Dedup, dedup_output

    spec = Dedup(by, threshold, within.value if within else None, prefer)
    summary = dedup_output(
        output,
        new_output,
        spec,
        shard_size=shard_size,
        allow_partial=allow_partial,
        workers=workers,
        block=block,
        storage=storage_options([output, new_output], config, endpoint_url),
        lease=output_lease(wait_for_lease),
    )
    Console().print(summary_table("dedup", summary))
