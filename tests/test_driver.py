"""The driver end to end on local Ray with the FakeGenerator: run, resume, refuse changes, restart."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from run_fixtures import build_manifest, fake_config, shard_rows

from manifests.read import read_manifest
from pipeline.run.job import run_job
from pipeline.run.resume import RunRefused
from pipeline.run_config import RunConfig


def markers(output) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted((output / "_SUCCESS").glob("*.json"))}


@pytest.mark.slow
def test_run_then_resume_then_refuse_changes_then_restart(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-written-anywhere-123")
    manifest = build_manifest(tmp_path, rows=20)
    output = tmp_path / "out"
    config = fake_config(**{"generator.fake.latency_s": 0.01})

    # 1. a full run
    summary = run_job(str(manifest), str(output), config, actors=2, live=False)
    uids = sorted(read_manifest(str(manifest)).column("uid").to_pylist())
    assert (summary.shards_planned, summary.shards_committed, summary.shards_resumed) == (4, 4, 0)
    assert (summary.rows, summary.kept, summary.rejected, summary.failed) == (20, 20, 0, 0)
    assert summary.images_this_run == 20 and summary.actors == 2
    rows = shard_rows(output)
    assert sorted(row["uid"] for row in rows) == uids  # every planned row exactly once
    tars = sorted(str(p) for p in (output / "shards").glob("shard-*.tar"))
    read_back = [sample["__key__"] for sample in wds.WebDataset(tars, shardshuffle=False)]
    assert sorted(read_back) == uids
    record = json.loads((output / "run.json").read_text())
    assert record["config"] == config.to_dict() and record["config_fingerprint"] == config.fingerprint()
    assert record["plan"]["shards"] == 4 and len(record["manifest"]["fingerprint"]) == 64
    assert {"torch", "ray", "pyarrow", "stylegen"} <= set(record["versions"])
    for path in output.rglob("*"):
        if path.is_file():
            assert b"never-written-anywhere-123" not in path.read_bytes(), path
    log = (output / "logs").glob("run-*.log")
    log_text = next(log).read_text()
    assert log_text.count("committed (attempt") == 4
    before = markers(output)
    tar_bytes = {p.name: p.read_bytes() for p in (output / "shards").glob("*.tar")}

    # 2. the same command again: nothing is redone (an operational key may change)
    again = fake_config(**{"generator.fake.latency_s": 0.01, "execution.batch_size": 5})
    summary = run_job(str(manifest), str(output), again, actors=2, live=False)
    assert (summary.shards_resumed, summary.shards_committed, summary.images_this_run) == (4, 0, 0)
    assert summary.actors == 0 and markers(output) == before

    # 3. a shard lost before its commit (marker and files gone) is the only one rerun
    for key in ("_SUCCESS/shard-000002.json", "shards/shard-000002.tar", "metadata/shard-000002.parquet"):
        (output / key).unlink()
    summary = run_job(str(manifest), str(output), config, actors=2, live=False)
    assert (summary.shards_resumed, summary.shards_committed, summary.images_this_run) == (3, 1, 6)
    after = markers(output)
    assert {k: v for k, v in after.items() if k != "shard-000002.json"} == {
        k: v for k, v in before.items() if k != "shard-000002.json"
    }
    assert after["shard-000002.json"]["attempt_id"] != before["shard-000002.json"]["attempt_id"]
    assert {p.name: p.read_bytes() for p in (output / "shards").glob("*.tar")} == tar_bytes

    # 4. a changed config is refused, naming the key
    changed = fake_config(
        **{"generator.fake.latency_s": 0.01, "image.quality": 80, "generator.fake.size": 24}
    )
    with pytest.raises(RunRefused) as refused:
        run_job(str(manifest), str(output), changed, actors=2, live=False)
    assert "the config changed: generator.fake.size: 16 -> 24; image.quality: 95 -> 80" in str(refused.value)
    assert "--restart" in str(refused.value)

    # 5. a changed manifest (one more row) is refused, naming the manifest fingerprint and row counts
    table = pq.read_table(manifest)
    new_row = {name: [table.column(name)[0].as_py()] for name in table.column_names}
    new_row["prompt"] = ["one more prompt"]
    bigger = tmp_path / "bigger.parquet"
    pq.write_table(pa.concat_tables([table, pa.table(new_row).cast(table.schema)]), bigger)
    with pytest.raises(
        RunRefused, match=r"the manifest changed: fingerprint \w{16} -> \w{16} \(rows 20 -> 21"
    ):
        run_job(str(bigger), str(output), config, actors=2, live=False)

    # 6. --restart deletes the old run and starts over with the new config
    summary = run_job(str(manifest), str(output), changed, actors=2, live=False, restart=True)
    assert (summary.shards_resumed, summary.shards_committed, summary.kept) == (0, 4, 20)
    assert json.loads((output / "run.json").read_text())["config"]["image"]["quality"] == 80
    assert all(m["attempt_id"] != before[name]["attempt_id"] for name, m in markers(output).items())
    assert len(list((output / "logs").glob("run-*.log"))) == 1  # the old logs went with the old run


def test_each_run_that_runs_a_pool_records_its_log_and_pool_in_run_json(ray_cluster, tmp_path):
    from pathlib import Path

    manifest = build_manifest(tmp_path, rows=10)  # 2 shards
    output = tmp_path / "out"
    config = fake_config(**{"generator.fake.latency_s": 0.01})
    first = run_job(str(manifest), str(output), config, actors=2, gpus_per_actor=0.5, live=False)
    for key in ("_SUCCESS/shard-000001.json", "shards/shard-000001.tar", "metadata/shard-000001.parquet"):
        (output / key).unlink()  # lost before its commit: the rerun redoes it
    second = run_job(str(manifest), str(output), config, actors=1, live=False)
    idle = run_job(str(manifest), str(output), config, actors=1, live=False)  # nothing to do: no pool
    assert (first.shards_committed, second.shards_committed, idle.shards_committed) == (2, 1, 0)

    def log_key(summary) -> str:
        return Path(summary.log_uri).relative_to(output).as_posix()

    assert json.loads((output / "run.json").read_text())["runs"] == [
        {"log": log_key(first), "actors": 2, "gpus_per_actor": 0.5},
        {"log": log_key(second), "actors": 1, "gpus_per_actor": 1.0},
    ]


def test_restart_refuses_to_delete_a_folder_that_is_not_a_stylegen_output(tmp_path):
    manifest = build_manifest(tmp_path, rows=4)
    precious = tmp_path / "out" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    with pytest.raises(RunRefused, match=r"run.json is not a stylegen run record \(or is missing\)"):
        run_job(str(manifest), str(tmp_path / "out"), fake_config(), restart=True, live=False)
    assert precious.read_text() == "years of work"


def test_cli_reports_config_errors_with_the_file_and_key(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    manifest = build_manifest(tmp_path, rows=4)
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\nexecution:\n  batch_sise: 4\n")
    result = CliRunner().invoke(
        app, ["run", str(manifest), "--output", str(tmp_path / "out"), "--config", str(config)]
    )
    assert result.exit_code == 2
    expected = f"config file {config}: execution.batch_sise: unknown key (did you mean 'batch_size'?)"
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_config_yaml_plus_flags_and_the_fingerprint(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("shard_size: 32\nrbmod:\n  steps: 12\nexecution:\n  batch_size: 2\n")
    config = RunConfig.load(path, {"shard_size": 8, "keep_rejected": True})
    assert (config.shard_size, config.keep_rejected, config.rbmod, config.execution.batch_size) == (
        8,
        True,
        {"steps": 12},
        2,
    )
    same_output = RunConfig.load(path, {"shard_size": 8, "keep_rejected": True, "execution.batch_size": 9})
    assert same_output.fingerprint() == config.fingerprint()  # execution keys do not change the output
    other = RunConfig.load(path, {"shard_size": 8, "keep_rejected": True, "rbmod.steps": 13})
    assert other.fingerprint() != config.fingerprint()
    assert json.loads(config.canonical_json()) == config.to_dict()
    assert config.canonical_json() == RunConfig.model_validate_json(config.canonical_json()).canonical_json()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("storage:\n  aws_secret_access_key: x\n", "storage.aws_secret_access_key looks like a credential"),
        ("image:\n  format: gif\n", "image.format: expected one of 'png', 'jpg' or 'webp', got 'gif'"),
        ("scoring:\n  enabled: false\n  filters: ['clip_t >= 0.2']\n", "filters need scores"),
        ("- a list\n", "the top level must be a mapping"),
        ("shard_size: [\n", "is not valid YAML"),
    ],
)
def test_bad_configs_are_refused_with_the_key(tmp_path, yaml_text, message):
    from pipeline.run_config import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as raised:
        RunConfig.load(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_bad_filter_rules_are_refused_before_any_actor_starts(tmp_path):
    from pipeline.run_config import ConfigError

    manifest = build_manifest(tmp_path, rows=4)
    config = fake_config(**{"scoring.enabled": True, "scoring.filters": ["clip_t >= 0.2 or 1"]})
    with pytest.raises(ConfigError, match=r"scoring.filters: .*clip_t >= 0.2 or 1"):
        run_job(str(manifest), str(tmp_path / "out"), config, live=False)
    assert not (tmp_path / "out").exists()


def test_finalize_removes_unfinished_attempts_and_old_orphans_but_not_a_live_writer(tmp_path):
    import os
    import time

    from pipeline.run.finalize import finalize
    from pipeline.storage import open_store

    store = open_store(tmp_path / "out")
    tar, table = tmp_path / "a.tar", tmp_path / "a.parquet"
    tar.write_bytes(b"tar bytes")
    table.write_bytes(b"parquet bytes")
    store.commit_shard(0, tar=tar, table=table, summary={"kept": 1}, attempt_id="winner")
    ours = "_attempts/shard-000000/ours-killed/shards/shard-000000.tar"  # this run's attempt, killed
    stale = "_attempts/shard-000001/crashed-run/shards/shard-000001.tar"  # a crashed earlier run's
    live = "_attempts/shard-000001/someone-else/shards/shard-000001.tar"  # not ours, written just now
    for key in (ours, stale, live):
        store.put_bytes(key, b"partial")
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "out" / stale, (an_hour_ago, an_hour_ago))

    finalize(store, store.committed_shards(), [(0, "ours-killed"), (0, "winner")], since_s=60)

    left = {info.key for info in store.list("")}
    assert live in left and ours not in left and stale not in left
    assert {"shards/shard-000000.tar", "metadata/shard-000000.parquet", "_SUCCESS/shard-000000.json"} <= left
    assert store.get_bytes("shards/shard-000000.tar") == b"tar bytes"


def test_an_output_holding_another_kind_of_run_is_refused(tmp_path):
    manifest = build_manifest(tmp_path, rows=4)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text(json.dumps({"format": "stylegen-select/1"}))
    with pytest.raises(RunRefused, match=r"holds a run.json of another kind \(format 'stylegen-select/1'"):
        run_job(str(manifest), str(tmp_path / "out"), fake_config(), live=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "stylegen-run/1", "manif', r"run.json is not valid JSON \(Unterminated string"),
        (b"{\x80 not text}", r"run.json is not valid JSON \('utf-8' codec can't decode"),
        (b"[1, 2]", r"run.json holds a JSON list, not a run record"),
    ],
)
def test_a_damaged_run_json_is_refused_naming_the_file(tmp_path, content, message):
    manifest = build_manifest(tmp_path, rows=4)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_bytes(content)
    with pytest.raises(RunRefused, match=message) as refused:
        run_job(str(manifest), str(tmp_path / "out"), fake_config(), live=False)
    assert str(tmp_path / "out" / "run.json") in str(refused.value)
    assert "can be neither resumed nor deleted by --restart" in str(refused.value)


@pytest.mark.slow
def test_a_report_that_cannot_be_built_does_not_fail_a_finished_run(ray_cluster, tmp_path, monkeypatch):
    import pipeline.report.build

    def broken(store, **options):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(pipeline.report.build, "build_report", broken)
    manifest = build_manifest(tmp_path, rows=6)
    output = tmp_path / "out"
    summary = run_job(str(manifest), str(output), fake_config(), actors=1, live=False)
    assert (summary.shards_committed, summary.kept, summary.report_uri) == (summary.shards_planned, 6, None)
    assert not (output / "report.html").exists()
    assert json.loads((output / "summary.json").read_text())["kept"] == 6
    log_text = next((output / "logs").glob("run-*.log")).read_text()
    assert "report.html not written (RuntimeError: no fonts today)" in log_text
