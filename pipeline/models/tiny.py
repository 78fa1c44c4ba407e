"""The `tiny` preset: random weights from small configs, built once (seeded) into a cache folder with
the stable-cascade hub layout, then loaded by the very same loader as the real weights
(pipeline.models.loading). For tests and the demo on CPU."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from pipeline.models.presets import OFFICIAL_STAGE_A_SCALE, PresetConfig
from pipeline.models.progress_bars import quiet_progress_bars

TINY_SEED = 20240527
TINY_FORMAT = 3  # bump when the tiny builder changes what it writes


def tiny_specs() -> dict:
    """Every tiny config in one JSON-able dict; its hash names the cache folder."""
    from pipeline.rbmod.effnet import EffNetConfig, StageSpec

    effnet = EffNetConfig(
        stem_channels=8,
        stages=(
            StageSpec(True, 1, 3, 1, 8, 8, 1),
            StageSpec(True, 2, 3, 2, 8, 8, 1),
            StageSpec(True, 2, 3, 2, 8, 16, 1),
            StageSpec(False, 2, 3, 2, 16, 16, 1),
            StageSpec(False, 2, 3, 1, 16, 24, 1),
            StageSpec(False, 2, 3, 2, 24, 32, 1),
        ),
        last_channels=32,
    )
    text = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32
    )
    vision = dict(text, image_size=32, patch_size=8)
    return {
        "format": TINY_FORMAT,
        "seed": TINY_SEED,
        "text_encoder": text,
        "image_encoder": vision,
        "prior": dict(
            in_channels=16,
            out_channels=16,
            conditioning_dim=32,
            block_out_channels=[32, 32],
            num_attention_heads=[2, 2],
            down_num_layers_per_block=[1, 1],
            up_num_layers_per_block=[1, 1],
            switch_level=[False],
            clip_text_in_channels=32,
            clip_text_pooled_in_channels=32,
            clip_image_in_channels=32,  # = the tiny image encoder's projection_dim
            dropout=[0.0, 0.0],
        ),
        "decoder": dict(
            in_channels=4,
            out_channels=4,
            patch_size=2,
            conditioning_dim=32,
            block_out_channels=[16, 32],
            num_attention_heads=[0, 2],
            down_num_layers_per_block=[1, 1],
            up_num_layers_per_block=[1, 1],
            down_blocks_repeat_mappers=[1, 1],
            up_blocks_repeat_mappers=[2, 2],
            block_types_per_layer=[
                ["SDCascadeResBlock", "SDCascadeTimestepBlock"],
                ["SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"],
            ],
            clip_text_pooled_in_channels=32,
            effnet_in_channels=16,
            pixel_mapper_in_channels=3,
            timestep_conditioning_type=["sca"],
            switch_level=None,
            dropout=[0.0, 0.0],
        ),
        "vqgan": dict(
            levels=2,
            bottleneck_blocks=1,
            embed_dim=16,
            latent_channels=4,
            num_vq_embeddings=16,
            scale_factor=OFFICIAL_STAGE_A_SCALE,
        ),
        "effnet": effnet.to_dict(),
        "previewer": dict(c_in=16, c_hidden=32, c_out=3),
        "csd": dict(width=64, layers=2, patch=8, image_size=32, mlp_width=256, embed_dim=32),
        # geometry: 128^2 images <- 16x4x4 Stage C latents -> 4x32x32 Stage B latents -> Stage A (4x)
        "geometry": dict(
            image_size=128,
            stage_c_latent_size=4,
            reference_size=128,
            preview_size=32,
            stage_c_steps=4,
            stage_b_latent_scale=8.0,
            stage_b_steps=4,
        ),
    }


def tiny_key() -> str:
    import torch

    from manifests.tiny_tokenizer import vocabulary_key

    blob = json.dumps(
        {"specs": tiny_specs(), "torch": torch.__version__, "vocabulary": vocabulary_key()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tiny_preset_config(root: Path) -> PresetConfig:
    return PresetConfig(
        name="tiny",
        prior=str(root / "stable-cascade-prior"),
        decoder=str(root / "stable-cascade"),
        variant=None,
        csd=str(root / "csd" / "csd.safetensors"),
        **tiny_specs()["geometry"],
    )


def ensure_tiny_cache(cache_dir: Path | None = None) -> Path:
    """The tiny weights folder, built on first use. It is built in a private temp folder and renamed into
    place, so concurrent builders (Ray actors) never see a half-written folder; a loser drops its copy."""
    from pipeline.models.cache import default_cache_dir

    root = Path(cache_dir or default_cache_dir()).expanduser()
    final = root / f"tiny-{tiny_key()}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with quiet_progress_bars():
            build_tiny(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _calibrate_batchnorm(module, inputs) -> None:
    """Set BatchNorm running statistics from one seeded batch, so the random tiny net's activations (and
    the encoder's latents) have roughly unit scale, like the trained ones. Computed in float64 and then
    rounded to float32, so thread count and CPU kind do not change a bit of the result."""
    import torch

    batchnorms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in batchnorms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the stats exactly
    module.double().train()
    with torch.no_grad():
        module(inputs.double())
    for m in batchnorms:
        m.momentum = 0.1
    module.float().eval()


def build_tiny(root: Path) -> None:
    """Write the tiny preset (random, seeded weights) into `root` in the stable-cascade hub layout."""
    import torch
    from diffusers import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    from safetensors.torch import save_file
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    from transformers.models.clip import CLIPImageProcessorPil

    from manifests.tiny_tokenizer import save_tiny_clip_tokenizer
    from pipeline.rbmod.csd import CSD, vision_config_for
    from pipeline.rbmod.effnet import EfficientNetEncoder, EffNetConfig, save_effnet
    from pipeline.rbmod.image_ops import CLIP_MEAN, CLIP_STD, imagenet_normalize
    from pipeline.rbmod.previewer import Previewer, save_previewer

    specs = tiny_specs()
    prior_dir, decoder_dir = root / "stable-cascade-prior", root / "stable-cascade"
    for repo in (prior_dir, decoder_dir):
        tok = save_tiny_clip_tokenizer(repo / "tokenizer")
        shutil.rmtree(repo / "tokenizer" / "_bpe", ignore_errors=True)

    text_config = CLIPTextConfig(
        **specs["text_encoder"],
        vocab_size=len(tok),
        max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    builders = [
        (
            lambda: CLIPTextModelWithProjection(text_config),
            [prior_dir / "text_encoder", decoder_dir / "text_encoder"],
        ),
        (
            lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**specs["image_encoder"])),
            [prior_dir / "image_encoder"],
        ),
        (lambda: StableCascadeUNet(**specs["prior"]), [prior_dir / "prior"]),
        (lambda: StableCascadeUNet(**specs["decoder"]), [decoder_dir / "decoder"]),
        (lambda: PaellaVQModel(**specs["vqgan"]), [decoder_dir / "vqgan"]),
    ]
    for offset, (build, targets) in enumerate(builders):
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(TINY_SEED + offset)
            model = build()
        for target in targets:
            model.save_pretrained(str(target), safe_serialization=True)

    size = specs["image_encoder"]["image_size"]
    CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(str(prior_dir / "feature_extractor"))

    geometry = specs["geometry"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 100)
        effnet = EfficientNetEncoder(EffNetConfig.from_dict(specs["effnet"]))
        side = geometry["reference_size"]
        _calibrate_batchnorm(effnet, imagenet_normalize(torch.rand(8, 3, side, side)))
        save_effnet(effnet, decoder_dir / "effnet_encoder.safetensors")

        torch.manual_seed(TINY_SEED + 101)
        previewer = Previewer(**specs["previewer"])
        latent = geometry["stage_c_latent_size"]
        _calibrate_batchnorm(previewer, torch.randn(8, 16, latent, latent))
        with torch.no_grad():  # previews roughly in [0,1] like the real Previewer's: mean 0.5, std ~0.2
            previewer.blocks[24].weight.mul_(0.3)
            previewer.blocks[24].bias.fill_(0.5)
        save_previewer(previewer, decoder_dir / "previewer.safetensors")

        torch.manual_seed(TINY_SEED + 102)
        c = specs["csd"]
        csd = CSD(
            vision_config_for(c["width"], c["layers"], c["patch"], c["image_size"], c["mlp_width"]),
            c["embed_dim"],
        )
        with torch.no_grad():
            for head in (csd.last_layer_style, csd.last_layer_content):
                head.normal_(std=c["width"] ** -0.5)  # CLIP initializes `proj` this way
        (root / "csd").mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in csd.state_dict().items()}, str(root / "csd" / "csd.safetensors")
        )
    (root / "tiny_specs.json").write_text(json.dumps(specs, indent=1))
