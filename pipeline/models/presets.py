"""Model presets: what RB-Modulation needs (the `Models` bundle), where each component comes from
(`PresetConfig`) and which files must exist under it (`required_files`).

* `stable-cascade`: the real weights, from hub ids or local folders with the hub layout:
    prior repo (stabilityai/stable-cascade-prior):
        prior/ text_encoder/ tokenizer/ image_encoder/ feature_extractor/
    decoder repo (stabilityai/stable-cascade):
        decoder/ text_encoder/ tokenizer/ vqgan/ effnet_encoder.safetensors previewer.safetensors
    CSD weights: one file (official `.pth` or our safetensors); without it SOC falls back to CLIP.
* `tiny`: random weights from small configs with exactly that layout (pipeline.models.tiny).

Both are loaded by the one loader in pipeline.models.loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipeline.errors import UserError

PRIOR_REPO = "stabilityai/stable-cascade-prior"
DECODER_REPO = "stabilityai/stable-cascade"
# The official `StageA.decode` multiplies by 0.43; diffusers' PaellaVQModel defaults to 0.3764 and a
# loaded vqgan config may carry either, so the preset sets it explicitly (warned about when they differ).
OFFICIAL_STAGE_A_SCALE = 0.43
PRESET_NAMES = ("tiny", "stable-cascade")
PATH_KEYS = {
    "prior",
    "prior_revision",
    "prior_subfolder",
    "decoder",
    "decoder_revision",
    "decoder_subfolder",
    "csd",
    "variant",
}


class PresetError(UserError, RuntimeError):
    """A preset cannot be loaded: names the component and where it was looked for."""


class PresetConfig(BaseModel):
    """Where each component comes from (recorded in sample metadata) and the preset's geometry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["tiny", "stable-cascade"]
    prior: str = PRIOR_REPO  # hub id or local folder
    prior_revision: str | None = None
    prior_subfolder: str = "prior"  # "prior_lite" for the 1B prior
    decoder: str = DECODER_REPO
    decoder_revision: str | None = None
    decoder_subfolder: str = "decoder"  # "decoder_lite" for the 700M Stage B
    variant: str | None = "bf16"  # of the prior/decoder weight files; local folders may hold plain files
    csd: str | None = None  # CSD checkpoint file
    descriptor: Literal["csd", "clip"] = "clip"
    # geometry: 1024^2 images <- 16x24x24 Stage C latents; references resized to 768 (short side) for the
    # EfficientNet encoder; previews are 8x the latent; Stage B latent = stage_b_latent_scale x Stage C
    image_size: int = 1024
    stage_c_latent_size: int = 24
    reference_size: int = 768
    preview_size: int = 192
    stage_c_steps: int = 20
    stage_b_latent_scale: float = 10.67
    stage_b_steps: int = 10
    stage_b_guidance_scale: float = 1.1
    stage_a_scale_factor: float = OFFICIAL_STAGE_A_SCALE  # latent x this before Stage A decodes it
    components: dict[str, dict[str, Any]] = {}  # filled by the loader: source, revision, resolved commit


@dataclass
class Models:
    """A loaded preset: every component on one device, and the config it was loaded from."""

    preset: str
    device: Any  # torch.device
    dtype: Any  # torch.dtype of prior/decoder/encoders/vqgan; SOC modules are always fp32
    prior: Any  # diffusers.StableCascadeUNet
    tokenizer: Any  # transformers.CLIPTokenizer
    text_encoder: Any  # transformers.CLIPTextModelWithProjection
    image_encoder: Any  # transformers.CLIPVisionModelWithProjection
    clip_image_size: int
    clip_mean: tuple
    clip_std: tuple
    effnet: Any  # pipeline.rbmod.effnet.EfficientNetEncoder
    previewer: Any  # pipeline.rbmod.previewer.Previewer
    descriptor: Any  # pipeline.rbmod.descriptor.StyleDescriptor
    decoder: Any  # diffusers.StableCascadeUNet
    decoder_tokenizer: Any
    decoder_text_encoder: Any
    vqgan: Any  # PaellaVQModel
    config: PresetConfig


def is_local_source(source: str) -> bool:
    """A local folder or file rather than a hub id ('org/name') or a staged s3:// folder."""
    if source.startswith("s3://"):
        return False
    return source.startswith(("/", ".", "~")) or os.path.exists(source) or source.count("/") != 1


def required_files(config: PresetConfig) -> dict[str, tuple[str, str, str | None]]:
    """component -> (source, file that must exist under it, revision): what the loader checks first."""
    pr, dr = config.prior_revision, config.decoder_revision
    return {
        "prior": (config.prior, f"{config.prior_subfolder}/config.json", pr),
        "text_encoder": (config.prior, "text_encoder/config.json", pr),
        "tokenizer": (config.prior, "tokenizer/tokenizer_config.json", pr),
        "image_encoder": (config.prior, "image_encoder/config.json", pr),
        "feature_extractor": (config.prior, "feature_extractor/preprocessor_config.json", pr),
        "decoder": (config.decoder, f"{config.decoder_subfolder}/config.json", dr),
        "decoder_text_encoder": (config.decoder, "text_encoder/config.json", dr),
        "decoder_tokenizer": (config.decoder, "tokenizer/tokenizer_config.json", dr),
        "vqgan": (config.decoder, "vqgan/config.json", dr),
        "effnet": (config.decoder, "effnet_encoder.safetensors", dr),
        "previewer": (config.decoder, "previewer.safetensors", dr),
    }
