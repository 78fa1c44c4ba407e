"""Aspect-ratio buckets and per-row settings (manifests/row_settings.py): uids, validation, plan order,
the worker's batches and sizes, build --aspect-ratios, and outputs without the columns unchanged."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import PROMPTS, fake_config, make_image, tar_samples

from manifests.buckets import bucket_sizes, parse_ratios
from manifests.plan import make_plan
from manifests.read import read_manifest
from manifests.row_settings import MAX_SIDE, MIN_SIDE, SIZE_STEP, row_size
from manifests.schema import ManifestError, normalize_table
from manifests.uid import compute_uid, compute_uids, generation_seed
from manifests.validate import validate_table
from pipeline.models.fake_generator import FakeGenerator
from pipeline.run.plan import plan_run, write_plan
from pipeline.storage import open_store
from pipeline.worker.shard_worker import ShardWorker

pytest_plugins = ["rbmod_fixtures"]


def write_manifest(folder: Path, rows: int, **columns) -> Path:
    """`rows` rows over 3 relative style paths (so outputs do not depend on the folder), every 4th
    with a content image, plus `columns`."""
    for i in range(3):
        make_image(folder / "styles" / f"style {i}.png", ((70 * i) % 256, 90, (40 * i + 150) % 256))
    make_image(folder / "contents" / "content.png", (10, 200, 10), stripes=2)
    table = {
        "prompt": [f"{PROMPTS[i % len(PROMPTS)]} #{i}" for i in range(rows)],
        "style": [f"styles/style {i % 3}.png" for i in range(rows)],
        "content": ["contents/content.png" if i % 4 == 0 else None for i in range(rows)],
        "batch_tag": [f"tag{i % 2}" for i in range(rows)],
        **columns,
    }
    path = folder / "manifest.parquet"
    pq.write_table(pa.table(table), path)
    return path


def run_worker(folder: Path, manifest: Path, config, generator=None) -> tuple[list, object]:
    store = open_store(folder / "out")
    plan, _ = plan_run(str(manifest), config)
    write_plan(store, plan)
    worker = ShardWorker.from_config(config, store.uri)
    if generator is not None:
        worker.generator = generator
    try:
        results = [worker.run_shard(shard, f"attempt-{shard}") for shard in range(plan.num_shards)]
    finally:
        worker.close()
    return results, plan


def output_digests(folder: Path) -> dict[str, str]:
    """sha256 of each tar, and of each shard parquet's schema and rows less the timings (which vary)."""
    digests = {}
    for path in sorted((folder / "out" / "shards").glob("*.tar")):
        digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    for path in sorted((folder / "out" / "metadata").glob("*.parquet")):
        table = pq.read_table(path)
        table = table.drop_columns([n for n in table.column_names if n.startswith("time_")])
        text = str(table.schema.remove_metadata()) + json.dumps(table.to_pylist(), sort_keys=True)
        digests[path.name] = hashlib.sha256(text.encode()).hexdigest()
    return digests


# Made by `output_digests` after the same 10-row run on main before per-row settings existed (the same
# function, run there with main's code first on the path).
MAIN_DIGESTS = {
    "shard-000000.tar": "d21148a460325ab53409260f0b9467ea556d22a5e99bee78bc3a7c5745f27b63",
    "shard-000001.tar": "dd4eb6feb5ea3d012e3963c7dcb2db2642a2e6575495e3abcfa4170755f1ffb9",
    "shard-000002.tar": "6b77291341d658a5f918658001b742c66d2b43d15c077579e03401e5dfa9f5a4",
    "shard-000000.parquet": "4be11f5f5bb9a4bedcf0a32160155274ff5a36a20f15ed92f5b2f8079b3e00a2",
    "shard-000001.parquet": "df693519fbcaddc70ae322967f052537471acae0cc031e0fa915f50828ae2b7d",
    "shard-000002.parquet": "3616372c8cb94aa6d881de3edbfecdc7a676bd12c5450a15b88285da756100e3",
}


def test_outputs_without_the_new_columns_are_byte_identical_to_mains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path, rows=10)
    run_worker(tmp_path, manifest, fake_config(shard_size=4))
    assert output_digests(tmp_path) == MAIN_DIGESTS


