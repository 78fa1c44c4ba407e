"""A distributed run into S3 (moto): inputs and manifest read from s3://, shards committed through the
S3 store, the log uploaded, the result read back with webdataset, and a resume that redoes nothing."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from run_fixtures import build_manifest, fake_config, own_ray

from manifests.read import read_manifest
from pipeline.run.job import run_job

pytest_plugins = ["s3_fixtures"]


@pytest.mark.slow
def test_run_into_s3_reads_back_every_kept_uid_once_and_resumes(s3_bucket, tmp_path):
    # inputs and manifest live in the bucket too
    local = build_manifest(tmp_path, rows=12, styles=2)
    table = pq.read_table(local)
    remote = {}
    for path in sorted(
        set(table.column("style").to_pylist()) | set(filter(None, table.column("content").to_pylist()))
    ):
        key = f"inputs/{path.rsplit('/', 1)[1]}"
        s3_bucket.client.upload_file(path, s3_bucket.name, key)
        remote[path] = s3_bucket.uri(key)
    for column in ("style", "content"):
        values = [remote.get(v) if v else None for v in table.column(column).to_pylist()]
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.string()))
    pq.write_table(table, tmp_path / "s3-manifest.parquet")
    s3_bucket.client.upload_file(str(tmp_path / "s3-manifest.parquet"), s3_bucket.name, "manifest.parquet")
    manifest = s3_bucket.uri("manifest.parquet")
    output = s3_bucket.uri("runs/one")
    config = fake_config(**{"generator.fake.latency_s": 0.01, "scoring.enabled": False})

    # Ray starts after s3_env pointed the AWS environment at moto, so the actors inherit it.
    with own_ray():
        summary = run_job(manifest, output, config, actors=2, live=False)
        resumed = run_job(manifest, output, config, actors=2, live=False)

    uids = sorted(read_manifest(manifest).column("uid").to_pylist())
    assert (summary.shards_committed, summary.kept, summary.failed) == (2, 12, 0)
    assert (resumed.shards_resumed, resumed.shards_committed, resumed.images_this_run) == (2, 0, 0)
    keys = s3_bucket.object_keys("runs/one/")
    tars = [key for key in keys if key.startswith("runs/one/shards/") and key.endswith(".tar")]
    assert [k.rsplit("/", 1)[1] for k in tars] == ["shard-000000.tar", "shard-000001.tar"]
    assert not [key for key in keys if "/_attempts/" in key]
    assert len([key for key in keys if key.startswith("runs/one/logs/run-")]) == 2
    assert json.loads(s3_bucket.read("runs/one/summary.json"))["kept"] == 12
    local_tars = []
    for key in tars:
        path = tmp_path / key.rsplit("/", 1)[1]
        path.write_bytes(s3_bucket.read(key))
        local_tars.append(str(path))
    samples = list(wds.WebDataset(local_tars, shardshuffle=False))
    assert sorted(sample["__key__"] for sample in samples) == uids
    assert all(json.loads(sample["json"])["style"].startswith("s3://") for sample in samples)
