import itertools
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manifest_fixtures import png_bytes, sample_images, write_image

from manifests.build import (
    build_manifest,
    collect_images,
    iter_manifest_batches,
    read_prompts,
    write_manifest,
)
from manifests.schema import ManifestError
from manifests.uid import compute_uid, generation_seed

pytest_plugins = ["s3_fixtures"]

STYLES = ["/s/a.png", "/s/b.png", "/s/c.png"]
CONTENTS = ["/c/x.png", "/c/y.png"]
PROMPTS = ["a cat", "a dog, barking", 'a "quoted"\nbird', "a tree"]


def rows_of(batches) -> list[tuple]:
    table = pa.Table.from_batches(list(batches))
    return [(r["style"], r["content"], r["prompt"], r["seed"]) for r in table.to_pylist()]


def test_cross_is_every_style_by_prompt_in_style_major_order():
    expected = [(s, None, p, None) for s, p in itertools.product(STYLES, PROMPTS)]
    assert rows_of(iter_manifest_batches(STYLES, PROMPTS)) == expected


def test_cross_with_contents_is_style_by_content_by_prompt():
    expected = [(s, c, p, None) for s, c, p in itertools.product(STYLES, CONTENTS, PROMPTS)]
    assert rows_of(iter_manifest_batches(STYLES, PROMPTS, CONTENTS, "cross")) == expected


def test_streaming_in_small_batches_gives_the_same_rows(tmp_path):
    expected = [(s, c, p, None) for s, c, p in itertools.product(STYLES, CONTENTS, PROMPTS)]
    batches = list(iter_manifest_batches(STYLES, PROMPTS, CONTENTS, batch_rows=5))
    assert [b.num_rows for b in batches] == [5] * 4 + [4]
    out = tmp_path / "out.parquet"
    assert write_manifest(iter(batches), str(out)) == len(expected) == 24
    assert pq.ParquetFile(out).metadata.num_row_groups == 5  # written batch by batch
    assert rows_of(pq.read_table(out).to_batches()) == expected


def test_zip_pairs_in_order_and_refuses_unequal_lengths():
    expected = [(s, c, p, None) for s, c, p in zip(STYLES[:2], CONTENTS, PROMPTS[:2], strict=True)]
    assert rows_of(iter_manifest_batches(STYLES[:2], PROMPTS[:2], CONTENTS, "zip")) == expected
    with pytest.raises(
        ManifestError, match="zip pairing needs lists of the same length, got 3 styles, 4 prompts"
    ):
        list(iter_manifest_batches(STYLES, PROMPTS, pairing="zip"))


def test_sample_draws_distinct_triples_deterministically():
    cross = [(s, c, p, None) for s, c, p in itertools.product(STYLES, CONTENTS, PROMPTS)]
    first = rows_of(iter_manifest_batches(STYLES, PROMPTS, CONTENTS, "sample", samples=7, seed=3))
    again = rows_of(iter_manifest_batches(STYLES, PROMPTS, CONTENTS, "sample", samples=7, seed=3))
    other = rows_of(iter_manifest_batches(STYLES, PROMPTS, CONTENTS, "sample", samples=7, seed=4))
    assert first == again and first != other
    assert len(set(first)) == 7 and set(first) <= set(cross)
    assert first == sorted(first, key=cross.index)  # written in cross order
    with pytest.raises(ManifestError, match=r"--samples <= 24"):
        list(iter_manifest_batches(STYLES, PROMPTS, CONTENTS, "sample", samples=25))
    with pytest.raises(ManifestError, match="--samples only applies to --pairing sample"):
        list(iter_manifest_batches(STYLES, PROMPTS, samples=2))


def test_repeats_give_each_triple_k_consecutive_seeds_from_its_uid():
    rows = rows_of(iter_manifest_batches(STYLES[:2], PROMPTS[:2], repeats=3, seed=5, batch_rows=4))
    expected = []
    for style, prompt in itertools.product(STYLES[:2], PROMPTS[:2]):
        base = generation_seed(compute_uid(style, None, prompt, 5), None)
        expected += [(style, None, prompt, (base + r) % 2**63) for r in range(3)]
    assert rows == expected
    assert len({compute_uid(*row) for row in rows}) == 12  # every repeat is its own uid


def test_duplicate_inputs_are_refused_before_writing():
    with pytest.raises(ManifestError, match="1 prompt.s. listed more than once.*'a cat'"):
        list(iter_manifest_batches(STYLES, ["a cat", "a dog", "a cat"]))
    with pytest.raises(ManifestError, match="style"):
        list(iter_manifest_batches(["/a.png", "/a.png"], PROMPTS))


def test_collect_images_walks_folders_and_globs_in_a_stable_order(tmp_path):
    root = tmp_path / "sty les"
    for name in ["b.png", "a.JPG", "sub/c d.webp", "sub/ü.bmp", ".hidden/x.png", "notes.txt"]:
        write_image(root / name)
    found = collect_images([str(root), str(tmp_path / "sty les" / "sub" / "*.webp")])
    assert found.uris == [
        str(root / "a.JPG"),
        str(root / "b.png"),
        str(root / "sub" / "c d.webp"),
        str(root / "sub" / "ü.bmp"),
        str(root / "sub" / "c d.webp"),
    ]
    assert found.ignored == [str(root / "notes.txt")]