class RecordingGenerator(FakeGenerator):
    """The fake generator, remembering the (width, height, settings) of every request of every call."""

    def __init__(self, config):
        super().__init__(config)
        self.batches: list[list[tuple]] = []

    def generate(self, requests):
        self.batches.append([tuple(sorted(r.overrides.items())) for r in requests])
        return super().generate(requests)


MIXED = {  # 12 rows: three sizes, one of them with its own guidance scale, and rows left to the run
    "width": [384, 256, None, 384, 256, 384, None, 256, 384, 256, 384, 256],
    "height": [256, 384, None, 256, 384, 256, None, 384, 256, 384, 256, 384],
    "guidance_scale": [None, None, None, 7.5, None, None, None, 7.5, None, None, None, None],
}


def test_mixed_sizes_give_images_of_the_requested_sizes_in_batches_of_one_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path, rows=12, **MIXED)
    config = fake_config(shard_size=5, **{"execution.batch_size": 3})
    generator = RecordingGenerator(config.generator.fake)
    results, plan = run_worker(tmp_path, manifest, config, generator)

    assert sum(r.kept for r in results) == 12
    # every generate() call holds one size and one guidance scale (checked where the worker calls it)
    assert generator.batches and all(len(set(batch)) == 1 for batch in generator.batches)
    # batches are full where the plan allows: runs of equal settings, cut at 3 and at shard ends
    keys = [tuple(row[c] for c in ("width", "height", "guidance_scale")) for row in plan.table.to_pylist()]
    assert keys == sorted(keys, key=lambda k: tuple((v is None, v) for v in k))  # grouped, nulls last
    manifest_rows = {row["uid"]: row for row in read_manifest(str(manifest)).to_pylist()}
    samples = {}
    for path in sorted((tmp_path / "out" / "shards").glob("*.tar")):
        samples.update(tar_samples(path))
    assert set(samples) == set(manifest_rows)
    for uid, sample in samples.items():
        row = manifest_rows[uid]
        asked = row_size(row, default=(16, 16))  # the fake generator's own size for rows without one
        assert sample["image"].size == asked
        assert (sample["json"]["width"], sample["json"]["height"]) == asked
        assert sample["json"]["guidance_scale"] == row["guidance_scale"]
        assert "width" not in sample["json"]["extra"]
    table = pq.read_table(tmp_path / "out" / "metadata").to_pylist()
    assert {r["uid"]: (r["width"], r["height"], r["guidance_scale"]) for r in table} == {
        uid: (*row_size(row, default=(16, 16)), row["guidance_scale"]) for uid, row in manifest_rows.items()
    }


def test_a_generated_image_of_another_size_fails_its_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class WrongSize(FakeGenerator):
        def _size(self, request):
            return (128, 128)

    manifest = write_manifest(tmp_path, rows=3, width=[384, None, 256], height=[256, None, 384])
    config = fake_config(**{"generator.fake.size": 128})
    results, _ = run_worker(tmp_path, manifest, config, WrongSize(config.generator.fake))
    table = {r["row"]: r for r in pq.read_table(tmp_path / "out" / "metadata").to_pylist()}
    assert (results[0].kept, results[0].failed) == (1, 2)
    assert table[0]["reason"] == "generation: the image is 128x128, the row asks for 384x256"
    assert table[1]["status"] == "kept"


def test_rows_without_settings_keep_their_uid_and_rows_with_them_get_a_new_one():
    columns = {"prompt": ["a cat", "a cat", "a dog"], "style": ["s.png"] * 3, "seed": [1, 1, 2]}
    before = compute_uids(normalize_table(pa.table(columns), "m")).to_pylist()
    settings = {"width": [None, 384, None], "height": [None, 256, None], "guidance_scale": [None, 4, None]}
    after = compute_uids(normalize_table(pa.table({**columns, **settings}), "m")).to_pylist()
    assert after[0] == before[0] and after[2] == before[2]  # null cells: not part of the uid
    assert before[0] == before[1] == compute_uid("s.png", None, "a cat", 1)
    assert after[1] != before[1]
    # the Arrow path equals the scalar one, and 4 in a float column is 4.0
    assert after[1] == compute_uid(
        "s.png", None, "a cat", 1, {"width": 384, "height": 256, "guidance_scale": 4.0}
    )
    assert after[1] != compute_uid(
        "s.png", None, "a cat", 1, {"width": 256, "height": 384, "guidance_scale": 4.0}
    )


