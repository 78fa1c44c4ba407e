"""`stylegen manifest build | validate | plan` (the manifests package); imports live inside the commands, so
`--help` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer

from manifests.cli_format import StylegenCommand, StylegenGroup
from pipeline.cli.errors import exits_on_user_error

manifest_app = typer.Typer(
    cls=StylegenGroup,
    help="Build, validate and plan manifests of (style, content, prompt) rows.",
    no_args_is_help=True,
)


@manifest_app.command(cls=StylegenCommand)
@exits_on_user_error
def build(
    styles: list[str] = typer.Option(
        ..., "--styles", metavar="PATH...", help="Style images: files, folders (recursive), globs, s3://"
    ),
    prompts: str = typer.Option(
        ..., "--prompts", help="Text file (one prompt per line) or CSV/JSONL with 'prompt'"
    ),
    out: str = typer.Option(..., "-o", "--output", help="The manifest to write (.parquet, local or s3://)"),
    contents: list[str] = typer.Option(
        None, "--contents", metavar="PATH...", help="Content images (composition rows)"
    ),
    pairing: str = typer.Option("cross", help="cross | zip | sample"),
    samples: int = typer.Option(None, help="Rows to draw with --pairing sample"),
    repeats: int = typer.Option(1, help="Rows per (style, content, prompt), each with its own seed"),
    seed: int = typer.Option(0, help="Seed for --pairing sample and --repeats"),
    aspect_ratios: str = typer.Option(
        None,
        "--aspect-ratios",
        metavar="W:H,...",
        help="Size buckets, e.g. 1:1,4:3,3:4,16:9 (from each seed)",
    ),
    resolution: int = typer.Option(1024, "--resolution", help="Bucket area: about resolution² pixels"),
) -> None:
    """Write a manifest from image folders and a prompt list (streams; any size)."""
    from manifests.buckets import bucket_sizes, parse_ratios
    from manifests.build import build_manifest

    sizes = bucket_sizes(parse_ratios(aspect_ratios), resolution) if aspect_ratios else None
    result = build_manifest(
        styles, prompts, out, contents or None, pairing, samples, repeats, seed, sizes=sizes
    )
    typer.echo(
        f"wrote {out}: {result.rows} rows from {result.styles} styles, {result.contents} contents, "
        f"{result.prompts} prompts ({pairing}, repeats={repeats})"
    )
    if sizes:
        shown = ", ".join(
            f"{ratio.strip()} -> {w}x{h}"
            for ratio, (w, h) in zip(aspect_ratios.split(","), sizes, strict=True)
        )
        typer.echo(f"size buckets (from each row's seed): {shown}")
    if result.ignored:
        shown = ", ".join(result.ignored[:5]) + (" ..." if len(result.ignored) > 5 else "")
        typer.echo(f"ignored {len(result.ignored)} non-image file(s): {shown}")


@manifest_app.command(cls=StylegenCommand)
@exits_on_user_error
def validate(
    manifest: str = typer.Argument(..., help="Manifest file, folder or s3:// URI"),
    check_files: bool = typer.Option(False, "--check-files", help="Open and decode every referenced image"),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="CLIP tokenizer folder for prompt lengths"),
    max_report: int = typer.Option(10, "--max-report", help="Problems shown per kind"),
    workers: int = typer.Option(16, help="Threads for --check-files"),
) -> None:
    """Report problems by kind, with rows and columns. Exit 1 on errors, 0 with only warnings."""
    from manifests.validate import validate_manifest

    report = validate_manifest(manifest, check_files=check_files, tokenizer_dir=tokenizer, workers=workers)
    print_report(report, max_report)
    raise typer.Exit(0 if report.ok else 1)


def print_report(report, max_report: int = 10) -> None:
    from rich.table import Table

    from manifests.cli_format import make_console

    console = make_console(soft_wrap=True)  # paths and uids stay on one line
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    for kind, problems in report.by_kind().items():
        rows = sum(p.row_count for p in problems)
        table = Table(title=f"{kind}: {len(problems)} problem(s), {rows} row(s)", title_justify="left")
        for header in ("severity", "column", "rows", "reason"):
            table.add_column(header, overflow="fold")
        for problem in problems[:max_report]:
            table.add_row(problem.severity, problem.column or "", _rows_text(problem), problem.reason)
        if len(problems) > max_report:
            table.add_row("", "", "", f"... and {len(problems) - max_report} more {kind} problem(s)")
        console.print(table)
    verdict = "OK" if report.ok else "FAILED"
    console.print(
        f"{report.source}: {verdict} - {report.num_rows} rows, {len(report.errors)} error(s), "
        f"{len(report.warnings)} warning(s)",
        markup=False,
    )


def _rows_text(problem) -> str:
    shown = ", ".join(str(r) for r in problem.rows[:8])
    hidden = problem.row_count - min(len(problem.rows), 8)
    return shown + (f" (+{hidden})" if hidden > 0 else "")


@manifest_app.command(cls=StylegenCommand)
@exits_on_user_error(also=(ValueError,))  # ValueError: a bad --order
def plan(
    manifest: str = typer.Argument(..., help="Manifest file, folder or s3:// URI"),
    shard_size: int = typer.Option(..., "--shard-size", min=1, help="Rows per shard"),
    order: str = typer.Option("style", help="style (shards share styles) | uid"),
    dedupe: bool = typer.Option(False, "--dedupe", help="Keep the first row of each duplicate uid"),
    output: str = typer.Option(None, "-o", "--output", help="Folder (or s3:// prefix) for plan.parquet"),
) -> None:
    """Split the manifest into shards; print a summary, and write plan.parquet with -o."""
    from manifests.cli_format import make_console
    from manifests.plan import plan_manifest

    made = plan_manifest(manifest, shard_size, order, dedupe=dedupe)
    lines = {**made.summary()}
    if made.dropped_rows:
        lines["dropped rows"] = ", ".join(map(str, made.dropped_rows[:20])) + (
            " ..." if len(made.dropped_rows) > 20 else ""
        )
    if output:
        lines["written"] = made.write(output)
    console = make_console(soft_wrap=True)
    console.print(f"plan of {manifest}", markup=False, style="bold")
    for key, value in lines.items():
        console.print(f"  {key + ':':<20} {value}", markup=False)
