"""`stylegen select`: the right uids (checked against pandas over the source parquets), fresh shards that
webdataset reads back with every selected uid once and image bytes identical to the source, the run.json
record, resume, and the refusals — on a local folder and on S3 (moto)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from output_fixtures import build_output
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.dataset.select import Selection, select_output
from pipeline.dataset.status import collect_status
from pipeline.dataset.subset import SelectError
from pipeline.storage import open_store

pytest_plugins = ["s3_fixtures"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished local output: 24 rows in 5 shards, kept / rejected / failed rows, rejected tars."""
    return build_output(tmp_path_factory.mktemp("select-source"))


# --- independent readers ------------------------------------------------------------------------------


def source_frame(output: Path) -> pd.DataFrame:
    """Every row of every committed shard parquet, read with pandas."""
    committed = sorted(path.stem for path in (output / "_SUCCESS").glob("shard-*.json"))
    return pd.concat(
        [pd.read_parquet(output / "metadata" / f"{name}.parquet") for name in committed], ignore_index=True
    )


def expected_uids(frame: pd.DataFrame, by: str, top=None, minimum=None, per=None) -> set[str]:
    """The selection, computed from its definition: kept rows with a score, best first, ties by uid,
    round(top * n) per group with halves rounded up."""
    kept = frame[(frame["status"] == "kept") & frame[f"score_{by}"].notna()]
    if minimum is not None:
        return set(kept.loc[kept[f"score_{by}"] >= minimum, "uid"])
    groups = kept.groupby(per) if per else [(None, kept)]
    chosen = set()
    for _, group in groups:
        ranked = group.assign(negative=-group[f"score_{by}"]).sort_values(["negative", "uid"])
        count = int((Decimal(str(top)) * len(ranked)).to_integral_value(rounding=ROUND_HALF_UP))
        chosen |= set(ranked["uid"].iloc[:count])
    return chosen


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def source_members(output: Path) -> dict[str, bytes]:
    members = {}
    for path in sorted((output / "shards").glob("shard-*.tar")):
        members.update(tar_members(path.read_bytes()))
    return members


def read_with_webdataset(urls: list[str]) -> tuple[Counter, dict[str, dict]]:
    import webdataset as wds

    seen: Counter = Counter()
    records = {}
    for record in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        seen[record["__key__"]] += 1
        records[record["__key__"]] = record
    return seen, records


def check_selection(new: Path, source_dir: Path, expected: set[str]) -> None:
    """The new output holds exactly `expected`, once each, with the source's image bytes."""
    urls = [str(path) for path in sorted((new / "shards").glob("shard-*.tar"))]
    seen, records = read_with_webdataset(urls)
    assert seen == Counter({uid: 1 for uid in expected})
    originals = source_members(source_dir)
    for uid, record in records.items():
        assert record["png"] == originals[f"{uid}.png"]  # byte-identical image member
        meta, original = json.loads(record["json"]), json.loads(originals[f"{uid}.json"])
        assert meta["source_shard_id"] == original["shard_id"]
        assert {k: v for k, v in meta.items() if k not in ("shard_id", "source_shard_id")} == {
            k: v for k, v in original.items() if k != "shard_id"
        }
    rows = pd.concat(pd.read_parquet(path) for path in sorted((new / "metadata").glob("shard-*.parquet")))
    assert sorted(rows["uid"]) == sorted(expected)
    assert set(rows["status"]) <= {"kept"}
    source_rows = source_frame(source_dir).set_index("uid")
    for row in rows.itertuples():
        assert row.score_clip_t == source_rows.loc[row.uid, "score_clip_t"]
        assert row.source_shard_id == source_rows.loc[row.uid, "shard_id"]


# --- selection ----------------------------------------------------------------------------------------

