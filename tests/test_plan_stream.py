"""The streamed plan (external sort: sorted runs spilled to Parquet and merged) writes plan.parquet with the
rows, order, shard ids, row groups and metadata of make_plan's, on random manifests with duplicates,
nulls and dictionary-encoded text, in runs and merge reads small enough to cross every boundary."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import fake_config

import manifests.plan_stream as plan_stream
from manifests.plan import make_plan, read_plan_info
from manifests.plan_stream import StreamedPlan, stream_plan
from manifests.read import read_manifest
from manifests.schema import ManifestError


def random_manifest(path, seed: int, rows: int, *, duplicates: int, compact: bool) -> str:
    rng = random.Random(seed)
    styles = [f"s3://bucket/styles/{rng.choice('abcé')}{i:03d}.png" for i in range(rng.randint(1, 9))]
    table = {
        "style": [rng.choice(styles) for _ in range(rows)],
        "prompt": [f"prompt {rng.randint(0, rows // 2)}" for _ in range(rows)],
        "content": [rng.choice([None, "c1.png", "c2.png"]) for _ in range(rows)],
        "seed": [rng.choice([None, rng.randint(0, 5)]) for _ in range(rows)],
        "extra": [rng.choice([None, 1.5, 2.5]) for _ in range(rows)],
    }
    if seed % 3 == 1:  # per-row sizes and settings: the first sort keys (nulls last)
        sizes = [(None, None), (512, 512), (768, 512), (1024, 1024)]
        chosen = [rng.choice(sizes) for _ in range(rows)]
        table["width"], table["height"] = [w for w, _ in chosen], [h for _, h in chosen]
        table["steps"] = [rng.choice([None, 20, 30]) for _ in range(rows)]
    for _ in range(duplicates):  # a row copied onto another: the same uid
        source, target = rng.randrange(rows), rng.randrange(rows)
        for column in ("style", "prompt", "content", "seed", "width", "height", "steps"):
            if column in table:
                table[column][target] = table[column][source]
    frame = pa.table(table)
    if compact:
        frame = frame.set_column(0, "style", frame.column("style").dictionary_encode())
    pq.write_table(frame, path, row_group_size=rng.randint(3, 50))
    return str(path)


def plan_file(folder, plan) -> pa.Table:
    return pq.read_table(plan.write(folder))


@pytest.mark.parametrize("seed", range(8))
def test_streamed_plan_equals_make_plan(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(plan_stream, "MERGE_ROWS", 1 + seed % 7)
    rng = random.Random(seed)
    rows, order = rng.randint(1, 400), rng.choice(["style", "uid"])
    shard_size = rng.choice([1, 3, 16, 1000])
    manifest = random_manifest(
        tmp_path / "m.parquet", seed, rows, duplicates=rng.randint(0, 5), compact=seed % 2 == 0
    )
    expected = make_plan(read_manifest(manifest, compact=seed % 3 == 0), shard_size, order, dedupe=True)
    streamed = stream_plan(manifest, shard_size, order, dedupe=True, run_rows=rng.randint(1, 60))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    want, got = expected.write(tmp_path / "a"), streamed.write(tmp_path / "b")
    assert pq.read_table(got).equals(pq.read_table(want))
    assert ("width" in pq.read_table(got).column_names) == (seed % 3 == 1)
    assert read_plan_info(got) == read_plan_info(want)
    assert streamed.dropped_rows == expected.dropped_rows
    assert streamed.shard_sizes == expected.shard_sizes
    assert (streamed.fingerprint, streamed.manifest_fingerprint) == (
        expected.fingerprint,
        expected.manifest_fingerprint,
    )
    groups = lambda path: [  # noqa: E731
        pq.ParquetFile(path).metadata.row_group(i).num_rows
        for i in range(pq.ParquetFile(path).num_row_groups)
    ]
    assert groups(got) == groups(want)


def test_streamed_plan_refuses_duplicates_as_make_plan_does(tmp_path):
    manifest = random_manifest(tmp_path / "m.parquet", 3, 200, duplicates=8, compact=False)
    with pytest.raises(ManifestError) as expected:
        make_plan(read_manifest(manifest), 16)
    with pytest.raises(ManifestError) as streamed:
        stream_plan(manifest, 16, run_rows=17)
    assert str(streamed.value) == str(expected.value)
    assert streamed.value.rows == expected.value.rows


def test_a_run_plans_a_big_manifest_by_streaming_into_the_same_plan_and_record(tmp_path, monkeypatch):
    """plan_run streams manifests of STREAM_ROWS rows or more: the same run.json and plan.parquet."""
    import pipeline.run.plan as run_plan
    from pipeline.storage import open_store

    manifest = random_manifest(tmp_path / "m.parquet", 5, 300, duplicates=3, compact=False)
    config = fake_config(shard_size=7, dedupe=True)
    outputs = {}
    for name, threshold in (("memory", 10**9), ("streamed", 1)):
        monkeypatch.setattr(run_plan, "STREAM_ROWS", threshold)
        plan, record = run_plan.plan_run(manifest, config)
        assert isinstance(plan, StreamedPlan) == (name == "streamed")
        store = open_store(str(tmp_path / name))
        run_plan.write_plan(store, plan)
        outputs[name] = (
            {k: v for k, v in record.items() if k != "created"},
            pq.read_table(tmp_path / name / "plan.parquet"),
        )
    assert outputs["streamed"][0] == outputs["memory"][0]
    assert outputs["streamed"][1].equals(outputs["memory"][1], check_metadata=True)
