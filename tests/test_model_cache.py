"""Weights from object storage: `stylegen models stage` puts the tiny preset on S3 (moto, and SeaweedFS in
the slow set), nodes copy it once into their model cache (one download per node, however many actors),
a damaged copy is fetched again, a missing object is one clear error, and the staged preset generates and
scores exactly like the local one."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from cache_actor import copy_like_an_actor, count_gets
from test_presets import assert_identical_outputs
from test_rbmod_soc import pattern_image

from pipeline.models.cache import ModelCacheError, local_copy
from pipeline.models.loading import load_preset
from pipeline.models.presets import PresetError
from pipeline.models.stage import StageError, hub_patterns, resolve_sources, stage
from pipeline.run.preflight import check_staged_models
from pipeline.run_config import ConfigError, RunConfig

pytest_plugins = ["rbmod_fixtures", "s3_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(params=["moto", pytest.param("seaweedfs", marks=pytest.mark.slow)])
def bucket(request):
    """A fresh bucket on moto, and (slow set) on SeaweedFS, a real server that enforces auth."""
    return request.getfixturevalue("s3_bucket" if request.param == "moto" else "seaweedfs_bucket")


@pytest.fixture
def staged(bucket, tiny_cache_dir) -> dict[str, str]:
    """The tiny preset (and its scorers) staged under s3://<bucket>/models/: component -> URI."""
    sources = resolve_sources("tiny", {}, tiny_cache_dir)
    return stage(sources, bucket.uri("models/"), echo=lambda line: None).uris


def tiny_source(tiny_cache_dir: Path, component: str) -> Path:
    """The local folder (or file) of the tiny preset that was staged for `component`."""
    sources = resolve_sources("tiny", {}, tiny_cache_dir)
    return next(source.path for source in sources if source.component == component)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --- staging --------------------------------------------------------------------------------------


def test_stage_command_prints_a_config_whose_models_load_and_generate_like_the_local_ones(
    s3_bucket, tiny_cache_dir, tiny_models, tmp_path
):
    from typer.testing import CliRunner

    from pipeline.cli.app import app
    from pipeline.rbmod.generate import GenerationRequest, RBModGenerator, StyleRef
    from pipeline.worker.parts import build_parts

    command = ["models", "stage", "--preset", "tiny", "--to", s3_bucket.uri("models/")]
    command += ["--scorers", "clip", "dino", "aesthetic", "nsfw"]
    result = CliRunner().invoke(app, [*command, "--cache-dir", str(tiny_cache_dir)])
    assert result.exit_code == 0, result.output
    snippet = yaml.safe_load(result.stdout)
    models = s3_bucket.uri("models")
    assert snippet == {
        "preset": "tiny",
        "model_paths": {
            "prior": f"{models}/stable-cascade-prior/",
            "decoder": f"{models}/stable-cascade/",
            "csd": f"{models}/csd/csd.safetensors",
        },
        "scoring": {
            "options": {
                "clip_model": f"{models}/clip/",
                "dino_model": f"{models}/dino/",
                "aesthetic_model": f"{models}/aesthetic/",
                "nsfw_model": f"{models}/nsfw/",
            }
        },
    }
    # the folders mirror the local ones exactly, every object carries its sha256
    prior_keys = s3_bucket.object_keys("models/stable-cascade-prior/")
    prior_folder = tiny_source(tiny_cache_dir, "prior")
    assert [k.removeprefix("models/stable-cascade-prior/") for k in prior_keys] == sorted(tree(prior_folder))
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=prior_keys[0])
    assert len(head["Metadata"]["sha256"]) == 64
    again = CliRunner().invoke(app, [*command, "--cache-dir", str(tiny_cache_dir)])
    assert again.exit_code == 0 and "0 files uploaded" in again.stderr  # staged once

    # a node: the run config from the printout, its own model cache; load, generate, score
    node_cache = tmp_path / "node-cache"
    scorers = ["clip", "dino", "csd", "leakage", "aesthetic", "nsfw"]
    staged_config = RunConfig.model_validate(
        {**snippet, "model_cache_dir": str(node_cache), "scoring": {**snippet["scoring"], "scorers": scorers}}
    )
    local_config = RunConfig(preset="tiny", model_cache_dir=str(tiny_cache_dir), scoring={"scorers": scorers})
    staged_parts = build_parts(staged_config, str(tmp_path / "out-a"), device="cpu")
    local_parts = build_parts(local_config, str(tmp_path / "out-b"), device="cpu")
    assert_identical_outputs(staged_parts.generator.models, tiny_models)
    assert_identical_outputs(staged_parts.generator.models, local_parts.generator.models)
    style = pattern_image(5)
    request = GenerationRequest(prompt="a lighthouse", styles=(StyleRef(style),), seed=11)
    image_a = RBModGenerator(staged_parts.generator.models).generate([request])[0].image
    image_b = RBModGenerator(local_parts.generator.models).generate([request])[0].image
    assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
    scores_a = staged_parts.scorer.score([image_a], [request.prompt], [style], [None])
    scores_b = local_parts.scorer.score([image_b], [request.prompt], [style], [None])
    assert scores_a == scores_b and set(scores_a) >= {
        "clip_t",
        "dino_style",
        "csd_style",
        "aesthetic",
        "nsfw",
    }
    # metadata names the S3 sources, never this node's cache
    info = staged_parts.model_info
    assert info["prior"] == snippet["model_paths"]["prior"]
    assert info["components"]["csd"]["source"] == snippet["model_paths"]["csd"]
    assert info["scoring"]["clip_model"] == snippet["scoring"]["options"]["clip_model"]
    assert "s3-models" not in yaml.safe_dump(info)  # no path of this node's copies


