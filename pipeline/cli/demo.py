"""`stylegen demo`: synthetic inputs -> manifest -> validation -> plan -> a full run on local Ray with the
tiny preset (generate, score, filter, commit shards, report), with no download.

Inputs go under `<output>/inputs/`, the run's output (run.json, plan.parquet, README.md, shards/,
metadata/, _SUCCESS/, rejected/, report.html) under `<output>/run/`. Running the demo again resumes:
nothing is redone.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

import typer

from pipeline.cli.errors import exits_on_user_error

DEMO_SHARD_SIZE = 8
# Thresholds picked for the tiny random-weight scorers so the demo shows both outcomes; real runs set
# their own (e.g. clip_t >= 0.25 with openai/clip-vit-large-patch14).
DEMO_FILTERS = ("clip_t >= -0.35", "csd_style >= 0.7", "leakage < 0.93")


def demo_scorers() -> list[str]:
    """Every built-in scorer (tiny twins), so the demo's shards and report show every score and the
    near-duplicate embeddings (`stylegen dedup`)."""
    from pipeline.scoring.registry import BUILTINS

    return list(BUILTINS)


@dataclass(frozen=True)
class DemoResult:
    inputs: object  # manifests.demo_inputs.DemoInputs
    manifest: Path
    report: object  # manifests.validate.ValidationReport
    plan: object  # manifests.plan.Plan
    plan_path: str
    run: object = None  # pipeline.run.summary.RunSummary, when the demo ran


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
    from rich.table import Table

    from manifests.cli_format import make_console

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
    console = make_console()
    console.print(table)
    first = result.plan.shard(0).select(["shard_id", "uid", "style", "content", "prompt"]).to_pylist()
    rows = Table(title="shard 0", title_justify="left")
    rows.add_column("uid", no_wrap=True, min_width=32)  # a uid is read whole; the prompt folds instead
    for header in ("style", "content", "prompt"):
        rows.add_column(header, overflow="fold")
    for row in first:
        content = Path(row["content"]).name if row["content"] else "-"
        rows.add_row(row["uid"], Path(row["style"]).name, content, row["prompt"])
    console.print(rows)


def run_demo(manifest: Path, output: Path, actors: int | None = None):
    """The full run: local Ray, tiny preset, every shard generated, scored, filtered and committed."""
    import os

    from pipeline.run.job import run_job
    from pipeline.run_config import RunConfig

    config = RunConfig.load(
        None,
        {
            "preset": "tiny",
            "shard_size": DEMO_SHARD_SIZE,
            "keep_rejected": True,
            "scoring.filters": list(DEMO_FILTERS),
            "scoring.scorers": demo_scorers(),
        },
    )
    # On a CPU machine each actor holds one logical GPU and one core.
    return run_job(str(manifest), str(output), config, actors=actors or max(1, min(2, os.cpu_count() or 1)))


DEMO_MARK = "stylegen-demo.txt"  # written first into a demo's folder: what a rerun recognises


def claim_demo_folder(output: Path) -> None:
    """Refuse, before anything is written, a target that is not a local folder or holds something other
    than an earlier demo (the demo writes inputs/ and run/ there); mark a new one as the demo's."""
    import re

    from pipeline.errors import UsageError
    from pipeline.output.run_record import RunRecordError, is_run_record, load_run_record
    from pipeline.storage import LocalStore

    text = str(output)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", text):
        raise UsageError(
            f"--output {text}: the demo writes its inputs and run into a local folder; give a folder"
        )
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {text}: is a file, not a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / DEMO_MARK).exists():
        try:
            earlier_demo = is_run_record(load_run_record(LocalStore(output / "run")))
        except RunRecordError:
            earlier_demo = False
        if not earlier_demo:
            raise UsageError(
                f"--output {text}: the folder is not empty and holds no stylegen demo; the demo would "
                "overwrite its inputs/ and run/ there: give an empty or new folder"
            )
    output.mkdir(parents=True, exist_ok=True)
    (output / DEMO_MARK).write_text("made by `stylegen demo`: its inputs/ and run/ may be rewritten by it\n")


def demo(output: Path, *, run: bool = True, actors: int | None = None) -> DemoResult:
    output = Path(output)
    claim_demo_folder(output)
    inputs = make_inputs(output)
    manifest = build_demo_manifest(inputs, output)
    report = validate_demo_manifest(manifest)
    plan, plan_path = plan_demo(manifest, output)
    result = DemoResult(inputs, manifest, report, plan, plan_path)
    print_summary(result)
    if run:
        summary = run_demo(manifest, output / "run", actors)
        result = DemoResult(inputs, manifest, report, plan, plan_path, summary)
        print_where(summary)
    return result


def print_where(summary) -> None:
    from manifests.cli_format import make_console

    console = make_console()
    console.print(
        f"shards:  {summary.output}/shards/shard-*.tar  (kept samples: {{uid}}.png + .txt caption + .json)"
    )
    console.print(f"rows:    {summary.output}/metadata/shard-*.parquet  (every planned row, one table)")
    console.print(f"card:    {summary.card_uri}  (datasets.load_dataset('{summary.output}'))")
    console.print(f"report:  {summary.report_uri}")
    console.print(f"status:  stylegen status {summary.output}")
    console.print(f"dedup:   stylegen dedup {summary.output} --by dino --threshold 0.95 -o demo-deduped")
    if shutil.which("stylegen") is None:  # `make demo` installs it into .venv, which is not on the PATH
        console.print(
            "stylegen is not on your PATH: run `. .venv/bin/activate` first, or call `.venv/bin/stylegen`"
        )
    tars = f"{summary.output}/shards/*.tar"
    console.print(
        'read:    python -c "import glob, webdataset as wds; '
        f"print(sum(1 for _ in wds.WebDataset(sorted(glob.glob('{tars}')), shardshuffle=False)))\""
    )


@exits_on_user_error
def demo_command(
    output: Path = typer.Option(
        Path("demo-output"), "--output", "-o", help="Folder for everything the demo makes"
    ),
    plan_only: bool = typer.Option(False, "--plan-only", help="Stop after the plan: no models, no Ray"),
    actors: int | None = typer.Option(None, "--actors", min=1, help="Generator actors (default: 2 on CPU)"),
) -> None:
    """Synthetic inputs -> manifest -> plan -> full run on local Ray with the tiny preset -> report."""
    demo(output, run=not plan_only, actors=actors)
