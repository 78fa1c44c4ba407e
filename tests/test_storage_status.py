"""`stylegen status`: committed / planned shards and sample counts, from markers and run.json or
plan.parquet, for a folder and for s3://."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.status import status
from pipeline.dataset.status import collect_status
from pipeline.shards import ShardRow, write_shard_table, write_tar
from pipeline.storage import LocalStore, S3Store, open_store

pytest_plugins = ["s3_fixtures"]

SUMMARIES = {
    0: {"rows": 10, "kept": 7, "rejected": 2, "failed": 1},
    1: {"rows": 10, "kept": 10, "rejected": 0, "failed": 0},
    4: {"rows": 6, "kept": 0, "rejected": 0, "failed": 6, "shard_failed": True},
}


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "output")
    return request.getfixturevalue("s3_bucket").uri("runs/a")


def commit_shards(store, tmp_path) -> None:
    for shard_id, summary in SUMMARIES.items():
        folder = tmp_path / f"files-{shard_id}"
        write_tar([], folder / "kept.tar")
        write_shard_table([ShardRow(f"{shard_id:08x}", "kept")], folder / "rows.parquet", shard_id)
        store.commit_shard(shard_id, tar=folder / "kept.tar", table=folder / "rows.parquet", summary=summary)


def cli() -> typer.Typer:
    """The status command as `stylegen` mounts it (a group, so `status` is a subcommand)."""
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("status")(status)
    return app


def test_status_counts_from_markers_and_run_json(output, tmp_path):
    store = open_store(output)
    commit_shards(store, tmp_path)
    store.put_bytes("run.json", json.dumps({"plan": {"shards": 5}, "manifest": {"rows": 46}}).encode())
    expected = {
        "output": store.uri,
        "shards_committed": 3,
        "shards_planned": 5,
        "shards_failed": 1,
        "rows_planned": 46,
        "rows_committed": 26,
        "samples": {"kept": 17, "rejected": 2, "failed": 7},
        "complete": False,
    }
    assert collect_status(store) == expected

    result = CliRunner().invoke(cli(), ["status", output, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected
    table = CliRunner().invoke(cli(), ["status", output])
    assert table.exit_code == 0
    assert "3 / 5" in table.output and "26 / 46" in table.output and "17" in table.output


def test_planned_counts_fall_back_to_plan_parquet(output, tmp_path):
    store = open_store(output)
    commit_shards(store, tmp_path)
    plan = pa.table({"uid": [f"{n:08x}" for n in range(7)], "shard_id": [0, 0, 1, 1, 2, 3, 4]})
    pq.write_table(plan, tmp_path / "untagged.parquet")
    store.put_file("plan.parquet", tmp_path / "untagged.parquet")
    status_now = collect_status(store)
    assert (status_now["shards_planned"], status_now["rows_planned"]) == (5, 7)
    assert not status_now["complete"]
    tagged = plan.replace_schema_metadata({b"stylegen.plan": json.dumps({"num_shards": 6}).encode()})
    pq.write_table(tagged, tmp_path / "plan.parquet")
    store.put_file("plan.parquet", tmp_path / "plan.parquet")
    assert collect_status(store)["shards_planned"] == 6  # the plan's own count wins over the column
    store.put_file("plan.parquet", tmp_path / "untagged.parquet")
    for shard_id in (2, 3):
        folder = tmp_path / f"more-{shard_id}"
        write_tar([], folder / "kept.tar")
        write_shard_table([ShardRow(f"{shard_id:08x}", "kept")], folder / "rows.parquet", shard_id)
        store.commit_shard(
            shard_id, tar=folder / "kept.tar", table=folder / "rows.parquet", summary={"kept": 1}
        )
    assert collect_status(store)["complete"]


def test_status_of_something_that_is_not_an_output(tmp_path):
    result = CliRunner().invoke(cli(), ["status", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert f"no stylegen output at {tmp_path / 'nothing'}" in result.output
    result = CliRunner().invoke(cli(), ["status", "gs://bucket/x"])
    assert result.exit_code == 2 and "unsupported output URI scheme 'gs'" in result.output


def test_a_corrupt_run_json_is_named(tmp_path):
    store = LocalStore(tmp_path / "output")
    store.put_bytes("run.json", b'{"plan": {"shards": 3')  # cut short by a crash or a copy
    result = CliRunner().invoke(cli(), ["status", store.uri])
    assert result.exit_code == 2
    assert f"error: {store.url('run.json')} is not valid JSON" in result.output


def test_status_is_registered_on_the_stylegen_cli():
    from pipeline.cli.app import app

    assert any(command.name == "status" and command.callback is status for command in app.registered_commands)


def test_open_store_types(tmp_path, s3_bucket):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(s3_bucket.uri("x")), S3Store)
