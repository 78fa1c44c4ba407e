"""The presets: the tiny build (seeded, atomic, hub layout), the one loader for both presets, clear errors."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest
import torch

from pipeline.models.loading import load_preset
from pipeline.models.presets import PresetError
from pipeline.models.tiny import build_tiny, ensure_tiny_cache, tiny_key
from pipeline.rbmod.effnet import save_effnet
from pipeline.rbmod.image_ops import imagenet_normalize
from pipeline.rbmod.previewer import save_previewer

pytest_plugins = ["rbmod_fixtures"]  # the session-wide tiny_models / tiny_cache_dir fixtures
pytestmark = pytest.mark.usefixtures("torch_single_thread")

HUB_LAYOUT = {
    "stable-cascade-prior": [
        "prior/config.json",
        "prior/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "image_encoder/config.json",
        "image_encoder/model.safetensors",
        "feature_extractor/preprocessor_config.json",
    ],
    "stable-cascade": [
        "decoder/config.json",
        "decoder/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer_config.json",
        "vqgan/config.json",
        "vqgan/diffusion_pytorch_model.safetensors",
        "effnet_encoder.safetensors",
        "previewer.safetensors",
    ],
}


def tiny_root(cache_dir: Path) -> Path:
    return cache_dir / f"tiny-{tiny_key()}"


def component_outputs(models) -> dict[str, torch.Tensor]:
    """One forward of every component on fixed inputs (for bit-identity checks)."""
    gen = torch.Generator().manual_seed(0)
    tokens = models.tokenizer(["a red horse", ""], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        text = models.text_encoder(
            tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        )
        image = models.image_encoder(
            pixel_values=torch.randn(2, 3, models.clip_image_size, models.clip_image_size, generator=gen)
        )
        latent = torch.randn(2, 16, 4, 4, generator=gen)
        prior = models.prior(
            sample=latent,
            timestep_ratio=torch.tensor([0.3, 0.7]),
            clip_text_pooled=text.text_embeds[:, None],
            clip_text=text.hidden_states[-1],
            clip_img=image.image_embeds[:, None],
            return_dict=False,
        )[0]
        decoder = models.decoder(
            sample=torch.randn(2, 4, 32, 32, generator=gen),
            timestep_ratio=torch.tensor([0.5, 0.5]),
            clip_text_pooled=text.text_embeds[:, None],
            effnet=latent,
            return_dict=False,
        )[0]
        reference = torch.rand(2, 3, 64, 64, generator=gen)  # fixed sizes: the configs' geometry may differ
        content, style = models.descriptor(torch.rand(2, 3, 32, 32, generator=gen))
        return {
            "text": text.hidden_states[-1],
            "pooled": text.text_embeds,
            "image": image.image_embeds,
            "prior": prior,
            "decoder": decoder,
            "vqgan": models.vqgan.decode(torch.randn(1, 4, 8, 8, generator=gen)).sample,
            "effnet": models.effnet(imagenet_normalize(reference)),
            "previewer": models.previewer(latent),
            "content": content,
            "style": style,
        }


def assert_identical_outputs(a, b) -> None:
    out_a, out_b = component_outputs(a), component_outputs(b)
    for name in out_a:
        assert torch.equal(out_a[name], out_b[name]), name


def test_tiny_preset_is_in_the_hub_layout_and_loads_as_the_contract_says(tiny_models, tiny_cache_dir):
    root = tiny_root(tiny_cache_dir)
    for repo, files in HUB_LAYOUT.items():
        for rel in files:
            assert (root / repo / rel).is_file(), f"{repo}/{rel}"
    m = tiny_models
    assert (
        m.preset == m.config.name == "tiny" and m.device == torch.device("cpu") and m.dtype == torch.float32
    )
    assert m.prior.config.in_channels == m.prior.config.out_channels == m.effnet.config.latent_channels == 16
    assert m.previewer.c_in == 16
    assert m.prior.config.clip_image_in_channels == m.image_encoder.config.projection_dim
    assert m.prior.config.clip_text_in_channels == m.text_encoder.config.hidden_size
    assert m.tokenizer.model_max_length == 77 and len(m.tokenizer) > 2
    assert m.descriptor.kind == m.config.descriptor == "csd"
    assert m.clip_image_size == m.image_encoder.config.image_size
    for name in (
        "prior",
        "text_encoder",
        "image_encoder",
        "effnet",
        "previewer",
        "descriptor",
        "decoder",
        "vqgan",
    ):
        module = getattr(m, name)
        assert not module.training, name
        assert not any(p.requires_grad for p in module.parameters()), name
    for name in ("effnet", "previewer", "descriptor"):  # SOC modules are fp32 whatever the preset dtype
        assert {p.dtype for p in getattr(m, name).parameters()} == {torch.float32}
    # metadata: where each component came from, JSON-serializable
    meta = json.loads(m.config.model_dump_json())
    assert meta["components"]["prior"]["source"] == str(root / "stable-cascade-prior")
    assert meta["components"]["previewer"]["path"] == "previewer.safetensors"
    assert meta["components"]["csd"]["source"].endswith("csd.safetensors")


def test_tiny_build_is_seeded_byte_for_byte(tiny_cache_dir, tmp_path):
    build_tiny(tmp_path / "again")
    reference = tiny_root(tiny_cache_dir)
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (reference / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_stable_cascade_loader_reads_the_tiny_folders_with_identical_outputs(
    tiny_models, tiny_cache_dir, caplog
):
    root = tiny_root(tiny_cache_dir)
    paths = {
        "prior": str(root / "stable-cascade-prior"),
        "decoder": str(root / "stable-cascade"),
        "csd": str(root / "csd" / "csd.safetensors"),
    }
    with caplog.at_level(logging.WARNING, logger="pipeline.models.loading"):
        models = load_preset("stable-cascade", device="cpu", paths=paths)
    assert models.preset == "stable-cascade" and models.dtype == torch.float32
    assert "impractically slow" in caplog.text  # fp32 fallback on CPU is announced
    assert models.config.variant == "bf16"  # asked for; the local folders only hold plain files
    assert_identical_outputs(models, tiny_models)


def test_save_then_load_round_trip_is_bit_identical(tiny_models, tiny_cache_dir, tmp_path):
    """Re-save every loaded component in the hub layout, load it back through the same loader."""
    m = tiny_models
    prior_dir, decoder_dir = tmp_path / "prior-repo", tmp_path / "decoder-repo"
    m.prior.save_pretrained(prior_dir / "prior")
    m.text_encoder.save_pretrained(prior_dir / "text_encoder")
    m.tokenizer.save_pretrained(prior_dir / "tokenizer")
    m.image_encoder.save_pretrained(prior_dir / "image_encoder")
    source = Path(m.config.prior) / "feature_extractor"
    shutil.copytree(source, prior_dir / "feature_extractor")
    m.decoder.save_pretrained(decoder_dir / "decoder")
    m.decoder_text_encoder.save_pretrained(decoder_dir / "text_encoder")
    m.decoder_tokenizer.save_pretrained(decoder_dir / "tokenizer")
    m.vqgan.save_pretrained(decoder_dir / "vqgan")
    save_effnet(m.effnet, decoder_dir / "effnet_encoder.safetensors")
    save_previewer(m.previewer, decoder_dir / "previewer.safetensors")
    from safetensors.torch import save_file

    csd_state = m.descriptor.encoder.state_dict()
    save_file({k: v.contiguous() for k, v in csd_state.items()}, str(tmp_path / "csd.safetensors"))

    paths = {"prior": str(prior_dir), "decoder": str(decoder_dir), "csd": str(tmp_path / "csd.safetensors")}
    reloaded = load_preset("tiny", device="cpu", paths=paths, cache_dir=tiny_cache_dir)
    assert reloaded.config.components["prior"]["source"] == str(prior_dir)
    assert_identical_outputs(reloaded, m)


def test_without_csd_weights_the_descriptor_falls_back_to_clip(tiny_cache_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.models.loading"):
        models = load_preset("tiny", device="cpu", paths={"csd": None}, cache_dir=tiny_cache_dir)
    assert models.descriptor.kind == models.config.descriptor == "clip"
    assert "fallback" in caplog.text
    content, style = models.descriptor(torch.rand(1, 3, 32, 32))
    assert torch.equal(content, style)


def copy_tiny(tiny_cache_dir: Path, tmp_path: Path) -> dict:
    root = tmp_path / "copy"
    shutil.copytree(tiny_root(tiny_cache_dir), root)
    return {"prior": str(root / "stable-cascade-prior"), "decoder": str(root / "stable-cascade"), "csd": None}


@pytest.mark.parametrize(
    "component, remove",
    [
        ("prior", "stable-cascade-prior/prior"),
        ("image_encoder", "stable-cascade-prior/image_encoder"),
        ("vqgan", "stable-cascade/vqgan"),
        ("effnet", "stable-cascade/effnet_encoder.safetensors"),
        ("previewer", "stable-cascade/previewer.safetensors"),
    ],
)
def test_a_missing_component_is_named_with_its_path(tiny_cache_dir, tmp_path, component, remove):
    paths = copy_tiny(tiny_cache_dir, tmp_path)
    target = tmp_path / "copy" / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(PresetError) as err:
        load_preset("stable-cascade", device="cpu", paths=paths)
    assert str(err.value).startswith(f"{component}: ")
    assert str(target) in str(err.value)


def test_missing_folder_and_missing_csd_file_are_named(tiny_cache_dir, tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(PresetError, match=f"prior: {missing}/prior/config.json not found"):
        load_preset("stable-cascade", device="cpu", paths={"prior": str(missing)})
    with pytest.raises(PresetError, match="csd: checkpoint file .*nope.pth not found"):
        load_preset("tiny", device="cpu", paths={"csd": str(tmp_path / "nope.pth")}, cache_dir=tiny_cache_dir)


def test_uncached_hub_ids_fail_fast_offline_with_the_component_and_repo(tiny_cache_dir):
    from huggingface_hub import constants, try_to_load_from_cache

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py
    if isinstance(try_to_load_from_cache("stabilityai/stable-cascade-prior", "prior/config.json"), str):
        pytest.skip("the real prior is in this machine's hub cache")
    with pytest.raises(PresetError) as err:
        load_preset("stable-cascade", device="cpu")
    message = str(err.value)
    assert message.startswith("prior: ") and "'stabilityai/stable-cascade-prior'" in message
    assert "HF_HUB_OFFLINE=1" in message and "paths=" in message
    with pytest.raises(PresetError, match="decoder: .*'nobody-here/no-such-repo'"):
        prior = str(tiny_root(tiny_cache_dir) / "stable-cascade-prior")
        load_preset(
            "stable-cascade", device="cpu", paths={"prior": prior, "decoder": "nobody-here/no-such-repo"}
        )


def test_bad_preset_name_and_path_keys_are_rejected(tmp_path):
    with pytest.raises(PresetError, match="unknown preset 'sdxl'"):
        load_preset("sdxl")
    with pytest.raises(PresetError, match=r"unknown keys in paths: \['priorr'\]"):
        load_preset("stable-cascade", paths={"priorr": "x"})


def test_concurrent_builders_leave_one_complete_folder(tmp_path):
    results, errors = [], []

    def build():
        try:
            results.append(ensure_tiny_cache(tmp_path))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results[0] == results[1] == tiny_root(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [tiny_root(tmp_path).name]  # no temp folders left
    assert load_preset("tiny", device="cpu", cache_dir=tmp_path).descriptor.kind == "csd"