def test_bad_image_inputs_are_all_listed_with_their_paths(tmp_path):
    write_image(tmp_path / "ok.png")
    (tmp_path / "doc.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    bad = [
        str(tmp_path / "missing.png"),
        str(tmp_path / "doc.txt"),
        str(tmp_path / "empty"),
        str(tmp_path / "*.gif"),
    ]
    with pytest.raises(ManifestError) as caught:
        collect_images([str(tmp_path / "ok.png"), *bad], "content")
    message = str(caught.value)
    assert message.startswith("4 bad content input(s)")
    for path, why in zip(
        bad,
        [
            "no such file",
            "not an image file",
            "folder holds no image files",
            "pattern matches no image files",
        ],
        strict=True,
    ):
        assert f"{path}: {why}" in message


def test_read_prompts_from_text_csv_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \r\nthe sky\n")
    assert read_prompts(str(tmp_path / "p.txt")) == ["a cat", "a dog", "the sky"]
    (tmp_path / "p.csv").write_text('prompt,other\n"a, b",1\n"two\nlines",2\n')
    assert read_prompts(str(tmp_path / "p.csv")) == ["a, b", "two\nlines"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "x \\"y\\""}\n')
    assert read_prompts(str(tmp_path / "p.jsonl")) == ['x "y"']
    (tmp_path / "q.csv").write_text("text\nhello\n")
    with pytest.raises(ManifestError, match="no 'prompt' column"):
        read_prompts(str(tmp_path / "q.csv"))
    (tmp_path / "r.csv").write_text('prompt\nok\n""\n')
    with pytest.raises(ManifestError, match="column 'prompt', row 1: empty prompt"):
        read_prompts(str(tmp_path / "r.csv"))


def test_build_manifest_end_to_end_with_odd_names(tmp_path):
    manifest_images = sample_images(tmp_path)
    prompts = tmp_path / "prompts list.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "out dir" / "man.ifest ü.parquet"
    styles_dir = os.path.dirname(manifest_images["s1"])
    result = build_manifest([styles_dir], str(prompts), str(out), contents=[manifest_images["c1"]], repeats=2)
    assert (result.rows, result.styles, result.contents, result.prompts) == (12, 3, 1, 2)
    table = pq.read_table(out)
    assert table.column_names == ["style", "content", "prompt", "seed"]
    assert table.column("style").to_pylist()[::4] == [manifest_images[k] for k in ("s1", "s2", "s3")]
    assert set(table.column("content").to_pylist()) == {manifest_images["c1"]}
    assert sorted(os.listdir(out.parent)) == ["man.ifest ü.parquet"]  # no temp file left behind


def test_a_failing_build_leaves_no_output(tmp_path):
    def batches():
        yield next(iter_manifest_batches(STYLES, PROMPTS))
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_manifest(batches(), str(tmp_path / "out.parquet"))
    assert os.listdir(tmp_path) == []


def test_cross_product_index_arithmetic_at_scale():
    """A bigger cross product in small batches still equals the product, without any row list."""
    styles = [f"/s/{i}.png" for i in range(37)]
    prompts = [f"prompt {i}" for i in range(41)]
    table = pa.Table.from_batches(list(iter_manifest_batches(styles, prompts, batch_rows=100)))
    expected_styles = np.repeat(np.arange(37), 41)
    expected_prompts = np.tile(np.arange(41), 37)
    assert table.column("style").to_pylist() == [styles[i] for i in expected_styles]
    assert table.column("prompt").to_pylist() == [prompts[i] for i in expected_prompts]


def test_build_lists_s3_prefixes_and_writes_to_s3(s3_bucket, tmp_path):
    for key in ["styles/b.png", "styles/a dir/ü.jpg", "styles/readme.txt"]:
        s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=png_bytes())
    found = collect_images([s3_bucket.uri("styles/")])
    assert found.uris == [s3_bucket.uri("styles/a dir/ü.jpg"), s3_bucket.uri("styles/b.png")]
    assert found.ignored == [s3_bucket.uri("styles/readme.txt")]
    with pytest.raises(ManifestError, match="no image objects under this prefix"):
        collect_images([s3_bucket.uri("nothing/")])
    (tmp_path / "p.txt").write_text("a cat\n")
    result = build_manifest(
        [s3_bucket.uri("styles")], str(tmp_path / "p.txt"), s3_bucket.uri("m/man ifest.parquet")
    )
    assert result.rows == 2 and "m/man ifest.parquet" in s3_bucket.object_keys("m/")


def test_a_failing_build_leaves_no_s3_object(s3_bucket):
    def batches():
        yield next(iter_manifest_batches(STYLES, PROMPTS))
        raise RuntimeError("input gone")

    with pytest.raises(RuntimeError, match="input gone"):
        write_manifest(batches(), s3_bucket.uri("m/out.parquet"))
    assert s3_bucket.object_keys() == []  # no truncated (footer-closed) manifest under the name