def test_validate_and_plan_name_the_rows_with_sizes_or_settings_that_cannot_be_made():
    columns = {
        "prompt": [f"p{i}" for i in range(5)],
        "style": ["s.png"] * 5,
        "width": [1024, 1000, None, 1152, 1024],
        "height": [1024, 768, 896, 896, 1024],
        "steps": [20, 20, 20, 0, None],
    }
    table = normalize_table(pa.table(columns), "m.parquet")
    table = table.add_column(0, "uid", compute_uids(table))
    problems = {(p.kind, p.rows): p.reason for p in validate_table(table, check_prompt_length=False).problems}
    assert problems == {
        (
            "bad-size",
            (1,),
        ): "1000 x 768: width 1000 px is not allowed: each side must be a multiple of 128 px "
        "between 256 and 2048 (Stable Cascade's Stage C latent is 1/42.67 of the image, so only multiples of "
        "128 px decode to exactly the size asked for); the nearest allowed side is 1024",
        ("bad-size", (2,)): "None x 896: width and height must be set together (or both left empty for the "
        "run's size)",
        ("bad-setting", (3,)): "steps must be between 1 and 1000, got 0",
    }
    with pytest.raises(ManifestError, match=r"3 row setting problem\(s\): column 'width', row 1: 1000 x 768"):
        make_plan(table, shard_size=2)


def test_a_width_column_without_height_is_refused_naming_it():
    with pytest.raises(ManifestError, match="m.csv: a size needs both columns: 'height' is missing"):
        normalize_table(pa.table({"prompt": ["a"], "style": ["s"], "width": [512]}), "m.csv")


def test_every_allowed_side_decodes_to_exactly_itself_on_both_presets():
    """The manifest's rule (multiples of 128 px) against the generator's own geometry: the Stage C cells
    it allocates for a side, and what Stage B + A decode them to."""
    from pipeline.models.presets import PresetConfig
    from pipeline.models.tiny import tiny_specs
    from pipeline.rbmod.settings import decoded_side, stage_c_side

    real = PresetConfig(name="stable-cascade")
    tiny = PresetConfig(name="tiny", **tiny_specs()["geometry"])
    for config in (real, tiny):
        for side in range(MIN_SIDE, MAX_SIDE + 1, SIZE_STEP):
            assert decoded_side(stage_c_side(side, config), config) == side, (config.name, side)
    assert stage_c_side(1024, real) == 24 == math.ceil(1024 / 42.67)  # diffusers' prior pipeline
    assert decoded_side(stage_c_side(1000, real), real) == 1024  # what the refusal prevents
    assert decoded_side(stage_c_side(1088, real), real) == 1108  # SDXL's 64 px grid does not fit


def test_tiny_preset_makes_the_requested_sizes(tiny_models, torch_single_thread):
    from PIL import Image

    from pipeline.rbmod.generate import GenerationRequest, RBModGenerator, RBModSettings, StyleRef

    style = StyleRef(Image.new("RGB", (64, 48), (200, 40, 40)))
    generator = RBModGenerator(tiny_models, RBModSettings(steps=2, soc_iterations=1, stage_b_steps=2))

    def request(seed, **overrides):
        return GenerationRequest("a red boat", (style,), seed, overrides=overrides, uid=f"r{seed}")

    results = generator.generate(
        [request(1, width=384, height=256), request(2), request(3, width=128, height=128)]
    )
    assert [r.image.size for r in results] == [(384, 256), (128, 128), (128, 128)]
    assert results[0].params["latent_size"] == [8, 12]
    # the preset's own size asked for explicitly is the same image as leaving it to the preset
    same_seed = generator.generate([request(2, width=128, height=128)])[0]
    assert np.array_equal(np.asarray(same_seed.image), np.asarray(results[1].image))
    with pytest.raises(ValueError, match="request 'r4': field 'overrides' asks for width 100, which preset"):
        generator.generate([request(4, width=100, height=128)])


