"""`stylegen demo --output X` checks X before writing anything: a folder of someone else's files, or an
s3:// URI, is one line and nothing is touched; its own folder (marked) is reused."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.cli.demo import DEMO_MARK


def test_a_folder_that_is_not_a_demo_is_left_alone(tmp_path):
    target = tmp_path / "mine"
    (target / "inputs").mkdir(parents=True)
    (target / "inputs" / "prompts.txt").write_text("my own prompts\n")
    result = CliRunner().invoke(app, ["demo", "--plan-only", "--output", str(target)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "not empty and holds no stylegen demo" in result.output
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "inputs",
        "inputs/prompts.txt",
    ]
    assert (target / "inputs" / "prompts.txt").read_text() == "my own prompts\n"


def test_an_s3_output_is_refused_without_a_local_folder_named_after_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--plan-only", "--output", "s3://bucket/demo"])
    assert result.exit_code == 2 and "the demo writes its inputs and run into a local folder" in result.output
    assert os.listdir(tmp_path) == []


def test_the_demo_reuses_its_own_folder(tmp_path):
    target = tmp_path / "demo"
    for _ in range(2):
        result = CliRunner().invoke(app, ["demo", "--plan-only", "--output", str(target)])
        assert result.exit_code == 0, result.output
    assert (target / DEMO_MARK).exists() and (target / "inputs" / "manifest.parquet").exists()
