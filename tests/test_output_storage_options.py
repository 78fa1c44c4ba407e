"""Every command that reads an output reaches the storage its run used: `--endpoint-url`, or the run
config's `storage` section (`--config`), for status, report, select and card; an endpoint that cannot be
reached is one line naming it; `status --rebuild-ledger` rewrites the ledger, only in a stylegen output."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.storage.layout import LEDGER_PREFIX
from tests.output_fixtures import build_output

pytest_plugins = ["s3_fixtures"]

CLOSED = "http://127.0.0.1:1"  # nothing listens there: a connection is refused at once


@pytest.fixture(scope="module")
def local_output(tmp_path_factory):
    return build_output(tmp_path_factory.mktemp("local"))


@pytest.fixture
def s3_output(tmp_path, s3_bucket, monkeypatch):
    """A finished output on S3 that only the moto endpoint reaches; the environment no longer names it."""
    built = build_output(tmp_path, s3_bucket.uri("runs/r1"))
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("STYLEGEN_S3_MAX_ATTEMPTS", "1")
    return built, s3_bucket.endpoint_url


def stylegen(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def status_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_status_report_select_and_card_reach_the_endpoint_given(s3_output, tmp_path):
    built, endpoint = s3_output
    expected = status_of(stylegen("status", built.uri, "--json", "--endpoint-url", endpoint))
    assert expected["output"] == built.uri and expected["shards_committed"] == built.planned_shards
    config = tmp_path / "run.yaml"
    config.write_text(f"storage:\n  endpoint_url: {endpoint}\n")
    assert status_of(stylegen("status", built.uri, "--json", "--config", config)) == expected
    # --endpoint-url wins over the config's
    config.write_text(f"storage:\n  endpoint_url: {CLOSED}\n")
    assert status_of(
        stylegen("status", built.uri, "--json", "--config", config, "--endpoint-url", endpoint)
    ) == (expected)
    report = stylegen("report", built.uri, "-o", tmp_path / "report.html", "--endpoint-url", endpoint)
    assert report.exit_code == 0 and (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    card = stylegen("card", built.uri, "--endpoint-url", endpoint)
    assert card.exit_code == 0 and card.output.strip() == f"{built.uri}/README.md"
    new = built.uri.replace("runs/r1", "runs/top")
    selected = stylegen(
        "select", built.uri, "--by", "clip_t", "--top", "0.5", "-o", new, "--endpoint-url", endpoint
    )
    assert selected.exit_code == 0, selected.output
    assert status_of(stylegen("status", new, "--json", "--endpoint-url", endpoint))["complete"] is True


def test_an_endpoint_that_cannot_be_reached_is_one_line_naming_it(s3_output, tmp_path):
    built, _ = s3_output
    for command in (
        ["status", built.uri],
        ["report", built.uri, "-o", tmp_path / "r.html"],
        ["card", built.uri],
    ):
        result = stylegen(*command, "--endpoint-url", CLOSED)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert f"cannot reach the endpoint {CLOSED}" in result.output
        assert "--endpoint-url" in result.output and "storage.endpoint_url" in result.output


def test_an_endpoint_for_a_local_output_is_refused(local_output):
    result = stylegen("status", local_output.uri, "--endpoint-url", CLOSED)
    assert result.exit_code == 2
    assert (
        result.output == f"error: --endpoint-url {CLOSED}: applies to s3:// outputs, not {local_output.uri}\n"
    )


def test_rebuild_ledger_rewrites_it_in_a_stylegen_output_only(local_output, tmp_path):
    before = status_of(stylegen("status", local_output.uri, "--json"))
    for info in local_output.store.list(LEDGER_PREFIX):
        local_output.store.delete([info.key])
    result = stylegen("status", local_output.uri, "--json", "--rebuild-ledger")
    assert result.exit_code == 0
    assert result.stderr == f"ledger rebuilt from {before['shards_committed']} commit markers\n"
    assert json.loads(result.stdout) == before
    assert len(local_output.store.list(LEDGER_PREFIX)) == 1
    foreign = tmp_path / "not-ours"
    foreign.mkdir()
    (foreign / "run.json").write_text("{}")
    refused = stylegen("status", foreign, "--rebuild-ledger")
    assert refused.exit_code == 2 and "not a stylegen output, and nothing was written" in refused.output
    assert sorted(path.name for path in foreign.iterdir()) == ["run.json"]
