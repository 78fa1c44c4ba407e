"""What `stylegen run` refuses before it writes anything or starts Ray: outputs that are not ours, config
mistakes, credentials in config values, operating-system errors of the local store (one line, exit 1).
None of these tests starts Ray: each refusal happens before it."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from run_fixtures import build_manifest, fake_config
from typer.testing import CliRunner

from manifests.schema import ManifestError
from pipeline.output.run_record import RUN_FORMAT
from pipeline.run.job import run_job
from pipeline.run.resume import RunRefused, clear_output
from pipeline.run_config import ConfigError, RunConfig
from pipeline.storage import open_store


def run_cli(*args: str):
    from pipeline.cli.app import app

    return CliRunner().invoke(app, ["run", *args])


def one_line(text: str) -> str:
    return " ".join(text.split())


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def finished_looking_output(folder: Path) -> Path:
    """An output with a genuine run record and some shard files (as a finished run leaves them)."""
    record = {
        "format": RUN_FORMAT,
        "manifest": {"uri": "m.parquet", "fingerprint": "a" * 64, "rows": 4},
        "plan": {"fingerprint": "b" * 64, "shards": 1, "shard_size": 6},
        "config": fake_config().to_dict(),
        "config_fingerprint": fake_config().fingerprint(),
    }
    (folder / "shards").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(record))
    (folder / "shards" / "shard-000000.tar").write_bytes(b"kept samples")
    (folder / "_SUCCESS").mkdir()
    (folder / "_SUCCESS" / "shard-000000.json").write_text("{}")
    return folder


# --- 1. nothing deleted or overwritten that a run record does not prove ours ---------------------------


def test_run_into_a_non_empty_folder_that_is_not_a_stylegen_output_is_refused(tmp_path):
    manifest = build_manifest(tmp_path, rows=4)
    output = tmp_path / "out"
    (output / "shards").mkdir(parents=True)
    (output / "shards" / "shard-000000.tar").write_bytes(b"the user's own tar")
    before = files_of(output)
    with pytest.raises(RunRefused, match=r"is not empty and has no run.json: it is not a stylegen output"):
        run_job(str(manifest), str(output), fake_config(), live=False)
    assert files_of(output) == before  # not even a log was written


@pytest.mark.parametrize(
    "record",
    [
        {"hello": "world"},
        {"format": RUN_FORMAT},  # the right format string but none of a run record's fields
        {"format": RUN_FORMAT, "manifest": "x", "plan": {}, "config": {}, "config_fingerprint": "y"},
        {"format": "stylegen-select/1", "source": {}},
    ],
)
def test_restart_deletes_nothing_unless_run_json_is_a_stylegen_run_record(tmp_path, record):
    manifest = build_manifest(tmp_path, rows=4)
    output = tmp_path / "out"
    output.mkdir()
    (output / "run.json").write_text(json.dumps(record))
    (output / "thesis.tex").write_text("years of work")
    before = files_of(output)
    with pytest.raises(RunRefused, match=r"run.json is not a stylegen run record"):
        run_job(str(manifest), str(output), fake_config(), restart=True, live=False)
    assert files_of(output) == before


def test_a_restart_that_cannot_start_deletes_nothing(tmp_path):
    output = finished_looking_output(tmp_path / "out")
    before = files_of(output)
    with pytest.raises(ManifestError, match="manifest not found"):
        run_job(str(tmp_path / "no-such.parquet"), str(output), fake_config(), restart=True, live=False)
    manifest = build_manifest(tmp_path, rows=4)
    missing_model = RunConfig(preset="stable-cascade", model_paths={"prior": str(tmp_path / "no-prior")})
    with pytest.raises(ConfigError, match="model_paths.prior: local folder .* does not exist"):
        run_job(str(manifest), str(output), missing_model, restart=True, live=False)
    assert files_of(output) == before


def test_clear_output_deletes_only_what_the_run_wrote(tmp_path):
    output = finished_looking_output(tmp_path / "out")
    (output / "notes.txt").write_text("mine")
    (output / "logs").mkdir()
    (output / "logs" / "run-20260101T000000000000Z.log").write_text("old log")
    clear_output(open_store(output))
    assert files_of(output) == {"notes.txt": b"mine"}


# --- 4. reserved columns --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uid", "row", "shard_id"])
def test_every_reserved_column_is_refused_with_the_same_message(tmp_path, name):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from manifests.validate import validate_manifest

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "style": ["a.png"], name: [1]}), path)
    message = f"{path}: column {name!r} is reserved by stylegen; rename it"
    with pytest.raises(ManifestError) as raised:
        run_job(str(path), str(tmp_path / "out"), fake_config(), live=False)
    assert str(raised.value) == message
    report = validate_manifest(str(path))
    assert [p.reason for p in report.errors] == [message]
    assert not (tmp_path / "out").exists()


# --- 6. credentials in config values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"storage": {"endpoint_url": "http://AKIAKEY:SuperSecret@127.0.0.1:9000"}}, "storage.endpoint_url"),
        ({"model_paths": {"prior": "https://someone:SuperSecret@example.org/prior"}}, "model_paths.prior"),
        ({"model_paths": {"hf_token": "SuperSecret"}}, "model_paths.hf_token"),
        ({"scoring": {"options": {"api_password": "SuperSecret"}}}, "scoring.options.api_password"),
        ({"rbmod": {"session_key": "SuperSecret"}}, "rbmod.session_key"),
        ({"model_cache_dir": "s3://AKIAKEY:SuperSecret@bucket/models"}, "model_cache_dir"),
    ],
)
def test_credentials_anywhere_in_the_config_are_refused_and_never_echoed(tmp_path, data, key):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as raised:
        RunConfig.load(path)
    assert key in str(raised.value) and "SuperSecret" not in str(raised.value)

    manifest = build_manifest(tmp_path, rows=4)
    result = run_cli(str(manifest), "--output", str(tmp_path / "out"), "--config", str(path))
    assert result.exit_code == 2 and key in one_line(result.output)
    assert "SuperSecret" not in result.output
    assert not (tmp_path / "out").exists()


# --- 8. config mistakes: found before anything is written or Ray starts, exit 2 ---------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "stable-cascad"], "preset: unknown preset 'stable-cascad'"),
        (["--config", "{paths}"], "model_paths.prior: local folder"),
        (["--config", "{keys}"], "model_paths: unknown key(s) ['priorr']"),
        (["--config", "{scoring}"], "scoring.preset: unknown scoring preset 'rea'"),
        (["--config", "{options}"], "scoring.options: unknown option(s) ['batchsize']"),
    ],
)
def test_config_mistakes_exit_2_before_anything_is_written(tmp_path, args, message):
    configs = {
        "{paths}": "preset: stable-cascade\nmodel_paths:\n  prior: ./no/such/folder\n",
        "{keys}": "model_paths:\n  priorr: x/y\n",
        "{scoring}": "scoring:\n  preset: rea\n",
        "{options}": "scoring:\n  options:\n    batchsize: 4\n",
    }
    manifest = build_manifest(tmp_path, rows=4)
    if args[0] == "--config":
        (tmp_path / "run.yaml").write_text(configs[args[1]])
        args = ["--config", str(tmp_path / "run.yaml")]
    output = finished_looking_output(tmp_path / "out")
    before = files_of(output)
    result = run_cli(str(manifest), "--output", str(output), *args)
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output)
    assert files_of(output) == before
    result = run_cli(str(manifest), "--output", str(tmp_path / "new"), *args)
    assert result.exit_code == 2 and not (tmp_path / "new").exists()


# --- 7. operating-system errors of the local store: one line, exit 1 --------------------------------------


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.ENOSPC, "free some space"),
        (errno.EROFS, "read-only"),
        (errno.EXDEV, "one filesystem"),
        (errno.EACCES, "permission"),
    ],
)
def test_os_errors_of_the_local_store_are_one_line_exit_1(tmp_path, monkeypatch, code, hint):
    import os

    import pipeline.storage.local as local

    real_replace = os.replace

    def failing_replace(source, destination):
        if str(destination).endswith("run.json"):
            raise OSError(code, os.strerror(code))
        return real_replace(source, destination)

    monkeypatch.setattr(local.os, "replace", failing_replace)
    manifest = build_manifest(tmp_path, rows=4)
    output = tmp_path / "out"
    result = run_cli(str(manifest), "--output", str(output), "--preset", "tiny")
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert text.startswith("error: cannot write ") and text.count("error:") == 1  # one message (wrapped)
    assert str(output / "run.json") in text and os.strerror(code) in text and hint in text
