"""The report's data path (the shard parquets read as one pyarrow dataset, each uid's newest row, the shown
rows' prompts from their shards only) equals an independent pandas computation over the same parquets,
on a folder and on S3 (a real SeaweedFS with its endpoint given to the store only, and moto)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from output_fixtures import build_output

from pipeline.report.data import gather
from pipeline.report.gallery import build_galleries
from pipeline.storage import open_store
from pipeline.storage.layout import marker_key, table_key

pytest_plugins = ["s3_fixtures"]

RETRY_SHARD = 5  # the fixture plans 24 rows into shards 0..4; a retry generation adds shard 5
STRAY_SHARD = 6  # a parquet without a marker: not committed, never read
UNMARKED_SHARD = 3  # its marker removed by hand: not committed any more


def add_retry_generation(store, folder) -> None:
    """Shard 5 holds shard 0's failed and rejected rows again (their newest result: kept, new scores), as
    --retry-failed commits them; shard 6's parquet is published without a marker; shard 3 loses its
    marker. The ledger is left out: the markers decide."""
    stored = pq.read_table(io.BytesIO(store.get_bytes(table_key(0))))
    rows = stored.to_pandas()
    again = rows[rows["status"] != "kept"].copy()
    assert len(again) >= 2, "the fixture's shard 0 should have failed or rejected rows"
    again["status"], again["reason"], again["filter_rule"] = "kept", None, None
    again["shard_id"], again["score_clip_t"] = RETRY_SHARD, 0.95
    again["time_generate"] = 0.5
    table_path, tar_path = folder / "retry.parquet", folder / "retry.tar"
    pq.write_table(pa.Table.from_pandas(again, schema=stored.schema, preserve_index=False), table_path)
    tar_path.write_bytes(store.get_bytes("shards/shard-000000.tar"))
    summary = {"rows": len(again), "kept": len(again), "rejected": 0, "failed": 0}
    assert store.commit_shard(RETRY_SHARD, tar=tar_path, table=table_path, summary=summary).won
    stray = rows.assign(shard_id=STRAY_SHARD, status="failed", reason="never committed")
    store.put_bytes(table_key(STRAY_SHARD), _parquet_bytes(stray))
    store.delete([marker_key(UNMARKED_SHARD)])
    store.delete([info.key for info in store.list("_ledger/")])


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


def expected_rows(store) -> pd.DataFrame:
    """Every uid's newest row (highest shard id) over the parquets whose marker exists, by pandas."""
    shards = sorted(int(info.key[-11:-5]) for info in store.list("_SUCCESS/"))
    frames = []
    for shard in shards:
        marker = json.loads(store.get_bytes(marker_key(shard)))
        key = next(name for name in marker["files"] if name.endswith(".parquet"))
        frames.append(pd.read_parquet(io.BytesIO(store.get_bytes(key))))
    rows = pd.concat(frames, ignore_index=True)
    newest = rows.sort_values(["uid", "shard_id"]).drop_duplicates("uid", keep="last")
    return newest.sort_values(["shard_id", "uid"]).reset_index(drop=True)


