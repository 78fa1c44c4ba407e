"""`stylegen demo`: make synthetic inputs, build a manifest, validate it and plan it, with no download.

Each step is its own function so the full demo (generate, score, write shards) can call them and add
its run step after `plan_demo`. Everything the demo makes goes under `<output>/inputs/`; the output
root is left for the run's own layout (run.json, plan.parquet, shards/, ...).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import typer

DEMO_SHARD_SIZE = 8


@dataclass(frozen=True)
class DemoResult:
    inputs: object  # manifests.demo_inputs.DemoInputs
    manifest: Path
    report: object  # manifests.validate.ValidationReport
    plan: object  # manifests.plan.Plan
    plan_path: str


def make_inputs(output: Path):
    from manifests.demo_inputs import write_demo_inputs

    return write_demo_inputs(output / "inputs")


def build_demo_manifest(inputs, output: Path) -> Path:
    """Stylization rows (every style x prompt) then composition rows (every style x content, each content
    with its own prompt), through the same streaming writer as `stylegen manifest build`."""
    from manifests.build import iter_manifest_batches, read_prompts, write_manifest

    manifest = output / "inputs" / "manifest.parquet"
    stylization = iter_manifest_batches(inputs.styles, read_prompts(inputs.prompts_file))
    pairs = list(itertools.product(inputs.styles, range(len(inputs.contents))))
    composition = iter_manifest_batches(
        styles=[style for style, _ in pairs],
        prompts=[inputs.content_prompts[c] for _, c in pairs],
        contents=[inputs.contents[c] for _, c in pairs],
        pairing="zip",
    )
    write_manifest(itertools.chain(stylization, composition), str(manifest))
    return manifest


def validate_demo_manifest(manifest: Path):
    """Full validation, files included; the demo's own inputs must be clean."""
    from manifests.validate import validate_manifest

    report = validate_manifest(str(manifest), check_files=True)
    report.raise_for_errors()
    return report


def plan_demo(manifest: Path, output: Path, shard_size: int = DEMO_SHARD_SIZE):
    from manifests.plan import make_plan
    from manifests.read import read_manifest

    plan = make_plan(read_manifest(str(manifest)), shard_size)
    return plan, plan.write(output / "inputs" / "plan")


def print_summary(result: DemoResult) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = result.plan.summary()
    table = Table(title="stylegen demo", title_justify="left")
    for header in ("made", "count", "where"):
        table.add_column(header, overflow="fold")
    table.add_row("style images", str(len(result.inputs.styles)), str(Path(result.inputs.styles[0]).parent))
    table.add_row(
        "content images", str(len(result.inputs.contents)), str(Path(result.inputs.contents[0]).parent)
    )
    table.add_row("manifest rows", str(summary["rows"]), str(result.manifest))
    table.add_row("  composition rows", str(summary["composition rows"]), "rows with a content image")
    table.add_row(
        "validation", f"{len(result.report.errors)} errors", f"{len(result.report.warnings)} warnings"
    )
    table.add_row("shards", str(summary["shards"]), result.plan_path)
    table.add_row("plan fingerprint", "", summary["fingerprint"])
    console = Console(highlight=False)
    console.print(table)
    first = result.plan.shard(0).select(["shard_id", "uid", "style", "content", "prompt"]).to_pylist()
    rows = Table(title="shard 0", title_justify="left")
    for header in ("uid", "style", "content", "prompt"):
        rows.add_column(header, overflow="fold")
    for row in first:
        content = Path(row["content"]).name if row["content"] else "-"
        rows.add_row(row["uid"], Path(row["style"]).name, content, row["prompt"])
    console.print(rows)


def demo(output: Path) -> DemoResult:
    output = Path(output)
    inputs = make_inputs(output)
    manifest = build_demo_manifest(inputs, output)
    report = validate_demo_manifest(manifest)
    plan, plan_path = plan_demo(manifest, output)
    result = DemoResult(inputs, manifest, report, plan, plan_path)
    print_summary(result)
    return result


def demo_command(
    output: Path = typer.Option(
        Path("demo-output"), "--output", "-o", help="Folder for everything the demo makes"
    ),
) -> None:
    """Make synthetic inputs, then build, validate and plan a demo manifest (no downloads)."""
    demo(output)