CASES = [
    {"by": "clip_t", "top": 0.5, "per": "style"},
    {"by": "clip_t", "top": 0.3},
    {"by": "dino_style", "top": 0.4, "per": "prompt"},
    {"by": "clip_t", "minimum": 0.6},
    {"by": "score_clip_content", "top": 1.0},  # the parquet column name works too; nulls never selected
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items()))
def test_select_keeps_exactly_the_right_uids(source, tmp_path, case):
    new = tmp_path / "selected"
    summary = select_output(source.uri, str(new), Selection(**case), shard_size=3)
    score = case["by"].removeprefix("score_")
    frame = source_frame(Path(source.uri))
    expected = expected_uids(frame, score, case.get("top"), case.get("minimum"), case.get("per"))
    assert expected, "the case should select something"
    assert summary.selected == len(expected)
    assert summary.source_kept == int((frame["status"] == "kept").sum())
    assert summary.shards == -(-len(expected) // 3) == summary.shards_written
    check_selection(new, Path(source.uri), expected)


def expected_count(frame: pd.DataFrame, by: str, count: int, per: str | None):
    """--count from its definition with pandas: the `count` largest of each group (nlargest keeps the first
    of a tie, so rows sorted by uid break ties by uid), nulls a group of their own; and the groups smaller
    than `count` with their sizes."""
    column = f"score_{by}"
    kept = frame[(frame["status"] == "kept") & frame[column].notna()].sort_values("uid")
    if per is None:
        sizes = {"None": len(kept)}
        return set(kept.nlargest(count, column)["uid"]), {k: n for k, n in sizes.items() if n < count}
    groups = kept.groupby(per, dropna=False, group_keys=False)
    best = groups.apply(lambda group: group.nlargest(count, column))
    sizes = {"None" if pd.isna(key) else str(key): n for key, n in groups.size().items()}
    return set(best["uid"]), {key: n for key, n in sorted(sizes.items()) if n < count}


COUNT_CASES = [(2, "style"), (3, "style"), (1, "prompt"), (2, "content"), (5, None)]  # content: nulls


@pytest.mark.parametrize(("count", "per"), COUNT_CASES)
def test_count_equals_pandas_groupby_nlargest(source, tmp_path, count, per):
    new = tmp_path / "counted"
    summary = select_output(source.uri, str(new), Selection("clip_t", per=per, count=count), shard_size=3)
    expected, short = expected_count(source_frame(Path(source.uri)), "clip_t", count, per)
    assert summary.selected == len(expected) and summary.short_groups == short
    check_selection(new, Path(source.uri), expected)
    run = json.loads((new / "run.json").read_text())
    assert run["selection"] == {"by": "clip_t", "top": None, "min": None, "per": per, "count": count}


def test_cli_count_names_the_short_groups_and_a_missing_column(source, tmp_path):
    runner = CliRunner()
    args = ["select", source.uri, "--by", "clip_t", "--count", "3", "-o"]
    result = runner.invoke(app, [*args, str(tmp_path / "counted"), "--per", "style"])
    assert result.exit_code == 0, result.output
    _, short = expected_count(source_frame(Path(source.uri)), "clip_t", 3, "style")
    assert short, "the fixture should have a style with fewer than 3 kept samples"
    line = " ".join(result.output.split())  # rich may wrap the line
    named = ", ".join(f"{group!r} ({size})" for group, size in short.items())
    assert f"{len(short)} of 3 groups had fewer than 3 scored kept samples, so all of theirs were" in line
    assert named in line
    result = runner.invoke(app, [*args, str(tmp_path / "x"), "--per", "styel"])
    assert result.exit_code == 2
    assert "unknown column 'styel' for --per (did you mean 'style'?)" in result.output
    assert "have: actor_id, attempt_id, caption" in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()


def test_new_output_records_the_selection_and_its_plan(source, tmp_path):
    new = tmp_path / "selected"
    select_output(source.uri, str(new), Selection("clip_t", top=0.5, per="style"), shard_size=4)
    run = json.loads((new / "run.json").read_text())
    expected = expected_uids(source_frame(Path(source.uri)), "clip_t", 0.5, per="style")
    assert run["format"] == "stylegen-select/2"
    assert run["source"]["output"] == source.uri
    assert len(run["source"]["fingerprint"]) == 64
    assert run["selection"] == {"by": "clip_t", "top": 0.5, "min": None, "per": "style"}
    assert run["counts"]["selected"] == len(expected)
    assert run["counts"]["shards"] == -(-len(expected) // 4)
    assert run["config"]["scoring"]["filters"] == source.run_record["config"]["scoring"]["filters"]

    plan = pq.read_table(new / "plan.parquet").to_pandas()
    assert sorted(plan["uid"]) == sorted(expected)
    shard_rows = {
        int(path.stem.split("-")[1]): set(pd.read_parquet(path)["uid"])
        for path in (new / "metadata").glob("*.parquet")
    }
    assert {shard: set(group["uid"]) for shard, group in plan.groupby("shard_id")} == shard_rows
    source_plan = pq.read_table(Path(source.uri) / "plan.parquet").to_pandas().set_index("uid")
    assert (plan.set_index("uid")["prompt"] == source_plan.loc[plan["uid"], "prompt"]).all()

    status = collect_status(open_store(str(new)))
    assert status["complete"] and status["shards_committed"] == run["counts"]["shards"]
    assert status["samples"] == {"kept": len(expected), "rejected": 0, "failed": 0}


def test_identical_selection_resumes_and_rewrites_only_what_is_missing(source, tmp_path):
    new = tmp_path / "selected"
    selection = Selection("clip_t", top=0.5)
    first = select_output(source.uri, str(new), selection, shard_size=2)
    assert first.shards >= 2
    before = {path.name: path.read_bytes() for path in (new / "shards").glob("*.tar")}
    (new / "_SUCCESS" / "shard-000001.json").unlink()  # as if the first run died before shard 1 committed
    (new / "shards" / "shard-000001.tar").unlink()
    (new / "metadata" / "shard-000001.parquet").unlink()
    again = select_output(source.uri, str(new), selection, shard_size=2)
    assert (again.shards_resumed, again.shards_written) == (first.shards - 1, 1)
    assert {path.name: path.read_bytes() for path in (new / "shards").glob("*.tar")} == before


def test_refuses_a_different_selection_into_an_existing_one(source, tmp_path):
    new = tmp_path / "selected"
    select_output(source.uri, str(new), Selection("clip_t", top=0.5), shard_size=2)
    with pytest.raises(SelectError, match=r"different selection \(selection.top: 0.5 -> 0.4\)"):
        select_output(source.uri, str(new), Selection("clip_t", top=0.4), shard_size=2)
    with pytest.raises(SelectError, match="shard_size: 2 -> 3"):
        select_output(source.uri, str(new), Selection("clip_t", top=0.5), shard_size=3)


def test_refuses_the_source_itself_a_nested_output_and_a_foreign_folder(source, tmp_path):
    with pytest.raises(SelectError, match="must differ from the source"):
        select_output(source.uri, source.uri + "/", Selection("clip_t", top=0.5))
    with pytest.raises(SelectError, match="must not contain one another"):
        select_output(source.uri, source.uri + "/selected", Selection("clip_t", top=0.5))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SelectError, match=r"already holds 1 objects and is not a selection output"):
        select_output(source.uri, str(foreign), Selection("clip_t", top=0.5))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_unknown_score_lists_the_available_ones(source, tmp_path):
    with pytest.raises(SelectError, match=r"unknown score 'csd' .* have: clip_content, clip_t, dino_style$"):
        select_output(source.uri, str(tmp_path / "new"), Selection("csd", top=0.5))
    with pytest.raises(SelectError, match=r"unknown score 'clipt' for --by \(did you mean 'clip_t'\?\); "):
        select_output(source.uri, str(tmp_path / "new"), Selection("clipt", top=0.5))
    assert not (tmp_path / "new").exists()


def test_bad_selection_arguments_are_refused():
    with pytest.raises(SelectError, match="exactly one of --top FRACTION, --count N or --min VALUE"):
        Selection("clip_t")
    with pytest.raises(SelectError, match="exactly one of"):
        Selection("clip_t", top=0.5, count=3)
    with pytest.raises(SelectError, match="--count must be at least 1, got 0"):
        Selection("clip_t", count=0)
    with pytest.raises(SelectError, match="exactly one of"):
        Selection("clip_t", top=0.5, minimum=0.2)
    with pytest.raises(SelectError, match=r"--top must be a fraction in \(0, 1\], got 1.5"):
        Selection("clip_t", top=1.5)
    with pytest.raises(SelectError, match="--per only applies to --top and --count"):
        Selection("clip_t", minimum=0.2, per="style")


def test_unfinished_source_is_refused_unless_allow_partial(tmp_path):
    partial = build_output(tmp_path / "partial", commit_shards=[0, 2, 4])
    with pytest.raises(
        SelectError, match=r"unfinished: 3 of 5 shards committed \(missing: 1, 3\).*--allow-partial"
    ):
        select_output(partial.uri, str(tmp_path / "new"), Selection("clip_t", top=1.0))
    summary = select_output(
        partial.uri, str(tmp_path / "new"), Selection("clip_t", top=1.0), allow_partial=True
    )
    frame = source_frame(Path(partial.uri))
    assert set(frame["shard_id"]) == {0, 2, 4}
    expected = expected_uids(frame, "clip_t", 1.0)
    assert summary.selected == len(expected)
    check_selection(tmp_path / "new", Path(partial.uri), expected)


def test_cli_select_and_its_errors(source, tmp_path):
    runner = CliRunner()
    new = tmp_path / "cli"
    result = runner.invoke(
        app, ["select", source.uri, "--by", "clip_t", "--top", "0.5", "--per", "style", "-o", str(new)]
    )
    assert result.exit_code == 0, result.output
    expected = expected_uids(source_frame(Path(source.uri)), "clip_t", 0.5, per="style")
    assert json.loads((new / "run.json").read_text())["counts"]["selected"] == len(expected)
    result = runner.invoke(
        app, ["select", source.uri, "--by", "nope", "--min", "0.1", "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "unknown score 'nope'" in result.output and "clip_t" in result.output


@pytest.mark.slow
def test_select_on_s3(s3_bucket, tmp_path):
    src = build_output(tmp_path, s3_bucket.uri("runs/source"))
    new_uri = s3_bucket.uri("runs/selected")
    summary = select_output(src.uri, new_uri, Selection("clip_t", top=0.5, per="style"), shard_size=3)

    # Independent reads straight from the bucket with the test's own boto3 client.
    client, bucket = s3_bucket.client, s3_bucket.name
    source_keys = s3_bucket.object_keys("runs/source/shards/")
    frame = pd.concat(
        pd.read_parquet(io.BytesIO(s3_bucket.read(key)))
        for key in s3_bucket.object_keys("runs/source/metadata/")
    )
    expected = expected_uids(frame, "clip_t", 0.5, per="style")
    assert summary.selected == len(expected)
    originals = {}
    for key in source_keys:
        if key.endswith(".tar"):
            originals.update(tar_members(s3_bucket.read(key)))
    new_tars = [key for key in s3_bucket.object_keys("runs/selected/shards/") if key.endswith(".tar")]
    assert len(new_tars) == summary.shards
    urls = [
        client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}) for key in new_tars
    ]
    seen, records = read_with_webdataset(urls)  # webdataset streams http(s) URLs itself
    assert seen == Counter({uid: 1 for uid in expected})
    for uid, record in records.items():
        assert record["png"] == originals[f"{uid}.png"]
    assert not s3_bucket.object_keys("runs/selected/_attempts/")
    run = json.loads(s3_bucket.read("runs/selected/run.json"))
    assert run["source"]["output"] == src.uri and run["counts"]["selected"] == len(expected)


def test_a_source_that_changed_since_is_refused_and_a_damaged_one_named(tmp_path):
    # uids hash absolute paths, so which shards hold kept samples depends on the temp folder: the shard
    # whose marker goes is one whose loss leaves kept samples, and the damaged one is the first of those.
    partial = build_output(tmp_path / "partial", commit_shards=[0, 2, 4])
    frame = source_frame(Path(partial.uri))
    with_kept = set(frame.query("status == 'kept'")["shard_id"])
    gone = next(shard for shard in (4, 2, 0) if with_kept - {shard})
    new = tmp_path / "new"
    select_output(partial.uri, str(new), Selection("clip_t", top=1.0), allow_partial=True)
    (Path(partial.uri) / "_SUCCESS" / f"shard-{gone:06d}.json").unlink()  # the source is not what it was
    with pytest.raises(SelectError, match=r"source.fingerprint: .*source.shards_committed: 3 -> 2"):
        select_output(partial.uri, str(new), Selection("clip_t", top=1.0), allow_partial=True)

    kept = frame.query(f"status == 'kept' and shard_id != {gone}").sort_values(["shard_id", "uid"])
    shard, lost = int(kept.iloc[0]["shard_id"]), kept.iloc[0]["uid"]
    tar_path = Path(partial.uri) / "shards" / f"shard-{shard:06d}.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if not m.name.startswith(lost)]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(
        SelectError, match=rf"shard-{shard:06d}.tar: kept sample {lost} is missing .* damaged"
    ):
        select_output(partial.uri, str(tmp_path / "other"), Selection("clip_t", top=1.0), allow_partial=True)


def test_an_empty_selection_is_a_complete_empty_dataset(source, tmp_path):
    new = tmp_path / "empty"
    summary = select_output(source.uri, str(new), Selection("clip_t", minimum=5.0))
    assert (summary.selected, summary.shards) == (0, 0)
    assert pq.read_table(new / "plan.parquet").num_rows == 0
    status = collect_status(open_store(str(new)))
    assert status["complete"] and status["shards_planned"] == 0 and status["samples"]["kept"] == 0
