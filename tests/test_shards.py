"""Shard files: deterministic image encoding, byte-identical tars, canonical sample JSON, the shard
table, uid-only keys, and reading shards back with webdataset and Ray Data."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import struct
import tarfile
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.shards import (
    ShardRow,
    ShardSample,
    TarStats,
    encode_image,
    normalize_image_format,
    sample_json,
    validate_uid,
    write_shard_table,
    write_tar,
)


def uid_of(index: int) -> str:
    return hashlib.sha256(f"row-{index}".encode()).hexdigest()[:32]


def noise_image(seed: int, size: int = 24, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def make_samples(count: int, ext: str = "png") -> list[ShardSample]:
    samples = []
    for index in range(count):
        meta = {
            "id": f"user-{index}",
            "prompt": f"a cat number {index} in ukiyo-e style ü",
            "style": f"s3://bucket/styles/{index % 3}.png",
            "seed": 1000 + index,
            "scores": {"clip_t": 0.25 + index / 100, "dino": None},
        }
        samples.append(ShardSample(uid_of(index), encode_image(noise_image(index), ext), ext, meta))
    return samples


def png_chunk_types(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        types.append(data[offset + 4 : offset + 8].decode("ascii"))
        offset += 12 + length
    return types


# --- images ---------------------------------------------------------------------------------------


def test_png_is_deterministic_lossless_and_metadata_free():
    image = noise_image(1)
    image.info.update({"icc_profile": b"fake-profile", "dpi": (300, 300), "comment": "from a camera"})
    first, second = encode_image(image, "png"), encode_image(image.copy(), "PNG")
    assert first == second
    assert set(png_chunk_types(first)) == {"IHDR", "IDAT", "IEND"}  # no tIME, tEXt, iCCP, pHYs
    decoded = Image.open(io.BytesIO(first))
    assert np.array_equal(np.asarray(decoded), np.asarray(noise_image(1)))


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "webp"])
def test_lossy_formats_repeat_exactly_and_fix_the_mode(fmt):
    image = noise_image(2, mode="RGBA")
    first, second = encode_image(image, fmt, quality=80), encode_image(image, fmt, quality=80)
    assert first == second
    assert first != encode_image(image, fmt, quality=30)  # quality is honoured
    decoded = Image.open(io.BytesIO(first))
    assert decoded.format == {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert decoded.size == (24, 24)
    assert decoded.mode == ("RGB" if fmt in ("jpg", "jpeg") else "RGBA")
    assert "exif" not in decoded.info and "icc_profile" not in decoded.info


def test_bad_image_options_are_named():
    with pytest.raises(ValueError, match="unsupported image format 'gif'"):
        encode_image(noise_image(0), "gif")
    with pytest.raises(ValueError, match="quality must be within 1..100, got 0"):
        encode_image(noise_image(0), "jpg", quality=0)
    assert normalize_image_format("JPEG") == "jpg"


# --- tar --------------------------------------------------------------------------------------------


def test_same_samples_in_any_order_give_a_byte_identical_tar(tmp_path):
    samples = make_samples(12)
    shuffled = samples[:]
    random.Random(7).shuffle(shuffled)
    # Fresh objects with equal content (re-encoded images) must give the same bytes too.
    rebuilt = make_samples(12)[::-1]
    stats = [write_tar(order, tmp_path / f"{n}.tar") for n, order in enumerate([samples, shuffled, rebuilt])]
    contents = [(tmp_path / f"{n}.tar").read_bytes() for n in range(3)]
    assert contents[0] == contents[1] == contents[2]
    assert stats[0] == stats[1] == stats[2]
    assert stats[0] == TarStats(len(contents[0]), hashlib.sha256(contents[0]).hexdigest(), 12)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_tar_members_are_sorted_grouped_and_have_fixed_headers(tmp_path):
    samples = make_samples(6, ext="webp")
    write_tar(samples, tmp_path / "shard.tar")
    with tarfile.open(tmp_path / "shard.tar") as tar:
        members = tar.getmembers()
    names = [member.name for member in members]
    expected = [f"{uid}.{ext}" for uid in sorted(s.uid for s in samples) for ext in ("json", "webp")]
    assert names == expected == sorted(names)
    for member in members:
        assert member.isfile()
        assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o444)
        assert (member.uname, member.gname) == ("stylegen", "stylegen")
        assert member.pax_headers == {}


def test_sample_json_is_canonical_and_carries_the_metadata(tmp_path):
    meta = {"b": [1, 2.5], "a": {"z": None, "y": "é"}, "score": np.float32(0.5), "seed": np.int64(3)}
    sample = ShardSample(uid_of(0), encode_image(noise_image(0)), "png", meta)
    write_tar([sample], tmp_path / "one.tar")
    with tarfile.open(tmp_path / "one.tar") as tar:
        stored = tar.extractfile(f"{uid_of(0)}.json").read()
    plain = {"b": [1, 2.5], "a": {"z": None, "y": "é"}, "score": 0.5, "seed": 3, "uid": uid_of(0)}
    assert stored == json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert sample_json({"uid": uid_of(0), **meta}) == stored


def test_non_json_metadata_fails_naming_the_sample(tmp_path):
    sample = ShardSample(uid_of(3), encode_image(noise_image(3)), "png", {"score": float("nan")})
    with pytest.raises(ValueError, match=f"sample {uid_of(3)}: metadata is not JSON-serializable"):
        write_tar([sample], tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists()
    assert not list(tmp_path.iterdir())  # the temp file is gone as well


@pytest.mark.parametrize(
    "uid", ["../../etc/passwd", "abc.def0123", "ABCDEF0123", "0123", "a" * 129, "user-42", "", None, 12345678]
)
def test_only_hex_uids_can_be_keys(uid):
    with pytest.raises(ValueError, match=re.escape(f"invalid sample uid {uid!r}")):
        ShardSample(uid, b"png", "png", {})
    with pytest.raises(ValueError, match=re.escape(f"invalid sample uid {uid!r}")):
        ShardRow(uid, "kept")
    with pytest.raises(ValueError):
        validate_uid(uid)


def test_manifest_ids_and_paths_stay_inside_the_json(tmp_path):
    hostile = {"id": "../../../../tmp/escape", "style": "/etc/passwd", "prompt": "a/b\\c..d"}
    samples = [ShardSample(uid_of(n), encode_image(noise_image(n)), "png", hostile) for n in range(3)]
    write_tar(samples, tmp_path / "shard.tar")
    with tarfile.open(tmp_path / "shard.tar") as tar:
        names = tar.getnames()
        assert all(re.fullmatch(r"[0-9a-f]{32}\.(json|png)", name) for name in names)
        stored = json.loads(tar.extractfile(names[0]).read())
    assert stored["id"] == hostile["id"] and stored["style"] == hostile["style"]


def test_sample_validation_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match=f"sample {uid_of(0)}: image extension 'gif'"):
        ShardSample(uid_of(0), b"x", "gif")
    with pytest.raises(ValueError, match=f"sample {uid_of(0)}: image must be non-empty"):
        ShardSample(uid_of(0), b"", "png")
    with pytest.raises(ValueError, match=f"sample {uid_of(0)}: meta\\['uid'\\]"):
        ShardSample(uid_of(0), b"x", "png", {"uid": uid_of(1)})
    twice = make_samples(2) + make_samples(1)
    with pytest.raises(ValueError, match=f"sample uid {uid_of(0)} appears twice"):
        write_tar(twice, tmp_path / "dup.tar")


def test_webdataset_reads_every_uid_exactly_once(tmp_path):
    import webdataset as wds

    samples = make_samples(9)
    write_tar(samples[:5], tmp_path / "shard-000000.tar")
    write_tar(samples[5:], tmp_path / "shard-000001.tar")
    empty = write_tar([], tmp_path / "shard-000002.tar")  # an all-failed shard: a valid, empty tar
    assert empty.count == 0
    urls = str(tmp_path / "shard-{000000..000002}.tar")
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    seen = Counter()
    by_uid = {sample.uid: sample for sample in samples}
    for record in dataset:
        uid = record["__key__"]
        seen[uid] += 1
        assert record["png"] == by_uid[uid].image
        assert json.loads(record["json"]) == {**by_uid[uid].meta, "uid": uid}
    assert seen == Counter({sample.uid: 1 for sample in samples})


@pytest.mark.slow
def test_ray_data_reads_every_uid_exactly_once(ray_cluster, tmp_path):
    ray = ray_cluster
    samples = make_samples(10)
    write_tar(samples[:4], tmp_path / "shard-000000.tar")
    write_tar(samples[4:], tmp_path / "shard-000001.tar")
    dataset = ray.data.read_webdataset(
        [str(tmp_path / "shard-000000.tar"), str(tmp_path / "shard-000001.tar")], decoder=None
    )
    records = dataset.take_all()
    assert Counter(record["__key__"] for record in records) == Counter(s.uid for s in samples)
    by_uid = {sample.uid: sample for sample in samples}
    for record in records:
        assert record["png"] == by_uid[record["__key__"]].image


# --- shard table ------------------------------------------------------------------------------------


def make_rows() -> list[ShardRow]:
    rows = [
        ShardRow(
            uid_of(n),
            "kept",
            scores={"clip_t": 0.3 + n / 10, "dino": 0.5},
            timings={"generate": 1.5, "score": 0.25},
            meta={"prompt": f"p{n}", "id": f"user-{n}", "sampler": {"steps": 4, "cfg": 5.0}, "seed": n},
        )
        for n in range(4)
    ]
    rows.append(
        ShardRow(
            uid_of(4),
            "rejected",
            "clip_t >= 0.25 (value 0.18)",
            scores={"clip_t": 0.18},
            meta={"prompt": "p4"},
        )
    )
    rows.append(
        ShardRow(uid_of(5), "failed", "FileNotFoundError: style.png", meta={"prompt": "p5", "seed": 9})
    )
    return rows


def test_shard_table_has_one_typed_row_per_planned_row(tmp_path):
    rows = make_rows()
    stats = write_shard_table(rows, tmp_path / "shard.parquet", shard_id=7)
    assert stats == (6, 4, 1, 1) and stats.counts() == {"rows": 6, "kept": 4, "rejected": 1, "failed": 1}
    table = pq.read_table(tmp_path / "shard.parquet")
    assert table.column_names[:4] == ["uid", "shard_id", "status", "reason"]
    assert table.column("uid").to_pylist() == sorted(row.uid for row in rows)
    assert set(table.column("shard_id").to_pylist()) == {7}
    for name in ("score_clip_t", "score_dino", "time_generate", "time_score"):
        assert table.schema.field(name).type == pa.float64()
    by_uid = {record["uid"]: record for record in table.to_pylist()}
    for row in rows:
        record = by_uid[row.uid]
        assert (record["status"], record["reason"]) == (row.status, row.reason)
        assert record["score_clip_t"] == row.scores.get("clip_t")
        assert record["score_dino"] == row.scores.get("dino")  # None when absent
        assert record["time_generate"] == row.timings.get("generate")
        assert record["prompt"] == row.meta["prompt"] and record["seed"] == row.meta.get("seed")
        sampler = row.meta.get("sampler")
        assert record["sampler"] == (None if sampler is None else sample_json(sampler).decode())


def test_shard_table_bytes_do_not_depend_on_row_order(tmp_path):
    rows = make_rows()
    write_shard_table(rows, tmp_path / "a.parquet", 1)
    write_shard_table(list(reversed(rows)), tmp_path / "b.parquet", 1)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_shard_table_errors_name_the_row_or_column(tmp_path):
    with pytest.raises(ValueError, match=f"row {uid_of(1)}: status 'done' is not one of"):
        ShardRow(uid_of(1), "done")
    with pytest.raises(ValueError, match=f"row {uid_of(1)}: a failed row needs a reason"):
        ShardRow(uid_of(1), "failed")
    bad_score = [ShardRow(uid_of(2), "kept", scores={"clip_t": "high"})]
    with pytest.raises(ValueError, match=f"row {uid_of(2)}: score 'clip_t' is not a number: 'high'"):
        write_shard_table(bad_score, tmp_path / "x.parquet", 3)
    mixed = [
        ShardRow(uid_of(3), "kept", meta={"extra_size": 3}),
        ShardRow(uid_of(4), "kept", meta={"extra_size": "L"}),
    ]
    with pytest.raises(ValueError, match="shard 3: metadata column 'extra_size' cannot be stored"):
        write_shard_table(mixed, tmp_path / "x.parquet", 3)
    clash = [ShardRow(uid_of(5), "kept", meta={"status": "mine"})]
    with pytest.raises(ValueError, match=r"shard 3: metadata keys \['status'\] clash"):
        write_shard_table(clash, tmp_path / "x.parquet", 3)
    twice = [ShardRow(uid_of(6), "kept"), ShardRow(uid_of(6), "kept")]
    with pytest.raises(ValueError, match=f"shard 3: row uid {uid_of(6)} appears twice"):
        write_shard_table(twice, tmp_path / "x.parquet", 3)
    assert not list(tmp_path.iterdir())


def test_meta_schema_keeps_column_types_stable_across_shards(tmp_path):
    schema = pa.schema([("extra_size", pa.int32()), ("extra_note", pa.string())])
    write_shard_table(
        [ShardRow(uid_of(0), "kept", meta={"extra_size": None, "extra_note": None})],
        tmp_path / "a.parquet",
        0,
        schema=schema,
    )
    write_shard_table(
        [ShardRow(uid_of(1), "kept", meta={"extra_size": 4, "extra_note": "x"})],
        tmp_path / "b.parquet",
        1,
        schema=schema,
    )
    a, b = pq.read_schema(tmp_path / "a.parquet"), pq.read_schema(tmp_path / "b.parquet")
    assert a.field("extra_size").type == b.field("extra_size").type == pa.int32()
    combined = pa.concat_tables(
        [pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")]
    )
    assert combined.column("extra_size").to_pylist() == [None, 4]


def test_schema_gives_an_all_failed_shard_the_same_columns_as_a_scored_one(tmp_path):
    schema = pa.schema(
        [("score_clip_t", pa.float64()), ("time_generate_s", pa.float64()), ("content", pa.string())]
    )
    scored = ShardRow(uid_of(0), "kept", scores={"clip_t": 0.3}, timings={"generate_s": 1.5}, meta={})
    failed = ShardRow(uid_of(1), "failed", reason="OSError: missing style")
    write_shard_table([scored], tmp_path / "a.parquet", 0, schema=schema)
    write_shard_table([failed], tmp_path / "b.parquet", 1, schema=schema)
    a, b = pq.read_schema(tmp_path / "a.parquet"), pq.read_schema(tmp_path / "b.parquet")
    assert a == b and a.names == [
        "uid",
        "shard_id",
        "status",
        "reason",
        "score_clip_t",
        "time_generate_s",
        "content",
    ]
    both = pq.ParquetDataset(tmp_path).read()  # a reader over the folder sees one schema
    assert both.column("score_clip_t").to_pylist() == [0.3, None]
    assert both.column("content").to_pylist() == [None, None]


def test_the_tar_is_byte_for_byte_what_webdatasets_tar_writer_writes(tmp_path):
    """write_tar uses a plain tarfile stream (no torch import); the bytes are TarWriter's, same settings."""
    from webdataset import TarWriter

    from pipeline.shards.tar import _TAR_MODE, _TAR_OWNER, TAR_MTIME

    samples = [
        ShardSample(uid_of(n), bytes([n + 1]) * (700 * n + 1), ext, {"n": n}, caption)
        for n, (ext, caption) in enumerate([("png", "a boat"), ("jpg", None), ("webp", "ünïcødé 出力 " * 90)])
    ]
    write_tar(samples, tmp_path / "ours.tar")
    with open(tmp_path / "theirs.tar", "wb") as file:
        writer = TarWriter(
            file, encoder=False, mtime=TAR_MTIME, user=_TAR_OWNER, group=_TAR_OWNER, mode=_TAR_MODE
        )
        for sample in sorted(samples, key=lambda s: s.uid):
            members = {sample.ext: sample.image, "json": sample.json_bytes()}
            if sample.caption is not None:
                members["txt"] = sample.caption.encode("utf-8")
            writer.write({"__key__": sample.uid, **members})
        writer.close()
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "theirs.tar").read_bytes()
