"""Flags that cannot go together, or values no run can use, are refused before anything is read for
writing, deleted or recorded (issue "Nothing lost, nothing overwritten, round two")."""

from __future__ import annotations

import itertools

import pytest
import yaml
from run_fixtures import build_manifest
from typer.testing import CliRunner

from actors.metrics import tag_value
from pipeline.cli.app import app
from pipeline.run_config import ConfigError, RunConfig
from tests.output_fixtures import build_output


def snapshot(folder):
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return build_output(tmp_path_factory.mktemp("run"))


@pytest.mark.parametrize(
    "flags", list(itertools.combinations(["--restart", "--append", "--retry-failed"], 2))
)
def test_flags_that_cannot_go_together_change_nothing(finished, flags, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RunConfig.model_validate(finished.run_record["config"]).to_dict()))
    before = snapshot(finished.store.root)
    result = CliRunner().invoke(
        app, ["run", str(finished.manifest), "--output", finished.uri, "--config", str(config), *flags]
    )
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {flags[0]} and {flags[1]} cannot be used together")
    assert result.output.count("\n") == 1
    assert snapshot(finished.store.root) == before


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_non_finite_number_is_refused_when_the_config_loads(value, tmp_path):
    with pytest.raises(ConfigError, match=r"execution.progress_interval_s"):
        RunConfig.load(None, {"execution.progress_interval_s": float(value)})
    manifest = build_manifest(tmp_path, rows=2)
    result = CliRunner().invoke(
        app, ["run", str(manifest), "--output", str(tmp_path / "out"), f"--progress-interval={value}"]
    )
    assert result.exit_code == 2  # inf and nan: the config's check; -inf: the flag's lower bound
    assert "progress_interval_s" in result.output or "--progress-interval" in result.output
    assert not (tmp_path / "out").exists()


def test_metric_tags_are_printable_ascii_and_name_the_output_once_decoded():
    from urllib.parse import unquote

    path = "/data/ünïcødé 出力/out"
    assert tag_value(path).isascii() and tag_value(path).isprintable() and unquote(tag_value(path)) == path
    assert tag_value("s3://bucket/runs/r1") == "s3://bucket/runs/r1"


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("s3:/bkt/x", "names no bucket"),
        ("s3://", "names no bucket"),
        ("s3:///x", "names no bucket"),
        ("gs://bkt/x", "unsupported output URI scheme 'gs'"),
    ],
)
def test_an_output_uri_that_cannot_work_is_one_line_before_anything_is_written(output, why, tmp_path):
    manifest = build_manifest(tmp_path, rows=2)
    result = CliRunner().invoke(app, ["run", str(manifest), "--output", output])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: ") and why in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["contents", "manifest.parquet", "styles"]


def test_storage_options_for_a_local_output_are_one_line(tmp_path):
    manifest = build_manifest(tmp_path, rows=2)
    config = tmp_path / "run.yaml"
    config.write_text("storage:\n  endpoint_url: http://127.0.0.1:9\n")
    result = CliRunner().invoke(
        app, ["run", str(manifest), "--output", str(tmp_path / "out"), "--config", str(config)]
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "only apply to s3:// outputs" in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_select_min_must_be_a_finite_number(finished, value, tmp_path):
    result = CliRunner().invoke(
        app, ["select", finished.uri, "--by", "clip_t", "--min", value, "-o", str(tmp_path / "sel")]
    )
    assert result.exit_code == 2 and f"--min must be a finite number, got {float(value)}" in result.output
    assert not (tmp_path / "sel").exists()


@pytest.mark.parametrize("command", [["card"], ["report"], ["status", "--rebuild-ledger"]])
def test_commands_that_write_into_an_output_refuse_one_that_is_not_ours(command, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "run.json").write_text('{"name": "my own project"}')
    (foreign / "README.md").write_text("my readme")
    result = CliRunner().invoke(app, [command[0], str(foreign), *command[1:]])
    assert (
        result.exit_code == 2 and "is not a stylegen output, and nothing was written into it" in result.output
    )
    assert sorted(path.name for path in foreign.iterdir()) == ["README.md", "run.json"]
    assert (foreign / "README.md").read_text() == "my readme"


def test_a_link_to_the_source_is_the_source(finished, tmp_path):
    link = tmp_path / "link-to-run"
    link.symlink_to(finished.store.root, target_is_directory=True)
    inside = link / "sel"
    result = CliRunner().invoke(
        app, ["select", str(link), "--by", "clip_t", "--top", "0.5", "-o", str(inside)]
    )
    assert result.exit_code == 2 and "must not contain one another" in result.output
    assert not (finished.store.root / "sel").exists()


def test_models_stage_refuses_a_local_target_before_building_anything(tmp_path, monkeypatch):
    import pipeline.models.tiny

    monkeypatch.setattr(pipeline.models.tiny, "ensure_tiny_cache", lambda *a: pytest.fail("built models"))
    result = CliRunner().invoke(
        app, ["models", "stage", "--to", str(tmp_path / "models"), "--preset", "tiny"]
    )
    assert result.exit_code == 1 and "expected an s3://bucket/prefix/ URI" in result.output
    assert not (tmp_path / "models").exists()
