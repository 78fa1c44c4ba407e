"""`stylegen run MANIFEST --output URI [...]`: the distributed run (pipeline.run.job.run_job).

Only typer is imported here; torch, Ray and the models load inside the command, so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.errors import exits_on_user_error


@exits_on_user_error
def run(
    manifest: str = typer.Argument(
        ..., help="Manifest: Parquet file or folder, CSV or JSONL; a path or s3://."
    ),
    output: str = typer.Option(..., "--output", "-o", help="Output folder or s3://bucket/prefix."),
    config: Path | None = typer.Option(None, "--config", help="YAML run config (flags below override it)."),
    preset: str | None = typer.Option(None, "--preset", help="Model preset: tiny | stable-cascade."),
    actors: int | None = typer.Option(
        None,
        "--actors",
        min=1,
        help="Target pool size (default: execution.max_actors, else one per GPU present). Actors "
        "beyond the GPUs present wait for nodes an autoscaler adds.",
    ),
    gpus_per_actor: float = typer.Option(1.0, "--gpus-per-actor", min=0.01, help="GPUs each actor holds."),
    shard_size: int | None = typer.Option(None, "--shard-size", min=1, help="Rows per shard."),
    address: str | None = typer.Option(
        None, "--address", help="Ray cluster address (else RAY_ADDRESS/local)."
    ),
    keep_rejected: bool = typer.Option(False, "--keep-rejected", help="Also write rejected samples' tars."),
    restart: bool = typer.Option(False, "--restart", help="Delete this output's old run and start over."),
    append: bool = typer.Option(
        False,
        "--append",
        help="MANIFEST holds every row of the output's run and more: run only the new rows.",
    ),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Regenerate the failed rows of the finished run in OUTPUT into new shards.",
    ),
    dedupe: bool = typer.Option(False, "--dedupe", help="Keep the first of rows with the same uid."),
    wait_for_lease: float | None = typer.Option(
        None,
        "--wait-for-lease",
        min=0,
        help="Seconds to wait while another driver writes OUTPUT (default: refuse at once).",
    ),
    quota_kept: int | None = typer.Option(
        None,
        "--quota-kept",
        min=1,
        help="Kept samples wanted per group (--quota-per): short groups get reseeded rows until reached.",
    ),
    quota_per: str | None = typer.Option(
        None, "--quota-per", help="Quota groups: style (default) | prompt | content | a manifest column."
    ),
    quota_rounds: int | None = typer.Option(
        None, "--quota-rounds", min=1, help="Reseeding rounds at most (default 3)."
    ),
    quota_factor: float | None = typer.Option(
        None,
        "--quota-factor",
        min=1.0,
        help="Rows per group, in all, at most this x its planned rows (default 4).",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Write nothing: print the plan (rows, shards, sizes, quota groups) and its GPU-hours.",
    ),
    assume_acceptance: float | None = typer.Option(
        None,
        "--assume-acceptance",
        min=0.0,
        max=1.0,
        help="--dry-run: the filters' kept share (default 0.5).",
    ),
    like: str | None = typer.Option(
        None, "--like", help="--dry-run: take the acceptance from this earlier output's kept share."
    ),
    progress_interval: float | None = typer.Option(
        None,
        "--progress-interval",
        min=0.1,
        help="Seconds between key=value progress lines when stderr is not a terminal (default 30).",
    ),
) -> None:
    """Generate, score, filter and commit every shard of MANIFEST into OUTPUT; rerun to resume.

    SIGTERM / Ctrl-C stop gracefully (commits in progress finish, exit 143 / 130); rerun to resume."""
    from pydantic import ValidationError

    from manifests.cli_format import make_console
    from pipeline.errors import UserError
    from pipeline.run.job import run_job
    from pipeline.run_config import RunConfig
    from pipeline.storage import StorageError

    console = make_console(stderr=True)
    overrides = {}
    if preset is not None:
        overrides["preset"] = preset
    if shard_size is not None:
        overrides["shard_size"] = shard_size
    if keep_rejected:
        overrides["keep_rejected"] = True
    if dedupe:
        overrides["dedupe"] = True
    if progress_interval is not None:
        overrides["execution.progress_interval_s"] = progress_interval
    if wait_for_lease is not None:
        overrides["execution.wait_for_lease_s"] = wait_for_lease
    for key, value in (
        ("kept", quota_kept), ("per", quota_per), ("max_rounds", quota_rounds), ("max_factor", quota_factor),
    ):  # fmt: skip
        if value is not None:
            overrides[f"quota.{key}"] = value
    try:
        run_config = RunConfig.load(config, overrides)
        if dry_run:
            from pipeline.run.dry_run import dry_run as plan_and_price

            bill = plan_and_price(manifest, run_config, assume_acceptance=assume_acceptance, like=like)
            typer.echo("\n".join(bill.lines()))
            return
        summary = run_job(
            manifest,
            output,
            run_config,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            address=address,
            restart=restart,
            append=append,
            retry_failed=retry_failed,
            console=console,
        )
    except OSError as error:  # the local filesystem (full, read-only, ...): one line, never a traceback
        from pipeline.storage.local import os_error_message

        raise StorageError(os_error_message(error, error.filename or output)) from None
    except ValidationError as error:  # options pydantic rejects outside the config (STYLEGEN_S3_*)
        raise UserError(str(error)) from None
    if summary.shards_failed:
        console.print(
            f"{summary.shards_failed} shard(s) failed every attempt; their rows are recorded as failed in "
            f"their shard parquet (see {summary.log_uri})",
            style="yellow",
            markup=False,
        )
