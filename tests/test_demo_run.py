"""`make demo` end to end: synthetic inputs -> manifest -> full run on local Ray (tiny preset) -> report.
Then the same command again, which must resume and redo nothing."""

import glob
import hashlib
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.cli.demo import DEMO_SHARD_SIZE, demo

pytestmark = pytest.mark.slow


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shards/*.tar"))}


def test_demo_runs_every_row_once_and_resumes_without_redoing_anything(no_shared_ray, tmp_path, monkeypatch):
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
    for score in ("clip_t", "clip_content", "dino_style", "csd_style", "leakage", "aesthetic", "nsfw"):
        assert table.column(f"score_{score}").null_count < rows, score  # every built-in scorer ran
    for name in ("dino", "clip"):
        assert table.column(f"embedding_{name}").null_count == run.failed  # every generated sample
    kept = sorted(u for u, s in zip(uids, table.column("status").to_pylist(), strict=True) if s == "kept")
    read_back = sorted(
        sample["__key__"]
        for sample in wds.WebDataset(sorted(map(str, output.glob("shards/*.tar"))), shardshuffle=False)
    )
    assert read_back == kept
    assert (output / "report.html").stat().st_size > 10_000
    assert_no_local_paths(output, tmp_path)
    # The card loads the real preset's samples (no extras, sampler params of both modes) with one type.
    samples = datasets.load_dataset(str(output), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(samples["__key__"]) == kept and samples.features["json"]["content"] == datasets.Value(
        "string"
    )
    modes = {meta["params"]["mode"]: meta["params"]["lambda_content"] for meta in samples["json"]}
    assert modes["stylization"] is None and isinstance(modes["composition"], float)

    before = _digests(output)
    again = demo(tmp_path / "demo", actors=2)
    assert again.run.shards_resumed == run.shards_planned and again.run.images_this_run == 0
    # a rerun that finds nothing to do still points at the finished run's card and report
    assert (again.run.card_uri, again.run.report_uri) == (run.card_uri, run.report_uri)
    assert run.card_uri is not None and run.report_uri is not None
    assert _digests(output) == before


def assert_no_local_paths(output: Path, tmp_path: Path) -> None:
    """No sample (kept or rejected, any member) holds a path of this machine: not the temp folder the demo
    ran in, the model cache under it, the worker's temp folder or the home folder. The style and content
    URIs are the manifest's own values (the demo's inputs happen to live in its temp folder): they must
    equal the manifest's, and are checked apart. The models are described once, in run.json."""
    import json
    import tarfile
    import tempfile

    from manifests.read import read_manifest

    manifest = {
        row["uid"]: row
        for row in read_manifest(str(output.parent / "inputs" / "manifest.parquet")).to_pylist()
    }
    run = json.loads((output / "run.json").read_text())
    forbidden = [str(tmp_path), tempfile.gettempdir(), str(Path.home())]
    members = 0
    for path in sorted(output.glob("shards/*.tar")) + sorted(output.glob("rejected/*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                uid, ext = member.name.split(".", 1)
                if ext == "json":
                    meta = json.loads(data)
                    assert (meta["style"], meta["content"]) == (
                        manifest[uid]["style"],
                        manifest[uid]["content"],
                    )
                    assert meta["model"] in run["models"] and "models" not in meta
                    data = json.dumps({**meta, "style": None, "content": None}).encode()
                for text in forbidden:
                    assert text.encode() not in data, (member.name, text)
                members += 1
    assert members >= 3 * 66  # image, json and txt of every generated sample
    assert not any(text in json.dumps(run["models"]) for text in forbidden)
