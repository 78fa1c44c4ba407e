"""Captions: `{uid}.txt` per sample, the prompt by default or a template over the row and its extras."""

from __future__ import annotations

import pytest
from run_fixtures import build_manifest, fake_config, tar_samples

from manifests.read import read_manifest
from pipeline.captions import CaptionError, check_template, render_caption
from pipeline.run.plan import plan_run, write_plan
from pipeline.run_config import ConfigError, RunConfig
from pipeline.storage import open_store
from pipeline.worker.shard_worker import ShardWorker


def test_a_template_renders_row_fields_and_extras_with_nulls_as_empty():
    row = {"uid": "ab" * 8, "row": 3, "prompt": "a horse", "style": "s.png", "content": None, "id": None,
           "seed": 7, "artist": "Hokusai", "year": 1831}  # fmt: skip
    template = "{prompt}, in the style of {extra.artist} ({extra.year}){content}, seed {seed:03d}"
    assert render_caption(template, row) == "a horse, in the style of Hokusai (1831), seed 007"
    assert render_caption("{prompt}", row) == "a horse"


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("{prompt} by {artist}", "{artist}"),  # an extra without extra.
        ("{promt}", "{promt}"),
        ("{extra}", "{extra}"),
        ("{prompt.upper}", "{prompt.upper}"),
        ("{}", "name every field"),
        ("{extra[artist]}", "{extra.NAME}"),
        ("{prompt", "not a valid format string"),
        ("  ", "non-empty"),
    ],
)
def test_a_bad_template_is_refused_at_config_load_naming_the_field(template, named):
    with pytest.raises(ConfigError, match="caption.template") as caught:
        RunConfig.load(None, {"caption.template": template})
    assert named in str(caught.value)


def test_an_unknown_extra_is_refused_when_the_manifest_is_read_naming_it_and_the_known_ones(tmp_path):
    manifest = build_manifest(tmp_path, rows=4)  # its only extra column is batch_tag
    config = fake_config(**{"caption.template": "{prompt}, by {extra.artist}"})
    with pytest.raises(ConfigError, match=r"unknown field \{extra.artist\}.*its extras: batch_tag"):
        plan_run(str(manifest), config)
    check_template("{extra.batch_tag}", ["batch_tag"])  # a known one passes
    with pytest.raises(CaptionError, match="extra.artist"):
        check_template("{extra.artist}", ["batch_tag"])


def test_every_kept_sample_has_its_caption_member_and_parquet_column(tmp_path):
    manifest = build_manifest(tmp_path, rows=6)
    config = fake_config(shard_size=6, **{"caption.template": "{prompt} [{extra.batch_tag}]"})
    plan, record = plan_run(str(manifest), config)
    store = open_store(str(tmp_path / "out"))
    write_plan(store, plan)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        worker.run_shard(0, "a1")
    finally:
        worker.close()
    rows = {row["uid"]: row for row in read_manifest(str(manifest)).to_pylist()}
    samples = tar_samples(tmp_path / "out" / "shards" / "shard-000000.tar")
    assert sorted(samples) == sorted(rows)
    for uid, sample in samples.items():
        assert sample["txt"] == f"{rows[uid]['prompt']} [{rows[uid]['batch_tag']}]"
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "metadata" / "shard-000000.parquet")
    assert dict(zip(table.column("uid").to_pylist(), table.column("caption").to_pylist(), strict=True)) == {
        uid: sample["txt"] for uid, sample in samples.items()
    }
