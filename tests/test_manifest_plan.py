import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manifest_fixtures import write_parquet

import manifests.plan as plan_module
from manifests.fingerprint import table_fingerprint
from manifests.plan import Plan, make_plan, plan_manifest, read_plan_info, read_shard
from manifests.read import read_manifest
from manifests.schema import ManifestError

pytest_plugins = ["s3_fixtures"]

STYLES = [f"/styles/{name}.png" for name in ("zeta", "alpha", "mid dle", "ü")]
PROMPTS = ["a cat", "a dog", "a bird", "a tree", "a sea"]


def manifest_columns() -> dict:
    rows = list(itertools.product(PROMPTS, STYLES))  # prompt-major, so styles start out interleaved
    return {
        "prompt": [p for p, _ in rows],
        "style": [s for _, s in rows],
        "content": [None if i % 3 else "/c.png" for i in range(len(rows))],
        "id": [f"id-{i}" for i in range(len(rows))],
        "seed": [i if i % 4 == 0 else None for i in range(len(rows))],
        "extra": [float(i) for i in range(len(rows))],
    }


@pytest.fixture
def manifest(tmp_path) -> pa.Table:
    return read_manifest(write_parquet(tmp_path / "manifest.parquet", manifest_columns()))


def test_shards_cover_every_row_once_in_style_major_order(manifest):
    plan = make_plan(manifest, shard_size=6)
    table = plan.table
    assert plan.num_shards == 4 and plan.shard_sizes == [6, 6, 6, 2] and plan.num_rows == 20
    assert table.column("shard_id").to_pylist() == [0] * 6 + [1] * 6 + [2] * 6 + [3] * 2
    assert table.schema.field("shard_id").type == pa.int32()
    assert sorted(table.column("row").to_pylist()) == list(range(20))
    keys = [(r["style"].encode(), r["uid"]) for r in table.to_pylist()]
    assert keys == sorted(keys)  # styles contiguous, byte order, then uid within a style
    by_row = {r["row"]: r for r in manifest.to_pylist()}
    for row in table.to_pylist():  # every normalized column travels with the row
        assert {k: v for k, v in row.items() if k != "shard_id"} == by_row[row["row"]]


def test_uid_order(manifest):
    uids = make_plan(manifest, shard_size=7, order="uid").table.column("uid").to_pylist()
    assert uids == sorted(uids)


def test_same_input_gives_identical_plan_bytes_and_fingerprint(tmp_path, manifest):
    again = read_manifest(write_parquet(tmp_path / "copy" / "other name.parquet", manifest_columns()))
    first, second = make_plan(manifest, 6), make_plan(again, 6)
    first.write(tmp_path / "a")
    second.write(tmp_path / "b")
    assert (tmp_path / "a" / "plan.parquet").read_bytes() == (tmp_path / "b" / "plan.parquet").read_bytes()
    assert first.fingerprint == second.fingerprint
    rechunked = pa.concat_tables([manifest.slice(0, 7), manifest.slice(7)])
    reordered = rechunked.select(list(reversed(manifest.column_names)))
    assert make_plan(reordered, 6).fingerprint == first.fingerprint
    assert (
        make_plan(read_manifest(str(tmp_path / "manifest.parquet"), compact=True), 6).fingerprint
        == first.fingerprint
    )


def test_compact_and_plain_manifests_write_the_same_plan_bytes(tmp_path):
    path = write_parquet(tmp_path / "m.parquet", manifest_columns())
    make_plan(read_manifest(path), 6).write(tmp_path / "plain")
    plan_manifest(path, 6).write(tmp_path / "compact")
    assert (tmp_path / "plain" / "plan.parquet").read_bytes() == (
        tmp_path / "compact" / "plan.parquet"
    ).read_bytes()


@pytest.mark.parametrize("column", ["prompt", "style", "content", "id", "seed", "extra"])
def test_fingerprint_changes_when_any_cell_changes(tmp_path, column):
    columns = manifest_columns()
    base = make_plan(read_manifest(write_parquet(tmp_path / "a.parquet", columns)), 6)
    changed_value = {"seed": 999, "extra": -1.0}.get(column, "/changed.png")
    columns[column][5] = changed_value
    changed = make_plan(read_manifest(write_parquet(tmp_path / "b.parquet", columns)), 6)
    assert changed.fingerprint != base.fingerprint
    assert changed.manifest_fingerprint != base.manifest_fingerprint


def test_fingerprint_covers_the_plan_parameters_and_column_names(manifest):
    base = make_plan(manifest, 6)
    others = [
        make_plan(manifest, 5),
        make_plan(manifest, 6, order="uid"),
        make_plan(manifest, 6, dedupe=True),
    ]
    assert len({base.fingerprint, *(p.fingerprint for p in others)}) == 4
    assert {p.manifest_fingerprint for p in others} == {base.manifest_fingerprint}
    renamed = manifest.rename_columns([*manifest.column_names[:-1], "extra2"])
    assert table_fingerprint(renamed) != table_fingerprint(manifest)
    nulled = manifest.set_column(
        7, "extra", pa.array([None] + manifest.column("extra").to_pylist()[1:], pa.float64())
    )
    assert table_fingerprint(nulled) != table_fingerprint(manifest)


