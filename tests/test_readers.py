"""The shards feed training directly, read by the usual tools with no stylegen code: webdataset (any image
format, the caption member), a torch DataLoader with workers, Hugging Face `datasets` (the dataset card
at the output root, and its webdataset builder given the card's features), pandas and duckdb (the shard
parquets under metadata/ as one table). ray.data is exercised in test_append's end-to-end run (it needs
Ray started, which that test does anyway)."""

from __future__ import annotations

import json
import tarfile
import traceback
from collections import Counter

import datasets
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import webdataset as wds
import yaml

from pipeline.dataset.card import feature_yaml, write_dataset_card
from tests.output_fixtures import build_output, read_shard_tables

pytest_plugins = ["s3_fixtures"]
CAPTION = "{prompt} ({extra.batch_tag})"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 5-shard output in jpg with a caption template, and its dataset card."""
    built = build_output(
        tmp_path_factory.mktemp("readers"),
        config_overrides={"image.format": "jpg", "caption.template": CAPTION},
    )
    write_dataset_card(built.store)
    return built


def tars(output) -> list[str]:
    return sorted(str(path) for path in (output.store.root / "shards").glob("*.tar"))


def tar_samples(output) -> dict[str, dict[str, bytes]]:
    """uid -> {extension: bytes}, read with the standard library."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in tars(output):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                uid, ext = member.name.split(".", 1)
                samples.setdefault(uid, {})[ext] = tar.extractfile(member).read()
    return samples


def kept(output) -> pa.Table:
    rows = read_shard_tables(output.store)
    return rows.filter(pc.equal(rows.column("status"), "kept"))


def expected_captions(output) -> dict[str, str]:
    rows = kept(output)
    return {
        uid: f"{prompt} ({tag})"
        for uid, prompt, tag in zip(
            rows.column("uid").to_pylist(),
            rows.column("prompt").to_pylist(),
            rows.column("extra_batch_tag").to_pylist(),
            strict=True,
        )
    }


def card_header(output) -> dict:
    text = (output.store.root / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def assert_loaded_as_written(loaded, written) -> None:
    """Every value of the sample's json came through (no key left out of the declared type); keys the type
    declares beyond the sample's (a score this row lacks) load as null."""
    if isinstance(written, dict):
        assert set(written) <= set(loaded), sorted(set(written) - set(loaded))
        for name in loaded:
            if name in written:
                assert_loaded_as_written(loaded[name], written[name])
            else:
                assert loaded[name] is None, name
    else:
        assert loaded == written


def test_webdataset_reads_image_caption_and_metadata_whatever_the_image_format(finished):
    expected = expected_captions(finished)
    assert len(expected) > 3
    dataset = (
        wds.WebDataset(tars(finished), shardshuffle=False)
        .decode("pil")
        .to_tuple("__key__", "jpg;png;webp", "txt", "json")
    )
    seen = {}
    for key, image, caption, meta in dataset:
        assert image.size == (32, 32) and meta["uid"] == key
        seen[key] = caption
    assert seen == expected


def test_a_dataloader_with_two_workers_reads_every_sample_once(finished, tmp_path):
    def count(urls, **options) -> Counter:
        dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, **options)
        # forkserver: workers forked from a clean process, not from this one with its many threads
        # (Arrow's pools, servers' clients: a fork of those can abort the child now and then)
        loader = torch.utils.data.DataLoader(
            dataset.to_tuple("__key__"), num_workers=2, batch_size=None, multiprocessing_context="forkserver"
        )
        batches = iter(loader)
        try:
            return Counter(key for (key,) in batches)
        except Exception as error:
            # The traceback's frames hold the iterator: cleared, it is freed below and its workers stop
            # at once. Left to the garbage collector, whichever later test triggers it waits 5 s a worker.
            traceback.clear_frames(error.__traceback__)
            raise
        finally:
            del batches

    assert count(tars(finished)) == Counter(list(expected_captions(finished)))  # 5 shards, 2 workers

    # One shard, two workers: the idle worker has no shard. webdataset raises there by default; with
    # empty_check=False it yields nothing, and the other worker reads every sample.
    single = build_output(tmp_path, shard_size=100)
    urls = tars(single)
    assert len(urls) == 1
    with pytest.raises(ValueError, match="fewer shards than workers"):
        count(urls)
    assert count(urls, empty_check=False) == Counter(kept(single).column("uid").to_pylist())


