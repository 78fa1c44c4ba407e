"""ShardWorker without Ray: inputs -> batches -> generate -> score -> filter -> files -> commit."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import (
    build_manifest,
    fake_config,
    make_image,
    shard_rows,
    tar_members,
    tar_samples,
)

from manifests.read import read_manifest
from manifests.uid import generation_seed
from pipeline.models.fake_generator import FakeGenerator
from pipeline.rbmod.requests import GenerationRequest, StyleRef
from pipeline.run.plan import plan_run, write_plan
from pipeline.run_config import RunConfig
from pipeline.shards.images import encode_image
from pipeline.storage import open_store
from pipeline.worker.inputs import InputLoader
from pipeline.worker.shard_files import commit_failed_shard, read_plan_shard
from pipeline.worker.shard_worker import ShardWorker

# The fake generator's model fingerprint: sha256 of its canonical description, 16 hex digits.
FAKE_MODEL = hashlib.sha256(b'{"generator":"fake","size":16}').hexdigest()[:16]

pytest_plugins = ["rbmod_fixtures"]  # tiny_cache_dir: the tiny models, built once per test session


def prepare(tmp_path: Path, manifest: Path, config, name: str = "out"):
    """An output folder holding the plan, as the driver leaves it before scheduling."""
    store = open_store(tmp_path / name)
    plan, _ = plan_run(str(manifest), config)
    write_plan(store, plan)
    return store, plan


def expected_png(row: dict, config) -> bytes:
    """The image the fake generator makes for a manifest row, computed without the worker."""
    style = StyleRef(_open(row["style"]), 1.0)
    content = _open(row["content"]) if row["content"] else None
    request = GenerationRequest(
        prompt=row["prompt"], styles=(style,), seed=generation_seed(row["uid"], row["seed"]), content=content
    )
    image = FakeGenerator(config.generator.fake).generate([request])[0].image
    return encode_image(image, "png")


def _open(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def test_worker_writes_every_planned_row_and_the_kept_images(tmp_path):
    manifest = build_manifest(tmp_path, rows=14)
    config = fake_config()
    store, plan = prepare(tmp_path, manifest, config)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        results = [worker.run_shard(shard, f"attempt{shard}") for shard in range(plan.num_shards)]
    finally:
        worker.close()

    assert [r.rows for r in results] == plan.shard_sizes == [6, 6, 2]
    assert all(r.committed and r.kept == r.rows for r in results)
    manifest_rows = {row["uid"]: row for row in read_manifest(str(manifest)).to_pylist()}
    rows = shard_rows(tmp_path / "out")
    assert sorted(row["uid"] for row in rows) == sorted(manifest_rows)
    for shard in range(plan.num_shards):
        samples = tar_samples(tmp_path / "out" / "shards" / f"shard-{shard:06d}.tar")
        members = tar_members(tmp_path / "out" / "shards" / f"shard-{shard:06d}.tar")
        planned = read_plan_shard(store, shard).column("uid").to_pylist()
        assert sorted(samples) == sorted(planned)
        for uid, sample in samples.items():
            row = manifest_rows[uid]
            assert members[f"{uid}.png"] == expected_png(row, config)
            meta = sample["json"]
            assert (meta["uid"], meta["prompt"], meta["style"], meta["content"]) == (
                uid,
                row["prompt"],
                row["style"],
                row["content"],
            )
            assert meta["id"] == row["id"] and meta["extra"] == {"batch_tag": row["batch_tag"]}
            assert meta["seed"] == generation_seed(uid, None) == meta["params"]["seed"]
            assert meta["status"] == "kept" and meta["shard_id"] == shard
            assert meta["model"] == FAKE_MODEL
            assert "models" not in meta and "versions" not in meta  # described once, in run.json
            assert sample["txt"] == row["prompt"]  # the default caption
            assert "timings" not in meta  # timings live in the parquet, so reruns give identical tars
    table = pq.read_table(tmp_path / "out" / "metadata" / "shard-000000.parquet")
    assert {"time_generate_s", "extra_batch_tag", "attempt_id", "params", "caption"} <= set(
        table.column_names
    )
    assert [r.models for r in results] == [{FAKE_MODEL: {"generator": "fake", "size": 16}}] * 3


def test_bad_inputs_and_bad_seeds_fail_only_their_rows(tmp_path):
    good = make_image(tmp_path / "good.png", (200, 10, 10))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cases = [  # prompt, style, content, seed
        ("fine one", str(good), None, 1),
        ("missing style", str(tmp_path / "nope.png"), None, 2),
        ("corrupt style", str(corrupt), None, 3),
        ("missing content", str(good), str(tmp_path / "gone.png"), 4),
        ("fine two", str(good), None, 5),
        ("negative seed", str(good), None, -7),
        ("no style", None, None, 8),
        ("web style", "http://example.com/style.png", None, 9),
    ]
    rows = dict(zip(("prompt", "style", "content", "seed"), map(list, zip(*cases, strict=True)), strict=True))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table(rows), manifest)
    config = fake_config(shard_size=10)
    store, _ = prepare(tmp_path, manifest, config)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        result = worker.run_shard(0, "a1")
    finally:
        worker.close()

    assert (result.kept, result.failed, result.committed) == (2, 6, True)
    by_prompt = {row["prompt"]: row for row in shard_rows(tmp_path / "out")}
    assert by_prompt["missing style"]["reason"] == f"input style: {tmp_path / 'nope.png'}: file not found"
    assert by_prompt["corrupt style"]["reason"].startswith(f"input style: {corrupt}: cannot decode image")
    assert by_prompt["missing content"]["reason"] == f"input content: {tmp_path / 'gone.png'}: file not found"
    assert "seed must be an integer" in by_prompt["negative seed"]["reason"]
    assert by_prompt["no style"]["reason"] == "input style: None: not an image URI"
    assert by_prompt["web style"]["reason"] == (
        "input style: http://example.com/style.png: unsupported URI scheme 'http' (use a path, file:// or s3://)"
    )
    assert {p for p, row in by_prompt.items() if row["status"] == "kept"} == {"fine one", "fine two"}
    kept_uids = {by_prompt[p]["uid"] for p in ("fine one", "fine two")}
    assert {
        name.split(".")[0] for name in tar_members(tmp_path / "out" / "shards" / "shard-000000.tar")
    } == kept_uids
    assert store.read_marker(0).summary == {"rows": 8, "kept": 2, "rejected": 0, "failed": 6}


def test_inputs_that_make_the_reader_raise_other_errors_fail_only_their_rows(tmp_path):
    # A NUL byte in a path (ValueError) and a bucket name boto3 refuses (ParamValidationError, raised
    # before any request) are not read errors the loader knows: they must still fail only their row.
    good = make_image(tmp_path / "good.png", (200, 10, 10))
    styles = [str(good), str(tmp_path / "nul\x00byte.png"), "s3://bad bucket!/style.png"]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["fine", "nul path", "bad bucket"], "style": styles}), manifest)
    config = fake_config(shard_size=10)
    store, _ = prepare(tmp_path, manifest, config)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        result = worker.run_shard(0, "a1")
    finally:
        worker.close()

    assert (result.kept, result.failed, result.committed) == (1, 2, True)
    by_prompt = {row["prompt"]: row for row in shard_rows(tmp_path / "out")}
    assert by_prompt["fine"]["status"] == "kept"
    assert by_prompt["nul path"]["reason"] == (
        f"input style: {styles[1]}: cannot read (ValueError: embedded null byte)"
    )
    assert by_prompt["bad bucket"]["reason"].startswith(
        f"input style: {styles[2]}: cannot read (ParamValidationError: "
    )


def test_a_raising_batch_is_retried_row_by_row_so_only_the_culprits_fail(tmp_path):
    manifest = build_manifest(tmp_path, rows=9)
    table = read_manifest(str(manifest)).to_pylist()
    bad_uid = table[1]["uid"]
    config = fake_config(
        shard_size=9,
        **{"generator.fake.fail_uids": [bad_uid], "generator.fake.fail_prompts": ["red boat"]},
    )
    store, _ = prepare(tmp_path, manifest, config)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        result = worker.run_shard(0, "a1")
        calls = worker.generator.calls
    finally:
        worker.close()

    rows = {row["uid"]: row for row in shard_rows(tmp_path / "out")}
    expected_failed = {bad_uid} | {r["uid"] for r in table if "red boat" in r["prompt"]}
    assert {uid for uid, row in rows.items() if row["status"] == "failed"} == expected_failed
    assert (
        rows[bad_uid]["reason"]
        == f"generation: InjectedFailure: fake generator: injected failure for uid {bad_uid}"
    )
    assert all(row["status"] == "kept" for uid, row in rows.items() if uid not in expected_failed)
    assert (result.kept, result.failed) == (9 - len(expected_failed), len(expected_failed))
    # 3 batches of 3; each batch holding a culprit is retried one row at a time (1 + 3 calls)
    failing_batches = len(
        {[r["uid"] for r in read_plan_shard(store, 0).to_pylist()].index(u) // 3 for u in expected_failed}
    )
    assert calls == 3 + 3 * failing_batches


def test_scores_and_filter_verdicts_match_an_independent_scorer(tmp_path, tiny_cache_dir):
    from pipeline.scoring.models import scoring_preset
    from pipeline.scoring.rules import FilterRules
    from pipeline.scoring.scorer import Scorer

    cache = tiny_cache_dir
    manifest = build_manifest(tmp_path, rows=8)
    rows = read_manifest(str(manifest)).to_pylist()
    config = fake_config(shard_size=8, **{"scoring.enabled": True, "model_cache_dir": str(cache)})
    # Score the fake images directly to pick a threshold that splits them.
    scorer = Scorer(scoring_preset("tiny", cache))
    images = [_open_png(expected_png(row, config)) for row in rows]
    styles = [_open(row["style"]) for row in rows]
    contents = [_open(row["content"]) if row["content"] else None for row in rows]
    scores = scorer.score(images, [row["prompt"] for row in rows], styles, contents)
    ordered = sorted(scores["clip_t"])
    threshold = (ordered[3] + ordered[4]) / 2  # midway: batch-size rounding cannot flip a verdict
    rule = f"clip_t >= {threshold!r}"
    config = fake_config(
        shard_size=8, **{"scoring.enabled": True, "scoring.filters": [rule], "model_cache_dir": str(cache)}
    )
    rules = FilterRules.parse([rule], set(scorer.names))

    store, _ = prepare(tmp_path, manifest, config)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        worker.run_shard(0, "a1")
    finally:
        worker.close()

    written = {row["uid"]: row for row in shard_rows(tmp_path / "out")}
    for index, row in enumerate(rows):
        got = written[row["uid"]]
        for name in scorer.names:
            want = scores[name][index]
            if want is None:
                assert got[f"score_{name}"] is None
            else:
                assert got[f"score_{name}"] == pytest.approx(want, abs=1e-6)
        verdict = rules.evaluate({name: scores[name][index] for name in scorer.names})
        assert got["status"] == verdict.status
        if verdict.status == "rejected":
            assert got["filter_rule"] == rule and got["reason"].startswith(rule)
    assert {r["status"] for r in written.values()} == {"kept", "rejected"}
    tar = tar_samples(tmp_path / "out" / "shards" / "shard-000000.tar")
    assert set(tar) == {uid for uid, r in written.items() if r["status"] == "kept"}
    assert all(set(s["json"]["scores"]) == set(scorer.names) for s in tar.values())


def _open_png(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def test_keep_rejected_writes_the_rejected_tar(tmp_path, tiny_cache_dir):
    manifest = build_manifest(tmp_path, rows=6)
    scoring = {
        "scoring.enabled": True,
        "scoring.filters": ["clip_t >= 2"],
        "model_cache_dir": str(tiny_cache_dir),
    }
    config = fake_config(keep_rejected=True, **scoring)
    store, _ = prepare(tmp_path, manifest, config)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        result = worker.run_shard(0, "a1")
    finally:
        worker.close()
    assert (result.kept, result.rejected) == (0, 6)
    rejected = tar_samples(tmp_path / "out" / "rejected" / "shard-000000.tar")
    assert len(rejected) == 6 and all(s["json"]["filter"]["rule"] == "clip_t >= 2" for s in rejected.values())
    assert tar_members(tmp_path / "out" / "shards" / "shard-000000.tar") == {}


def test_same_rows_give_byte_identical_tars_whatever_the_batch_size_or_attempt(tmp_path):
    manifest = build_manifest(tmp_path, rows=6)
    tars = []
    for name, batch in (("a", 1), ("b", 4)):
        config = fake_config(**{"execution.batch_size": batch})
        store, _ = prepare(tmp_path, manifest, config, name=name)
        worker = ShardWorker.from_config(config, store.uri)
        try:
            worker.run_shard(0, f"attempt-{name}")
        finally:
            worker.close()
        tars.append((tmp_path / name / "shards" / "shard-000000.tar").read_bytes())
    assert tars[0] == tars[1]


def test_inputs_are_decoded_once_per_process_and_prefetched_a_batch_ahead(tmp_path):
    manifest = build_manifest(tmp_path, rows=12, styles=2, composition_every=4)
    config = fake_config(shard_size=6)
    store, plan = prepare(tmp_path, manifest, config)
    events: list[str] = []

    class RecordingLoader(InputLoader):
        def prefetch(self, rows):
            events.append("prefetch")
            return super().prefetch(rows)

    class RecordingGenerator(FakeGenerator):
        def generate(self, requests):
            events.append("generate")
            return super().generate(requests)

    loader = RecordingLoader()
    worker = ShardWorker(RecordingGenerator(config.generator.fake), None, None, store, config, inputs=loader)
    try:
        for shard in range(plan.num_shards):
            worker.run_shard(shard, f"a{shard}")
    finally:
        worker.close()
    # 2 shards x 2 batches: the next batch's inputs are requested before the current batch generates
    assert events == ["prefetch", "prefetch", "generate", "generate"] * 2
    assert loader.reads == 3  # two styles and one content image, for 12 rows


def test_a_slow_store_makes_generation_wait_instead_of_queueing_shards(tmp_path):
    manifest = build_manifest(tmp_path, rows=8)
    config = fake_config(shard_size=2, **{"execution.upload_queue_shards": 1})
    store, _ = prepare(tmp_path, manifest, config)
    release = threading.Event()
    commit = store.commit_shard

    def blocked_commit(*args, **kwargs):
        release.wait(30)
        return commit(*args, **kwargs)

    store.commit_shard = blocked_commit
    generated: list[int] = []
    worker = ShardWorker(
        FakeGenerator(config.generator.fake),
        None,
        None,
        store,
        config,
        heartbeat=lambda attempt, shard, done: generated.append(shard) if done == 2 else None,
    )
    threads = [threading.Thread(target=worker.run_shard, args=(shard, f"a{shard}")) for shard in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    time.sleep(0.5)
    try:
        # one shard uploading, one queued, one generated and waiting for queue space; the fourth has
        # not been allowed to generate
        assert len(generated) == 3
        release.set()
        for thread in threads:
            thread.join(30)
        assert len(generated) == 4 and len(store.committed_shards()) == 4
    finally:
        release.set()
        worker.close()


def test_a_shard_that_failed_every_attempt_is_committed_with_every_row_failed(tmp_path):
    manifest = build_manifest(tmp_path, rows=8)
    config = fake_config()
    store, _ = prepare(tmp_path, manifest, config)
    errors = ["attempt 1: deadline of 30 s exceeded", "attempt 2: actor 0 died (killed)"]
    result = commit_failed_shard(store, config, 1, errors, "failed-x")
    assert result.won
    rows = pq.read_table(tmp_path / "out" / "metadata" / "shard-000001.parquet").to_pylist()
    assert sorted(r["uid"] for r in rows) == sorted(read_plan_shard(store, 1).column("uid").to_pylist())
    assert all(
        r["status"] == "failed" and r["reason"] == "shard failed every attempt: " + " | ".join(errors)
        for r in rows
    )
    assert store.read_marker(1).summary == {
        "rows": 2,
        "kept": 0,
        "rejected": 0,
        "failed": 2,
        "shard_failed": True,
    }
    assert tar_members(tmp_path / "out" / "shards" / "shard-000001.tar") == {}


@pytest.mark.slow
def test_the_tiny_rbmod_preset_runs_a_shard_with_full_metadata(tmp_path, tiny_cache_dir, torch_single_thread):
    from pipeline.models.loading import load_preset

    manifest = build_manifest(tmp_path, rows=3, composition_every=3)
    config = RunConfig.model_validate(
        {
            "preset": "tiny",
            "shard_size": 3,
            "model_cache_dir": str(tiny_cache_dir),
            "execution": {"batch_size": 2},
        }
    )
    store, _ = prepare(tmp_path, manifest, config)
    worker = ShardWorker.from_config(config, store.uri)
    try:
        result = worker.run_shard(0, "a1")
    finally:
        worker.close()

    assert (result.kept, result.failed) == (3, 0)
    preset = load_preset("tiny", cache_dir=tiny_cache_dir).config
    samples = tar_samples(tmp_path / "out" / "shards" / "shard-000000.tar")
    modes = sorted(sample["json"]["params"]["mode"] for sample in samples.values())
    assert modes == ["composition", "stylization", "stylization"]
    # The models are described once (for run.json), with the local cache folder reduced to its name.
    ((fingerprint, described),) = result.models.items()
    assert described["generator"] == "rbmod" and described["prior"] == "local:" + Path(preset.prior).name
    assert str(tiny_cache_dir) not in json.dumps(described)
    members = tar_members(tmp_path / "out" / "shards" / "shard-000000.tar")
    assert not [name for name, data in members.items() if str(tiny_cache_dir).encode() in data]
    for sample in samples.values():
        meta = sample["json"]
        assert sample["image"].size == (preset.image_size, preset.image_size)
        assert meta["params"]["seed"] == meta["seed"]
        assert meta["model"] == fingerprint and "models" not in meta
        assert set(meta["scores"]) == {"clip_t", "clip_content", "dino_style", "csd_style", "leakage"}
        assert (meta["scores"]["clip_content"] is None) == (meta["content"] is None)