def test_without_hub_access_staging_says_what_to_do(tmp_path):
    from huggingface_hub import constants, try_to_load_from_cache

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py
    if isinstance(try_to_load_from_cache("stabilityai/stable-cascade-prior", "prior/config.json"), str):
        pytest.skip("the real prior is in this machine's hub cache")
    with pytest.raises(StageError) as error:
        resolve_sources("stable-cascade", {}, scorers=())
    message = str(error.value)
    assert message.startswith("prior: cannot download stabilityai/stable-cascade-prior from the hub")
    assert "HF_TOKEN" in message and "--from prior=LOCAL_DIR" in message
    with pytest.raises(StageError, match="decoder: .*nowhere does not exist"):
        resolve_sources("tiny", {"decoder": str(tmp_path / "nowhere")}, tmp_path)
    with pytest.raises(StageError, match="--from vae=...: unknown component"):
        resolve_sources("tiny", {"vae": str(tmp_path)}, tmp_path)
    with pytest.raises(StageError, match="--scorers clipp: unknown scorer model"):
        resolve_sources("tiny", {}, tmp_path, scorers=("clipp",))


def test_a_local_folder_without_the_hub_layout_is_refused_before_any_upload(tiny_cache_dir, tmp_path):
    broken = tmp_path / "prior"
    broken.mkdir()
    (broken / "README.md").write_text("not a model")
    with pytest.raises(StageError, match=r"prior: prior/config.json missing in .*prior \(a prior folder"):
        resolve_sources("tiny", {"prior": str(broken)}, tiny_cache_dir)
    no_weights = tmp_path / "decoder"
    shutil.copytree(tiny_source(tiny_cache_dir, "decoder"), no_weights)
    for weights in (no_weights / "decoder").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(StageError, match=f"decoder: no .safetensors weights in decoder/ of {no_weights}"):
        resolve_sources("tiny", {"decoder": str(no_weights)}, tiny_cache_dir)
    # the text encoder's weights and the tokenizer are checked too (the loader reads them on the node)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_source(tiny_cache_dir, "decoder"), partial)
    (partial / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(StageError, match=f"decoder: no .safetensors weights in text_encoder/ of {partial}"):
        resolve_sources("tiny", {"decoder": str(partial)}, tiny_cache_dir)
    shutil.copytree(tiny_source(tiny_cache_dir, "decoder"), partial, dirs_exist_ok=True)
    (partial / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(StageError, match=f"decoder: tokenizer/ of {partial} has neither tokenizer.json nor"):
        resolve_sources("tiny", {"decoder": str(partial)}, tiny_cache_dir)
    empty = tmp_path / "clip"
    empty.mkdir()
    with pytest.raises(
        StageError, match=r"clip: config.json, \*.safetensors weights, tokenizer.json .*missing in"
    ):
        resolve_sources("tiny", {"clip": str(empty)}, tiny_cache_dir, scorers=("clip",))


def test_an_object_not_staged_by_stylegen_is_never_overwritten(s3_bucket, tiny_cache_dir):
    sources = resolve_sources("tiny", {}, tiny_cache_dir, scorers=())
    foreign = "models/stable-cascade/decoder/config.json"  # a name staging writes, someone else's object
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=foreign, Body=b"mine")
    with pytest.raises(StageError, match=r"decoder/config.json exists but was not staged by stylegen"):
        stage(sources, s3_bucket.uri("models/"), echo=lambda line: None)
    assert s3_bucket.object_keys("models/") == [foreign] and s3_bucket.read(foreign) == b"mine"
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key=foreign)
    stage(sources, s3_bucket.uri("models/"), echo=lambda line: None)
    # a staged object with other bytes (the source changed since): replaced, and said so
    s3_bucket.client.put_object(
        Bucket=s3_bucket.name, Key=foreign, Body=b"old", Metadata={"sha256": "0" * 64}
    )
    lines = []
    again = stage(sources, s3_bucket.uri("models/"), echo=lines.append)
    size = len(s3_bucket.read(foreign)) / 1e6
    assert again.uploaded == 1
    assert lines == [f"uploading {s3_bucket.uri(foreign)} ({size:.1f} MB) (replaces an earlier staging)"]