def test_build_assigns_buckets_from_each_rows_seed(tmp_path):
    from manifests.build import build_manifest

    for i in range(2):
        make_image(tmp_path / "styles" / f"s{i}.png", (40 * i, 80, 120))
    (tmp_path / "prompts.txt").write_text("a cat\na dog\na tree\n")
    sizes = bucket_sizes(parse_ratios("1:1,4:3,3:4,16:9"), 1024)
    assert sizes == [(1024, 1024), (1152, 896), (896, 1152), (1280, 768)]
    out = tmp_path / "m.parquet"
    build_manifest(
        [str(tmp_path / "styles")], str(tmp_path / "prompts.txt"), str(out), repeats=4, sizes=sizes
    )
    rows = read_manifest(str(out)).to_pylist()
    assert len(rows) == 24
    for row in rows:  # the seed picks the bucket
        assert row_size(row) == sizes[row["seed"] % 4]
    per_triple = {}
    for row in rows:  # --repeats 4 gives each (style, prompt) every bucket once
        per_triple.setdefault((row["style"], row["prompt"]), set()).add(row_size(row))
    assert all(found == set(sizes) for found in per_triple.values())
    # without repeats the seed is the one the generator derives from the row's uid before the size
    build_manifest([str(tmp_path / "styles")], str(tmp_path / "prompts.txt"), str(out), sizes=sizes)
    for row in read_manifest(str(out)).to_pylist():
        base = compute_uid(row["style"], None, row["prompt"], None)
        assert row_size(row) == sizes[generation_seed(base, None) % 4]


def test_bad_aspect_ratios_are_refused_naming_the_item():
    with pytest.raises(ManifestError, match="'4-3' is not a ratio like 4:3"):
        parse_ratios("1:1,4-3")
    with pytest.raises(ManifestError, match="--resolution 1000: 1000 px is not allowed"):
        bucket_sizes([(1, 1)], 1000)


def test_card_and_report_show_the_sizes_and_kept_rate_per_bucket(tmp_path, monkeypatch):
    import datasets
    import pandas as pd
    from output_fixtures import FILTERS, KnownScorer

    from pipeline.dataset.card import write_dataset_card
    from pipeline.report.build import build_report
    from pipeline.report.data import gather
    from pipeline.scoring.rules import FilterRules
    from pipeline.storage.layout import RUN_KEY

    monkeypatch.chdir(tmp_path)
    manifest = write_manifest(tmp_path, rows=12, **MIXED)
    config = fake_config(shard_size=5, **{"scoring.enabled": True, "scoring.filters": list(FILTERS)})
    store = open_store(tmp_path / "out")
    plan, record = plan_run(str(manifest), config)
    write_plan(store, plan)
    store.put_bytes(RUN_KEY, json.dumps(record).encode())
    scorer = KnownScorer()
    rules = FilterRules.parse(list(FILTERS), set(scorer.names))
    worker = ShardWorker(FakeGenerator(config.generator.fake), scorer, rules, store, config)
    try:
        for shard in range(plan.num_shards):
            worker.run_shard(shard, f"a{shard}")
    finally:
        worker.close()

    write_dataset_card(store)
    ds = datasets.load_dataset(str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.features["json"]["width"] == datasets.Value("int64")
    assert ds.features["json"]["guidance_scale"] == datasets.Value("float64")
    assert len(ds) > 0 and all(row["png"].size == (row["json"]["width"], row["json"]["height"]) for row in ds)

    rows = pd.read_parquet(tmp_path / "out" / "metadata")
    expected = {}
    for (width, height), group in rows.groupby(["width", "height"]):
        counts = group["status"].value_counts()
        generated = counts.get("kept", 0) + counts.get("rejected", 0)
        expected[f"{width}x{height}"] = (len(group), counts.get("kept", 0) / generated if generated else None)
    buckets = gather(store).buckets
    assert {b.label: (b.rows, b.kept_share) for b in buckets} == expected
    assert len(expected) == 3 and 0 < min(share for _, share in expected.values()) < 1
    page = build_report(store)
    assert "<h2>Size buckets</h2>" in page and 'data-bucket="384x256"' in page
