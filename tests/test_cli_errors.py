"""User errors reach the CLI by type (pipeline/errors.py, pipeline/cli/errors.py): any UserError subclass, a
renamed or a new one, exits with its class's exit code and one line; anything else keeps its traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from actors.health import CapacityTimeout
from actors.pool import PoolError
from manifests.schema import ManifestError
from pipeline.cli.app import app
from pipeline.cli.errors import exits_on_user_error
from pipeline.dataset.subset import SelectError
from pipeline.errors import OutputError, UserError
from pipeline.models.presets import PresetError
from pipeline.output.run_record import RunRecordError
from pipeline.run.append import AppendRefused
from pipeline.run.resume import RunRefused
from pipeline.run.stop import RunStopped
from pipeline.run_config import ConfigError
from pipeline.storage import ObjectNotFound, StorageError


class BrandNewMistake(UserError):
    """A user error the CLI has never heard of."""

    exit_code = 7


class RenamedStorageError(StorageError):
    pass


def invoke(error: Exception, **options):
    """Run a one-command app whose command raises `error`."""

    @exits_on_user_error(**options)
    def command() -> None:
        raise error

    cli = typer.Typer()
    cli.command()(command)
    cli.command("other")(lambda: None)  # two commands, so `command` is a subcommand as in stylegen
    return CliRunner().invoke(cli, ["command"])


@pytest.mark.parametrize(
    ("error", "code"),
    [(BrandNewMistake("the new mistake, at x"), 7), (RenamedStorageError("the new mistake, at x"), 1)],
)
def test_a_new_or_renamed_user_error_exits_with_its_code_and_one_line(error, code):
    result = invoke(error)
    assert result.exit_code == code and isinstance(result.exception, SystemExit)
    assert result.output == "error: the new mistake, at x\n"


def test_any_other_error_keeps_its_traceback():
    result = invoke(RuntimeError("a bug"))
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1
    assert "error: a bug" not in result.output


def test_a_command_may_give_every_error_its_own_code_and_name_plain_errors_it_treats_alike():
    assert invoke(StorageError("x"), exit_code=2).exit_code == 2
    plain = invoke(ValueError("no stylegen output at x"), exit_code=2, also=(ValueError,))
    assert plain.exit_code == 2 and plain.output == "error: no stylegen output at x\n"
    assert isinstance(invoke(ValueError("a bug"), exit_code=2).exception, ValueError)


def test_markup_in_a_message_is_printed_as_written():
    assert invoke(UserError("[red]s3://b/:x: [/]")).output == "error: [red]s3://b/:x: [/]\n"


def test_the_exit_codes_are_the_readme_contract():
    """README: 1 bad manifest / storage / pool error, 2 bad config, refused run or unreadable output."""
    codes = {
        ManifestError: 1, StorageError: 1, ObjectNotFound: 1, PoolError: 1, CapacityTimeout: 1,
        PresetError: 1, ConfigError: 2, RunRefused: 2, AppendRefused: 2, RunRecordError: 2,
        OutputError: 2, SelectError: 2,
    }  # fmt: skip
    assert {error: error.exit_code for error in codes if issubclass(error, UserError)} == codes


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (CapacityTimeout("no actor was ready for 1800 s"), 1, "error: no actor was ready for 1800 s"),
        (RunStopped("stopped by SIGTERM: 3 of 9 shards committed", 143), 143, "stylegen: stopped by SIGTERM"),
        (RunRefused("the output holds another run"), 2, "error: the output holds another run"),
    ],
)
def test_stylegen_run_maps_errors_by_type(tmp_path, monkeypatch, error, code, line):
    import pipeline.run.job

    def raising(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline.run.job, "run_job", raising)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out")])
    assert result.exit_code == code and isinstance(result.exception, SystemExit)
    assert result.output.startswith(line) and result.output.count("\n") == 1


def test_a_storage_error_of_a_command_reading_an_output_exits_2(tmp_path, monkeypatch):
    import pipeline.dataset.select

    def raising(*args, **kwargs):
        raise StorageError("S3 GetObject failed: AccessDenied")

    monkeypatch.setattr(pipeline.dataset.select, "select_output", raising)
    result = CliRunner().invoke(app, ["select", str(tmp_path), "--by", "clip_t", "--top", "0.5", "-o", "x"])
    assert result.exit_code == 2 and result.output == "error: S3 GetObject failed: AccessDenied\n"
