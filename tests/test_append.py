"""`stylegen run BIGGER --output EXISTING --append`: the new rows go into new shards after the run's, the
committed shards stay byte-identical, status/select/report see one dataset, a plain rerun of the bigger
manifest resumes, and a manifest that drops or changes rows of the run is refused naming them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import build_manifest, fake_config

from manifests.read import read_manifest
from pipeline.dataset.select import Selection, select_output
from pipeline.dataset.status import collect_status
from pipeline.output.run_record import shard_sizes
from pipeline.report.data import gather
from pipeline.run.job import run_job
from pipeline.run.plan import plan_run
from pipeline.run.resume import RunRefused, prepare_output
from pipeline.worker.shard_files import read_plan_shard
from tests.output_fixtures import KnownScorer, build_output


def bigger_manifest(built, folder, extra_rows: int):
    """The run's manifest with `extra_rows` new rows at the end (other prompts, same styles)."""
    table = pq.read_table(built.manifest)
    more = table.slice(0, extra_rows).to_pydict()
    more["prompt"] = [f"a new prompt #{1000 + i}" for i in range(extra_rows)]
    more["id"] = [f"new-{i}" for i in range(extra_rows)]
    path = folder / "bigger.parquet"
    pq.write_table(pa.concat_tables([table, pa.table(more, schema=table.schema)]), path)
    return path


def shard_files(root) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in ("shards", "metadata", "_SUCCESS")
        for path in sorted((root / folder).glob("*"))
    }


def run_new_shards(built, config, record) -> None:
    """What the driver's pool does for the shards not yet committed (the real ShardWorker, no Ray)."""
    from pipeline.models.fake_generator import FakeGenerator
    from pipeline.scoring.rules import FilterRules
    from pipeline.worker.shard_worker import ShardWorker

    scorer = KnownScorer()
    rules = FilterRules.parse(list(config.scoring.filters), set(scorer.names))
    worker = ShardWorker(FakeGenerator(config.generator.fake), scorer, rules, built.store, config)
    done = built.store.committed_shards()
    try:
        for shard_id in sorted(set(shard_sizes(record)) - set(done)):
            worker.run_shard(shard_id, f"append-{shard_id}")
    finally:
        worker.close()


def test_append_plans_new_rows_after_the_run_and_everything_sees_one_dataset(tmp_path):
    built = build_output(tmp_path / "a", rows=24, shard_size=5)  # shards of 5,5,5,5,4
    root = built.store.root
    before = shard_files(root)
    bigger = bigger_manifest(built, tmp_path, 7)
    config = fake_config(**_fixture_config(built))
    plan, record = plan_run(str(bigger), config)

    with pytest.raises(RunRefused, match="rerun with --append"):
        prepare_output(built.store, record, False)  # without --append: a different run
    appended = prepare_output(built.store, record, False, append=True, plan=plan)

    # The new rows are planned into shards 5 and 6, after the run's; the old plan rows are untouched.
    assert shard_sizes(appended) == {0: 5, 1: 5, 2: 5, 3: 5, 4: 4, 5: 5, 6: 2}
    assert [g["first_shard"] for g in appended["generations"]] == [0, 5]
    new_uids = set(read_manifest(str(bigger)).column("uid").to_pylist()) - set(
        read_manifest(str(built.manifest)).column("uid").to_pylist()
    )
    assert (
        set(read_plan_shard(built.store, 5).column("uid").to_pylist())
        | set(read_plan_shard(built.store, 6).column("uid").to_pylist())
        == new_uids
    )
    for shard_id in range(5):
        old = read_plan_shard(built.store, shard_id)
        assert old.column("uid").to_pylist() == [row["uid"] for row in built_plan_rows(built)[shard_id]]
    assert json.loads((root / "run.json").read_text()) == appended

    run_new_shards(built, config, appended)
    assert {k: v for k, v in shard_files(root).items() if k in before} == before  # committed: untouched
    status = collect_status(built.store)
    assert (status["shards_planned"], status["shards_committed"], status["complete"]) == (7, 7, True)
    assert status["rows_planned"] == status["rows_committed"] == 31
    assert gather(built.store).rows.num_rows == 31
    summary = select_output(built.uri, str(tmp_path / "sel"), Selection("clip_t", minimum=0.0))
    assert summary.source_kept == status["samples"]["kept"]

    # A plain rerun of the bigger manifest resumes the appended run (nothing to plan, nothing refused).
    _, again = plan_run(str(bigger), config)
    assert prepare_output(built.store, again, False) == appended
    # Appending the same manifest again adds nothing.
    assert prepare_output(built.store, again, False, append=True, plan=plan) == appended


