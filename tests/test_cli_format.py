"""The command line as a user meets it: several values after one list flag, help that shows arguments by
name and flags without a value, `--version`."""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
from manifest_fixtures import sample_images
from typer.testing import CliRunner

from manifests.cli_format import spread_list_options
from manifests.read import read_manifest
from pipeline.cli.app import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--styles", "a", "b", "-o", "x"], ["--styles", "a", "--styles", "b", "-o", "x"]),
        (["--styles", "a", "--styles", "b"], ["--styles", "a", "--styles", "b"]),
        (["--prompts", "p", "--styles", "a", "b", "c"], ["--prompts", "p"] + ["--styles", "a"] * 1
         + ["--styles", "b", "--styles", "c"]),
        (["--seed", "-1", "--styles", "a", "--", "b"], ["--seed", "-1", "--styles", "a", "--", "b"]),
        (["--pairing", "zip", "x"], ["--pairing", "zip", "x"]),  # not a list option: left alone
    ],
)  # fmt: skip
def test_spread_list_options(args, expected):
    assert spread_list_options(args, {"--styles", "--contents"}) == expected


def test_several_styles_and_contents_after_one_flag_as_the_readme_writes_it(tmp_path):
    images = sample_images(tmp_path)
    (tmp_path / "p.txt").write_text("a cat\n")
    out = tmp_path / "m.parquet"
    result = invoke(
        "manifest", "build", "--styles", images["s1"], images["s2"], "--prompts", tmp_path / "p.txt",
        "--contents", images["c1"], images["c2"], "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = read_manifest(str(out))
    assert sorted(set(table.column("style").to_pylist())) == sorted([images["s1"], images["s2"]])
    assert sorted(set(table.column("content").to_pylist())) == sorted([images["c1"], images["c2"]])
    assert table.num_rows == 4


@pytest.mark.parametrize(
    ("command", "argument", "flags"),
    [
        (["run"], "MANIFEST", ["--keep-rejected", "--restart", "--dedupe"]),
        (["status"], "OUTPUT", ["--json"]),
        (["manifest", "validate"], "MANIFEST", ["--check-files"]),
        (["report"], "OUTPUT", []),
    ],
)
def test_help_names_arguments_and_shows_flags_without_a_value(command, argument, flags):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert usage.split()[-1] == argument and "{" not in usage
    assert "<bool>" not in result.output
    for flag in [*flags, "--help"]:
        line = next(line for line in result.output.splitlines() if flag in line)
        after = line.split(flag, 1)[1]
        assert re.match(r"\s+[A-Z]", after), line  # the description follows: no value to give


def test_flags_take_no_value_and_say_so(tmp_path):
    result = invoke("status", tmp_path, "--json", "true")
    assert result.exit_code == 2 and "unexpected extra argument" in result.output.lower()


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"stylegen {version('stylegen')}"