def test_read_shard_equals_the_slice_and_reads_only_its_row_groups(tmp_path, manifest, monkeypatch):
    monkeypatch.setattr(plan_module, "ROW_GROUP_TARGET_ROWS", 4)  # one shard of 3 per row group
    plan = make_plan(manifest, 3)
    written = plan.write(tmp_path / "out dir ü")
    assert pq.ParquetFile(written).metadata.num_row_groups == plan.num_shards == 7
    read_groups = []
    original = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_groups",
        lambda self, groups, **kw: read_groups.append(groups) or original(self, groups, **kw),
    )
    for shard_id in range(plan.num_shards):
        shard = read_shard(written, shard_id)
        assert shard.equals(plan.table.slice(3 * shard_id, plan.shard_sizes[shard_id]))
        assert shard.equals(plan.shard(shard_id))
    assert read_groups == [[i] for i in range(7)]
    assert read_shard(tmp_path / "out dir ü", 2).equals(plan.shard(2))  # the folder works too
    with open(written, "rb") as handle:  # and an open file, as a storage layer would hand over
        assert read_shard(handle, 4).equals(plan.shard(4))
    with pytest.raises(ManifestError, match="no shard 7 .the plan has shards 0..6."):
        read_shard(written, 7)


def test_plan_metadata_holds_the_parameters(tmp_path, manifest):
    plan = make_plan(manifest, 6, order="uid")
    info = read_plan_info(plan.write(tmp_path))
    assert info == plan.info()
    assert info["fingerprint"] == plan.fingerprint and info["num_shards"] == 4 and info["order"] == "uid"


def test_duplicate_uids_are_refused_or_deduped_with_a_report(tmp_path):
    columns = manifest_columns()
    for name in columns:
        columns[name] += [columns[name][3], columns[name][8]]  # rows 20 and 21 repeat rows 3 and 8...
    columns["extra"][20] = 123.0  # ...even when an extra column differs
    table = read_manifest(write_parquet(tmp_path / "m.parquet", columns))
    with pytest.raises(ManifestError) as caught:
        make_plan(table, 6)
    message = str(caught.value)
    assert "2 duplicate uid(s)" in message and "rows 3, 20" in message and "rows 8, 21" in message
    assert "--dedupe" in message and sorted(caught.value.rows) == [3, 8, 20, 21]
    plan = make_plan(table, 6, dedupe=True)
    assert plan.dropped_rows == (20, 21) and plan.num_rows == 20
    assert sorted(plan.table.column("row").to_pylist()) == list(range(20))
    assert plan.summary()["dropped duplicates"] == 2


def test_summary_counts(manifest):
    summary = make_plan(manifest, 6).summary()
    assert summary["rows"] == 20 and summary["shards"] == 4 and summary["styles"] == 4
    assert summary["composition rows"] == 7  # rows 0, 3, ..., 18 have a content


def test_bad_parameters(manifest):
    with pytest.raises(ValueError, match="shard_size"):
        make_plan(manifest, 0)
    with pytest.raises(ValueError, match="order"):
        make_plan(manifest, 5, order="prompt")
    with pytest.raises(ValueError, match="read_manifest"):
        make_plan(manifest.drop_columns(["uid"]), 5)


def test_plan_written_to_s3_and_read_back_by_shard(s3_bucket, manifest):
    plan = make_plan(manifest, 6)
    uri = plan.write(s3_bucket.uri("runs/run 1"))
    assert uri == s3_bucket.uri("runs/run 1/plan.parquet")
    assert s3_bucket.object_keys() == ["runs/run 1/plan.parquet"]
    assert read_shard(uri, 1).equals(plan.shard(1))
    assert read_plan_info(s3_bucket.uri("runs/run 1"))["fingerprint"] == plan.fingerprint


def test_read_shard_refuses_a_file_that_is_not_a_plan(tmp_path):
    path = write_parquet(tmp_path / "m.parquet", {"shard_id": pa.array([0], pa.int32())})
    with pytest.raises(ManifestError, match="not a stylegen plan"):
        read_shard(path, 0)


def test_a_failing_plan_write_leaves_no_s3_object(s3_bucket, manifest, monkeypatch):
    plan = make_plan(manifest, 6)
    rows = Plan._rows

    def fail_after_the_schema(self, start, stop):
        if stop > start:
            raise RuntimeError("killed mid-write")
        return rows(self, start, stop)

    monkeypatch.setattr(Plan, "_rows", fail_after_the_schema)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        plan.write(s3_bucket.uri("runs/r"))
    assert s3_bucket.object_keys() == []  # not a valid-looking plan with the rows missing