def test_hub_patterns_pick_the_files_the_loader_reads():
    from fnmatch import fnmatch

    def staged(component, name):
        allow, ignore = hub_patterns(component)
        return any(fnmatch(name, p) for p in allow) and not any(fnmatch(name, p) for p in ignore)

    assert staged("prior", "prior/diffusion_pytorch_model.bf16.safetensors")
    assert staged("prior", "prior/config.json") and staged("prior", "text_encoder/model.safetensors")
    assert not staged("prior", "prior/diffusion_pytorch_model.safetensors")  # fp32 twin: not read
    assert not staged("prior", "prior_lite/config.json") and not staged(
        "prior", "text_encoder/model.bf16.safetensors"
    )
    assert staged("decoder", "effnet_encoder.safetensors") and staged("decoder", "vqgan/config.json")
    assert not staged("decoder", "stage_c.safetensors") and not staged("decoder", "decoder_lite/config.json")
    assert staged("clip", "model.safetensors") and not staged("clip", "pytorch_model.bin")
    assert staged("aesthetic", "aesthetic-model.pth") and not staged("aesthetic", "README.md")


# --- the node's model cache -----------------------------------------------------------------------


def test_two_actor_processes_on_one_node_download_once(bucket, staged, tiny_cache_dir, tmp_path):
    context = multiprocessing.get_context("spawn")  # like Ray's worker processes: nothing inherited
    barrier, results = context.Barrier(2), context.Queue()
    cache = tmp_path / "node-cache"
    workers = [
        context.Process(target=copy_like_an_actor, args=(staged["prior"], str(cache), barrier, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    objects = bucket.object_keys("models/stable-cascade-prior/")
    assert sorted(gets for _, gets in reports) == [0, len(objects)]  # one download, by one of them
    (path, _), (other, _) = reports
    assert path == other
    assert tree(Path(path)) == tree(tiny_source(tiny_cache_dir, "prior"))


def test_a_damaged_copy_is_fetched_again_and_an_intact_one_is_not(bucket, staged, tmp_path):
    cache = tmp_path / "node-cache"
    folder = local_copy(staged["decoder"], cache)
    original = tree(folder)
    gets = count_gets()
    assert local_copy(staged["decoder"], cache) == folder and gets == []  # intact: one LIST, no GET

    weights = folder / "decoder" / "diffusion_pytorch_model.safetensors"
    with open(weights, "r+b") as file:  # truncated, as by a killed copy or a full disk
        file.truncate(weights.stat().st_size // 2)
    previewer = folder / "previewer.safetensors"
    data = bytearray(previewer.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes (the mtime tells)
    previewer.write_bytes(bytes(data))
    (folder / "vqgan" / "config.json").unlink()
    (folder / "stray.bin").write_bytes(b"not staged")
    local_copy(staged["decoder"], cache)
    prefix = "models/stable-cascade/"
    assert sorted(gets) == sorted(
        prefix + rel
        for rel in (
            "decoder/diffusion_pytorch_model.safetensors",
            "previewer.safetensors",
            "vqgan/config.json",
        )
    )
    assert tree(folder) == original

    # damaged in place with its size and mtime kept: the changed ctime has its bytes checked
    gets.clear()
    data = bytearray(previewer.read_bytes())
    data[200] ^= 0xFF
    kept = previewer.stat()
    previewer.write_bytes(bytes(data))
    os.utime(previewer, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert previewer.stat().st_size == kept.st_size and previewer.stat().st_mtime_ns == kept.st_mtime_ns
    local_copy(staged["decoder"], cache)
    assert gets == [prefix + "previewer.safetensors"] and tree(folder) == original
    # a ctime change alone (chmod, or a record written before ctimes were kept): hashed, not fetched
    gets.clear()
    os.chmod(weights, 0o644)
    record_path = folder.parent.parent / f"{folder.parent.name}.json"
    record = json.loads(record_path.read_text())
    record[prefix.split("/")[1] + "/vqgan/config.json"].pop("ctime_ns")
    record_path.write_text(json.dumps(record))
    local_copy(staged["decoder"], cache)
    assert gets == [] and tree(folder) == original
    assert all("ctime_ns" in entry for entry in json.loads(record_path.read_text()).values())

    # a re-staged object (new bytes under the same key) replaces the cached copy
    gets.clear()
    bucket.client.put_object(Bucket=bucket.name, Key=prefix + "tokenizer/vocab.json", Body=b"{}")
    assert local_copy(staged["decoder"], cache) == folder
    assert (
        gets == [prefix + "tokenizer/vocab.json"]
        and (folder / "tokenizer" / "vocab.json").read_bytes() == b"{}"
    )


def test_a_download_that_does_not_match_the_staged_sha256_is_refused(bucket, staged, tmp_path):
    key = "models/stable-cascade/previewer.safetensors"
    body = bucket.read(key)
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=body, Metadata={"sha256": "0" * 64})
    cache = tmp_path / "node-cache"
    with pytest.raises(ModelCacheError, match=f"{key}: the downloaded copy has sha256 .*, expected 0000"):
        local_copy(staged["decoder"], cache)
    assert list(cache.rglob("previewer.safetensors")) == []  # never moved into place


def test_missing_staged_objects_are_one_clear_error_naming_them(bucket, staged, tmp_path):
    cache = tmp_path / "node-cache"
    nowhere = bucket.uri("models/no-such-prior/")
    paths = {"prior": nowhere, "decoder": staged["decoder"], "csd": staged["csd"]}
    with pytest.raises(PresetError) as error:
        load_preset("stable-cascade", device="cpu", paths=paths, cache_dir=cache)
    assert str(error.value).startswith(f"prior: nothing staged at {nowhere}: no object")
    with pytest.raises(ConfigError, match=f"^model_paths.prior: nothing staged at {nowhere}"):
        check_staged_models(RunConfig(preset="tiny", model_paths={"prior": nowhere}))  # before a run starts
    check_staged_models(RunConfig(preset="tiny", model_paths={"prior": staged["prior"]}))

    bucket.client.delete_object(Bucket=bucket.name, Key="models/stable-cascade/effnet_encoder.safetensors")
    paths = {"prior": staged["prior"], "decoder": staged["decoder"], "csd": staged["csd"]}
    expected = f"effnet: {staged['decoder']}effnet_encoder.safetensors not found"
    with pytest.raises(PresetError, match=expected):
        load_preset("stable-cascade", device="cpu", paths=paths, cache_dir=cache)

    missing_csd = bucket.uri("models/csd/nope.pth")
    with pytest.raises(PresetError, match=f"csd: nothing staged at {missing_csd}"):
        load_preset("tiny", device="cpu", paths={"csd": missing_csd}, cache_dir=cache)


def test_a_staged_csd_file_is_copied_as_a_file(bucket, staged, tiny_cache_dir, tmp_path):
    copy = local_copy(staged["csd"], tmp_path / "node-cache")
    assert copy.is_file() and copy.name == "csd.safetensors"
    assert copy.read_bytes() == tiny_source(tiny_cache_dir, "csd").read_bytes()


def test_an_unusable_cache_folder_is_one_error_naming_the_model(staged, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.raises(ModelCacheError, match=f"^copying {staged['csd']} into the model cache failed: "):
        local_copy(staged["csd"], not_a_folder)


@pytest.mark.slow
def test_a_ray_run_with_staged_weights_writes_the_images_of_a_local_run(s3_bucket, tiny_cache_dir, tmp_path):
    """Through the driver and two Ray actor processes on one node: the driver's check, each actor's copy
    from S3 (the env points at moto before Ray starts), the images and captions of the local preset."""
    from run_fixtures import build_manifest, own_ray, reference_tars, tar_members

    from pipeline.run.job import run_job

    sources = resolve_sources("tiny", {}, tiny_cache_dir)
    uris = stage(sources, s3_bucket.uri("models/"), echo=lambda _: None).uris
    node_cache = tmp_path / "node-cache"
    shutil.copytree(tiny_cache_dir, node_cache)  # the tiny geometry and scorers, without rebuilding them
    manifest = build_manifest(tmp_path / "inputs", rows=2, styles=2, composition_every=0)
    # one torch thread in the actors, as in this process (torch_single_thread): CPU results depend on it
    common = {
        "preset": "tiny",
        "shard_size": 1,
        "rbmod": {"soc_iterations": 1},
        "execution": {"torch_threads": 1},
    }
    staged_paths = {key: uris[key] for key in ("prior", "decoder", "csd")}
    scoring = {"options": {"clip_model": uris["clip"], "dino_model": uris["dino"]}}
    staged = RunConfig.model_validate(
        {**common, "model_paths": staged_paths, "scoring": scoring, "model_cache_dir": str(node_cache)}
    )
    with own_ray():
        summary = run_job(str(manifest), str(tmp_path / "staged"), staged, actors=2, live=False)
    assert (summary.shards_committed, summary.kept) == (2, 2)

    def images_and_captions(tars: list[Path]) -> dict[str, bytes]:  # the .json members name the sources
        return {k: v for tar in tars for k, v in tar_members(tar).items() if not k.endswith(".json")}

    local = RunConfig.model_validate({**common, "model_cache_dir": str(tiny_cache_dir)})
    reference = []
    for name, data in reference_tars(
        tmp_path, manifest, local, shards=2
    ).items():  # in-process, local weights
        reference.append(tmp_path / f"reference-{name}")
        reference[-1].write_bytes(data)
    staged_members = images_and_captions(sorted((tmp_path / "staged" / "shards").glob("*.tar")))
    assert len(staged_members) == 2 * 2  # an image and a caption per row
    assert staged_members == images_and_captions(reference)
    copies = sorted(p.name.rsplit("-", 1)[0] for p in (node_cache / "s3-models").glob("*.json"))
    assert copies == sorted(["stable-cascade-prior", "stable-cascade", "csd.safetensors", "clip", "dino"])