def built_plan_rows(built) -> dict[int, list[dict]]:
    """The original plan of the fixture's manifest, by shard (an independent replanning)."""
    from manifests.plan import make_plan

    plan = make_plan(read_manifest(str(built.manifest)), 5)
    return {shard_id: plan.shard(shard_id).to_pylist() for shard_id in range(plan.num_shards)}


def _fixture_config(built) -> dict:
    config = built.run_record["config"]
    return {
        "shard_size": config["shard_size"],
        "keep_rejected": config["keep_rejected"],
        "generator.fake.size": config["generator"]["fake"]["size"],
        "generator.fake.fail_prompts": config["generator"]["fake"]["fail_prompts"],
        "scoring.enabled": True,
        "scoring.filters": config["scoring"]["filters"],
    }


@pytest.mark.parametrize("change", ["drop", "id", "extra", "column"])
def test_a_manifest_that_drops_or_changes_rows_is_refused_naming_them(tmp_path, change):
    built = build_output(tmp_path / "a", rows=12, shard_size=5, commit_shards=[0])
    table = pq.read_table(bigger_manifest(built, tmp_path, 3))
    victim = read_manifest(str(built.manifest)).to_pylist()[4]
    position = table.column("prompt").to_pylist().index(victim["prompt"])
    if change == "drop":
        table = pa.concat_tables([table.slice(0, position), table.slice(position + 1)])
        expected = (
            rf"1 row\(s\) of the run are missing: uid {victim['uid']} \(row 4, prompt '{victim['prompt']}'\)"
        )
    elif change == "column":
        table = table.drop_columns(["batch_tag"])
        expected = r"other columns than the run's manifest .*: batch_tag \(string -> absent\)"
    else:
        column = "id" if change == "id" else "batch_tag"
        values = table.column(column).to_pylist()
        values[position] = "edited"
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
        expected = rf"1 row\(s\) of the run changed: uid {victim['uid']} \(row 4: {column}\)"
    changed = tmp_path / "changed.parquet"
    pq.write_table(table, changed)
    plan, record = plan_run(str(changed), fake_config(**_fixture_config(built)))
    run_json = (built.store.root / "run.json").read_bytes()
    with pytest.raises(RunRefused, match=expected):
        prepare_output(built.store, record, False, append=True, plan=plan)
    assert (built.store.root / "run.json").read_bytes() == run_json  # nothing written


@pytest.mark.slow
def test_stylegen_run_append_end_to_end(ray_cluster, tmp_path):
    """The same through run_job on local Ray: the new shards run, the old ones are not touched."""
    small = build_manifest(tmp_path / "small", rows=14)
    big = build_manifest(tmp_path / "small", rows=20, name="big.parquet")  # the same 14 rows, and 6 more
    output = tmp_path / "out"
    config = fake_config()
    first = run_job(str(small), str(output), config, actors=2, live=False)
    assert (first.shards_planned, first.rows) == (3, 14)
    tars = {path.name: path.read_bytes() for path in (output / "shards").glob("*.tar")}
    grown = run_job(str(big), str(output), config, actors=2, live=False, append=True)
    assert (grown.shards_planned, grown.shards_resumed, grown.shards_committed) == (4, 3, 1)
    assert (grown.rows, grown.kept, grown.images_this_run) == (20, 20, 6)
    assert {
        n: p.read_bytes() for n, p in ((p.name, p) for p in (output / "shards").glob("*.tar")) if n in tars
    } == tars
    again = run_job(str(big), str(output), config, actors=2, live=False)
    assert (again.shards_resumed, again.images_this_run) == (4, 0)

    # ray.data reads the grown run as one dataset: the tars, and the metadata/ folder as one table.
    import ray.data

    uids = sorted(read_manifest(str(big)).column("uid").to_pylist())
    samples = ray.data.read_webdataset(str(output / "shards"), file_extensions=["tar"])
    assert sorted(row["__key__"] for row in samples.iter_rows()) == uids
    assert sorted(ray.data.read_parquet(str(output / "metadata")).to_pandas()["uid"]) == uids