def check_against_pandas(store) -> None:
    data = gather(store, max_failed=3)
    rows = expected_rows(store)
    assert sorted(data.rows.column("uid").to_pylist()) == sorted(rows["uid"])
    assert data.rows.column("uid").to_pylist() == rows["uid"].tolist()  # (shard_id, uid) order
    assert data.shards_committed == len(store.list("_SUCCESS/")) == 5  # shard 0 may keep no newest row
    assert data.status_counts == {s: int((rows["status"] == s).sum()) for s in ("kept", "rejected", "failed")}

    rejected = rows[rows["status"] == "rejected"]
    rules = rejected["filter_rule"].fillna(rejected["reason"].str.split(" (value", regex=False).str[0])
    assert data.rule_counts == sorted(rules.value_counts().items(), key=lambda item: (-item[1], item[0]))

    for score in data.scores:
        column = rows[f"score_{score.name}"]
        for status, values in (("kept", score.kept), ("rejected", score.rejected)):
            wanted = column[(rows["status"] == status) & np.isfinite(column.astype(float))]
            assert sorted(values.tolist()) == sorted(wanted.tolist())
    assert {s.name for s in data.scores} == {"clip_t", "dino_style", "clip_content"}

    generated = rows[rows["status"].isin(["kept", "rejected"])]
    assert data.timings, "the fixture's rows carry timings"
    for timing in data.timings:
        if timing.name == "total":
            continue
        values = generated[f"time_{timing.name}"].dropna()
        assert timing.images == len(values)
        assert timing.median == pytest.approx(values.median())
        assert timing.p95 == pytest.approx(np.percentile(values, 95))

    counts = rows.groupby(["style", "status"]).size()
    means = generated.groupby("style")[["score_clip_t", "score_dino_style"]].mean()
    assert [s.style for s in data.styles] == sorted(rows["style"].unique())
    for style in data.styles:
        assert style.counts == {
            s: int(counts.get((style.style, s), 0)) for s in ("kept", "rejected", "failed")
        }
        for name in ("clip_t", "dino_style"):
            wanted = means[f"score_{name}"].get(style.style, np.nan)
            got = style.score_means[name]
            assert got == pytest.approx(wanted) if np.isfinite(wanted) else got is None

    failed = rows[rows["status"] == "failed"].head(3)
    assert data.failed_rows == [
        {"uid": r.uid, "shard_id": r.shard_id, "reason": r.reason, "prompt": r.prompt}
        for r in failed.itertuples()
    ]

    galleries = build_galleries(store, data, per_style=4, extremes=2)
    shown = rows[
        (rows["status"] == "kept")
        | ((rows["status"] == "rejected") & rows["shard_id"].isin(data.rejected_tars))
    ]
    for end in galleries.extremes:
        column = f"score_{end.score}"
        ranked = shown[np.isfinite(shown[column].astype(float))]
        best = ranked.sort_values([column, "uid"], ascending=[False, True]).head(2)
        worst = ranked.sort_values([column, "uid"], ascending=[True, True]).head(2)
        assert [t.uid for t in end.best] == best["uid"].tolist()
        assert [t.uid for t in end.worst] == worst["uid"].tolist()
        assert [t.prompt for t in end.best] == best["prompt"].tolist()  # read from their shards only
    prompts = dict(zip(rows["uid"], rows["prompt"], strict=True))
    contents = dict(zip(rows["uid"], rows["content"], strict=True))
    for gallery in galleries.styles:
        members = rows[rows["style"] == gallery.style]
        assert gallery.composition_rows == int(members["content"].notna().sum())
        for tile in gallery.tiles:
            assert tile.prompt == prompts[tile.uid]
            assert tile.content_uri == (contents[tile.uid] if isinstance(contents[tile.uid], str) else None)


@pytest.fixture(scope="module")
def local_output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-data")
    built = build_output(folder)
    add_retry_generation(built.store, folder)
    return built


def test_local_report_data_equals_pandas(local_output):
    check_against_pandas(local_output.store)


def test_report_data_on_seaweedfs_reaches_the_store_endpoint(
    seaweedfs_bucket, local_output, tmp_path, monkeypatch
):
    """The endpoint comes from the store's options only (no AWS_ENDPOINT_URL): pyarrow's S3 filesystem
    must be given it, and SeaweedFS enforces the credentials."""
    store = open_store(
        seaweedfs_bucket.uri("out"), endpoint_url=seaweedfs_bucket.endpoint_url, addressing_style="path"
    )
    copy_output(local_output.store, store)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    check_against_pandas(
        open_store(store.uri, endpoint_url=seaweedfs_bucket.endpoint_url, addressing_style="path")
    )


def test_report_data_on_moto(s3_bucket, local_output):
    store = open_store(s3_bucket.uri("out"))
    copy_output(local_output.store, store)
    check_against_pandas(store)


def copy_output(source, target) -> None:
    """Every object of a local output, under the same keys (the markers' files and sizes stay true)."""
    for info in source.list(""):
        if not info.key.startswith("logs/"):
            target.put_bytes(info.key, source.get_bytes(info.key))


def test_a_store_arrow_cannot_read_is_read_through_the_store(local_output, monkeypatch):
    """A store of another kind (no pyarrow filesystem) gives the same data through its own reads."""
    monkeypatch.setattr("pipeline.storage.arrow_fs.arrow_filesystem", lambda store: None)
    check_against_pandas(local_output.store)
