"""`make demo` end to end: synthetic inputs -> manifest -> full run on local Ray (tiny preset) -> report.
Then the same command again, which must resume and redo nothing."""

import glob
import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.demo import DEMO_SHARD_SIZE, demo

pytestmark = pytest.mark.slow


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shards/*.tar"))}


def test_demo_runs_every_row_once_and_resumes_without_redoing_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEGEN_CACHE", str(tmp_path / "cache"))
    first = demo(tmp_path / "demo", actors=2)
    run = first.run
    rows = first.plan.num_rows
    assert run.shards_planned == len(first.plan.shard_sizes) == -(-rows // DEMO_SHARD_SIZE)
    assert run.kept + run.rejected + run.failed == rows == 66 and run.failed == 0
    assert run.kept > 0 and run.rejected > 0, "the demo's filters should show both outcomes"

    output = tmp_path / "demo" / "run"
    table = pq.ParquetDataset(sorted(glob.glob(str(output / "metadata" / "*.parquet")))).read()
    uids = table.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == rows  # every planned row exactly once
    kept = sorted(u for u, s in zip(uids, table.column("status").to_pylist(), strict=True) if s == "kept")
    read_back = sorted(
        sample["__key__"]
        for sample in wds.WebDataset(sorted(map(str, output.glob("shards/*.tar"))), shardshuffle=False)
    )
    assert read_back == kept
    assert (output / "report.html").stat().st_size > 10_000

    before = _digests(output)
    again = demo(tmp_path / "demo", actors=2)
    assert again.run.shards_resumed == run.shards_planned and again.run.images_this_run == 0
    assert _digests(output) == before
