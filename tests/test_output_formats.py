"""Outputs of format 1 (shard parquets next to the tars, under shards/) still read and resume: status,
select, report and a resumed run see the same dataset, and the resumed shards keep that layout."""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
from run_fixtures import fake_config

from pipeline.dataset.select import Selection, select_output
from pipeline.dataset.status import collect_status
from pipeline.models.fake_generator import FakeGenerator
from pipeline.report.data import gather
from pipeline.run.plan import plan_run
from pipeline.run.resume import ensure_same_run
from pipeline.scoring.rules import FilterRules
from pipeline.storage.layout import marker_key
from pipeline.worker.shard_worker import ShardWorker
from tests.output_fixtures import FILTERS, KnownScorer, build_output


def to_format_1(output) -> dict:
    """Rewrite a finished output the way format 1 laid it out; returns its run.json."""
    root = output.store.root
    for parquet in sorted((root / "metadata").glob("*.parquet")):
        parquet.rename(root / "shards" / parquet.name)
    (root / "metadata").rmdir()
    for marker in sorted((root / "_SUCCESS").glob("*.json")):
        data = json.loads(marker.read_text())
        data["files"] = {key.replace("metadata/", "shards/"): entry for key, entry in data["files"].items()}
        marker.write_text(json.dumps(data))
    run = json.loads((root / "run.json").read_text())
    run["format"] = "stylegen-run/1"
    del run["config"]["caption"]  # format 1 had no captions
    (root / "run.json").write_text(json.dumps(run))
    return run


def test_status_report_and_select_read_a_format_1_output(tmp_path):
    built = build_output(tmp_path / "a")
    before = collect_status(built.store)
    rows_before = gather(built.store).rows.num_rows
    to_format_1(built)
    assert not (built.store.root / "metadata").exists()
    assert collect_status(built.store) == before
    report = gather(built.store)
    assert report.rows.num_rows == rows_before == before["rows_committed"]
    summary = select_output(built.uri, str(tmp_path / "top"), Selection("clip_t", top=0.5))
    assert (
        summary.selected > 0
        and len(list((tmp_path / "top" / "metadata").glob("*.parquet"))) == summary.shards
    )


def test_a_format_1_output_resumes_in_its_own_layout(tmp_path):
    built = build_output(tmp_path / "a")
    run = to_format_1(built)
    root = built.store.root
    last = built.planned_shards - 1
    expected = pq.read_table(root / "shards" / f"shard-{last:06d}.parquet").column("uid").to_pylist()
    for path in (root / marker_key(last), root / "shards" / f"shard-{last:06d}.tar"):
        path.unlink()
    (root / "shards" / f"shard-{last:06d}.parquet").unlink()
    shutil.rmtree(root / "rejected")  # not needed here

    config = fake_config(
        shard_size=5,
        keep_rejected=True,
        **{
            "generator.fake.size": 32,
            "generator.fake.fail_prompts": ["#7"],
            "scoring.enabled": True,
            "scoring.filters": list(FILTERS),
        },
    )
    _, record = plan_run(str(built.manifest), config)
    ensure_same_run(run, record, built.uri)  # a config key added since format 1, at its default, is no change
    scorer = KnownScorer()
    rules = FilterRules.parse(list(FILTERS), set(scorer.names))
    worker = ShardWorker(FakeGenerator(config.generator.fake), scorer, rules, built.store, config)
    try:
        result = worker.run_shard(last, "resumed")
    finally:
        worker.close()
    assert result.committed
    table = pq.read_table(root / "shards" / f"shard-{last:06d}.parquet")
    assert sorted(table.column("uid").to_pylist()) == sorted(expected)
    assert not (root / "metadata").exists()
    assert collect_status(built.store)["shards_committed"] == built.planned_shards
    kept = gather(built.store).rows
    assert pc.sum(pc.equal(kept.column("shard_id"), last)).as_py() == len(expected)


def test_stylegen_card_writes_the_card_of_a_format_1_output(tmp_path):
    import datasets
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    built = build_output(tmp_path / "a", rows=12)
    (built.store.root / "README.md").unlink(missing_ok=True)
    to_format_1(built)
    result = CliRunner().invoke(app, ["card", built.uri])
    assert result.exit_code == 0, result.output
    assert (built.store.root / "README.md").exists()
    ds = datasets.load_dataset(built.uri, split="train", cache_dir=str(tmp_path / "hf"))
    kept = gather(built.store).rows
    kept = kept.filter(pc.equal(kept.column("status"), "kept")).column("uid").to_pylist()
    assert sorted(ds["__key__"]) == sorted(kept)

    missing = CliRunner().invoke(app, ["card", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no stylegen output" in missing.output
