import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from manifest_fixtures import sample_images, write_parquet
from typer.testing import CliRunner

from manifests.plan import read_plan_info, read_shard
from manifests.read import read_manifest
from pipeline.cli.app import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from manifests.tiny_tokenizer import save_tiny_clip_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    save_tiny_clip_tokenizer(directory)
    return str(directory)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_build_validate_and_plan_through_the_cli(tmp_path, tokenizer_dir):
    images = sample_images(tmp_path)
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    manifest = tmp_path / "out" / "man ifest.parquet"
    styles = os.path.dirname(images["s1"])
    built = invoke(
        "manifest", "build", "--styles", styles, "--contents", images["c1"], "--contents", images["c2"],
        "--prompts", tmp_path / "prompts.txt", "--repeats", "2", "-o", manifest,
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    assert "wrote" in built.output and "24 rows from 3 styles, 2 contents, 2 prompts" in built.output
    assert pq.read_metadata(manifest).num_rows == 24

    checked = invoke("manifest", "validate", manifest, "--check-files", "--tokenizer", tokenizer_dir)
    assert checked.exit_code == 0, checked.output
    assert "OK - 24 rows, 0 error(s), 0 warning(s)" in checked.output

    planned = invoke("manifest", "plan", manifest, "--shard-size", "10", "-o", tmp_path / "plan dir")
    assert planned.exit_code == 0, planned.output
    info = read_plan_info(tmp_path / "plan dir")
    for text in ("rows", "24", "shards", "3", "styles", "composition rows", info["fingerprint"]):
        assert text in planned.output
    assert read_shard(tmp_path / "plan dir", 2).num_rows == 4


def test_build_with_bad_inputs_exits_1_and_lists_them(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat\n")
    result = invoke(
        "manifest", "build", "--styles", tmp_path / "nope dir", "--styles", tmp_path / "prompts.txt",
        "--prompts", tmp_path / "prompts.txt", "-o", tmp_path / "m.parquet",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "2 bad style input(s)" in result.output and "nope dir: no such file or folder" in result.output
    assert not (tmp_path / "m.parquet").exists()


def test_validate_exit_codes_and_report_limits(tmp_path, tokenizer_dir):
    long_prompt = " ".join(["a"] * 80)
    warn_only = write_parquet(tmp_path / "w.parquet", {"prompt": [long_prompt], "style": ["s.png"]})
    result = invoke("manifest", "validate", warn_only, "--tokenizer", tokenizer_dir)
    assert result.exit_code == 0, result.output
    assert "prompt-too-long: 1 problem(s), 1 row(s)" in result.output and "82 tokens" in result.output

    styles = [f"http://host/{i}.png" for i in range(5)]
    bad = write_parquet(tmp_path / "b.parquet", {"prompt": ["a", "b", "c", "d", "e"], "style": styles})
    result = invoke("manifest", "validate", bad, "--tokenizer", tokenizer_dir, "--max-report", "2")
    assert result.exit_code == 1
    assert "unsupported-uri: 5 problem(s), 5 row(s)" in result.output
    assert "http://host/0.png" in result.output and "http://host/1.png" in result.output
    assert (
        "http://host/4.png" not in result.output and "and 3 more unsupported-uri problem(s)" in result.output
    )
    assert "FAILED - 5 rows, 5 error(s), 0 warning(s)" in result.output

    unreadable = invoke("manifest", "validate", tmp_path / "missing.parquet")
    assert unreadable.exit_code == 1 and "schema" in unreadable.output and "not found" in unreadable.output


def test_plan_refuses_duplicates_unless_dedupe(tmp_path):
    path = write_parquet(
        tmp_path / "m.parquet", {"prompt": ["a", "b", "a"], "style": ["s.png", "s.png", "s.png"]}
    )
    refused = invoke("manifest", "plan", path, "--shard-size", "2")
    assert refused.exit_code == 1 and "rows 0, 2" in refused.output and "--dedupe" in refused.output
    deduped = invoke("manifest", "plan", path, "--shard-size", "2", "--dedupe")
    assert deduped.exit_code == 0 and "dropped rows" in deduped.output


def test_manifest_cli_and_demo_modules_import_light():
    """`stylegen --help` must stay fast: no torch, transformers, ray or pyarrow at import time."""
    code = (
        "import json, sys; import pipeline.cli.manifest, pipeline.cli.demo; "
        "print(json.dumps([m for m in ('torch', 'transformers', 'ray', 'pyarrow') if m in sys.modules]))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(output.stdout) == []


def test_build_cli_as_a_subprocess(tmp_path):
    images = sample_images(tmp_path)
    (tmp_path / "p.txt").write_text("a cat\n")
    out = tmp_path / "m.parquet"
    styles = ["--styles", images["s1"], "--styles", images["s2"]]
    command = [
        sys.executable,
        "-m",
        "pipeline.cli.app",
        "manifest",
        "build",
        *styles,
        "--prompts",
        str(tmp_path / "p.txt"),
    ]
    command += ["-o", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_manifest(str(out)).column("style").to_pylist() == [images["s1"], images["s2"]]