def test_load_dataset_on_the_output_folder_reads_the_card_with_stable_types(finished, tmp_path):
    ds = datasets.load_dataset(str(finished.store.root), split="train", cache_dir=str(tmp_path))
    json_features = ds.features["json"]
    assert ds.features["jpg"] == datasets.Image() and ds.features["txt"] == datasets.Value("string")
    assert json_features["content"] == datasets.Value("string")  # null in stylization rows, declared
    assert json_features["scores"]["clip_content"] == datasets.Value("float64")
    assert json_features["extra"]["batch_tag"] == datasets.Value("string")
    assert dict(zip(ds["__key__"], ds["txt"], strict=True)) == expected_captions(finished)

    raw = tar_samples(finished)
    contents = Counter()
    for row in ds:
        meta = json.loads(raw[row["__key__"]]["json"])
        assert_loaded_as_written(row["json"], meta)
        assert row["jpg"].size == (32, 32)
        contents[meta["content"] is None] += 1
    assert contents[True] and contents[False]  # both kinds of rows, one type


def test_the_card_features_are_what_datasets_makes_of_the_same_arrow_type(finished):
    (info,) = card_header(finished)["dataset_info"]
    features = {feature["name"]: feature for feature in info["features"]}
    loaded = datasets.Features._from_yaml_list(info["features"])
    arrow = loaded.arrow_schema.field("json").type
    (expected,) = datasets.Features.from_arrow_schema(pa.schema([("json", arrow)]))._to_yaml_list()
    assert {"name": "json", **feature_yaml(arrow)} == expected == features["json"]


def test_the_webdataset_builder_reads_the_tars_with_the_card_features(finished, tmp_path):
    (info,) = card_header(finished)["dataset_info"]
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": tars(finished)},
        features=datasets.Features._from_yaml_list(info["features"]),
        split="train",
        cache_dir=str(tmp_path),
    )
    assert dict(zip(ds["__key__"], ds["txt"], strict=True)) == expected_captions(finished)


def test_pandas_and_duckdb_read_the_metadata_folder_as_one_table(finished):
    expected = read_shard_tables(finished.store)
    folder = finished.store.root / "metadata"
    frame = pd.read_parquet(folder)
    assert sorted(frame["uid"]) == sorted(expected.column("uid").to_pylist())
    counts = duckdb.sql(
        f"select status, count(*) from read_parquet('{folder}/*.parquet') group by status"
    ).fetchall()
    assert dict(counts) == dict(Counter(expected.column("status").to_pylist()))


def test_hf_reads_the_shard_parquets_by_path(finished, tmp_path):
    rows = datasets.load_dataset(
        "parquet",
        data_files=str(finished.store.root / "metadata" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path),
    )
    assert sorted(rows["uid"]) == sorted(read_shard_tables(finished.store).column("uid").to_pylist())


def test_the_card_reads_which_modes_the_plan_has_from_its_footer(finished, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.dataset.card import plan_modes

    assert plan_modes(pq.ParquetFile(finished.store.root / "plan.parquet")) == {False, True}
    for contents, modes in (
        ([None, None], {False}),
        (["c.png", "d.png"], {True}),
        (["c.png", None], {False, True}),
    ):
        path = tmp_path / f"plan-{len(modes)}-{contents[0]}.parquet"
        pq.write_table(pa.table({"content": pa.array(contents, pa.string())}), path, row_group_size=1)
        assert plan_modes(pq.ParquetFile(path)) == modes


@pytest.mark.slow
def test_the_card_of_an_s3_output_is_the_card_of_the_same_local_output(finished, s3_bucket, tmp_path):
    built = build_output(
        tmp_path,
        s3_bucket.uri("runs/one"),
        config_overrides={"image.format": "jpg", "caption.template": CAPTION},
    )
    assert write_dataset_card(built.store) == s3_bucket.uri("runs/one/README.md")
    assert s3_bucket.read("runs/one/README.md") == (finished.store.root / "README.md").read_bytes()
