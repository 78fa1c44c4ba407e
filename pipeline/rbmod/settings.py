"""RB-Modulation sampling settings, with the official app's defaults (spec 2.2, 5.6, 6).

Fields left `None` depend on the mode or the preset and are filled by `resolve`: steps (preset's Stage C
steps: 20 for stable-cascade), lambda_proximal (1 stylization / 0 composition), sampler (DDIM
stylization / DDPM composition), resolution, the Stage B steps/CFG and the Stage A scale factor (preset
defaults).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["stylization", "composition"]

# `cfg_rho`: the official sampler's default; the app passes it for neither Stage C nor Stage B
OFFICIAL_CFG_RESCALE = 0.7


class RBModSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Stage C schedule and guidance
    steps: int | None = Field(None, ge=1)  # T
    guidance_scale: float = Field(4.0, ge=0)  # w
    cfg_rescale: float = Field(OFFICIAL_CFG_RESCALE, ge=0, le=1)  # rho
    shift: float = Field(2.0, gt=0)
    sampler: Literal["ddim", "ddpm"] | None = None
    # SOC
    eta: float = Field(0.1, ge=0)  # base Adam lr, decays linearly: eta * (1 - k/T)
    soc_iterations: int = Field(3, ge=0)  # M
    tau: int | None = Field(None, ge=0)  # SOC runs at steps k < tau; None: every step (tau = T)
    lambda_style: float = Field(1.0, ge=0)
    lambda_content: float = Field(1.0, ge=0)  # composition only
    lambda_proximal: float | None = Field(None, ge=0)
    # AFA (off only for ablations)
    afa: bool = True
    # output and Stage B
    resolution: int | None = Field(None, ge=1)  # square images; None: the preset's image_size
    width: int | None = Field(None, ge=1)  # a row's own size (manifests/row_settings.py): both or neither
    height: int | None = Field(None, ge=1)
    stage_b_steps: int | None = Field(None, ge=1)
    stage_b_guidance_scale: float | None = Field(None, ge=0)
    stage_b_cfg_rescale: float = Field(OFFICIAL_CFG_RESCALE, ge=0, le=1)  # the app leaves cfg_rho at 0.7
    stage_a_scale_factor: float | None = Field(None, gt=0)  # None: the preset's (0.43, official StageA)
    # execution: requests per batch, and whether each request runs as its own batch (bit-identical
    # results whatever the batching; default: on CPU, where batched GEMMs/convs round differently)
    max_batch_size: int = Field(8, ge=1)
    batch_invariant: bool | None = None

    def resolve(self, mode: Mode, config) -> RBModSettings:
        """Every `None` filled for `mode` from the preset config (`pipeline.models.presets.PresetConfig`)."""
        steps = self.steps or config.stage_c_steps
        return self.model_copy(
            update=dict(
                steps=steps,
                tau=steps if self.tau is None else self.tau,
                lambda_proximal=(1.0 if mode == "stylization" else 0.0)
                if self.lambda_proximal is None
                else self.lambda_proximal,
                sampler=self.sampler or ("ddim" if mode == "stylization" else "ddpm"),
                resolution=self.resolution or config.image_size,
                stage_b_steps=self.stage_b_steps or config.stage_b_steps,
                stage_b_guidance_scale=config.stage_b_guidance_scale
                if self.stage_b_guidance_scale is None
                else self.stage_b_guidance_scale,
                stage_a_scale_factor=self.stage_a_scale_factor or config.stage_a_scale_factor,
            )
        )

    def latent_size(self, config) -> int:
        """Stage C latent side for `resolution` (1024 -> 24 for stable-cascade: ceil(res / 42.67))."""
        return stage_c_side(self.resolution or config.image_size, config)

    def image_shape(self, config) -> tuple[int, int]:
        """(height, width) asked for: the row's own size, else the square `resolution`."""
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height must be set together")
        side = self.resolution or config.image_size
        return (self.height, self.width) if self.width is not None else (side, side)

    def latent_shape(self, config) -> tuple[int, int]:
        """Stage C latent (h, w) for `image_shape`, as diffusers' prior pipeline sizes it."""
        height, width = self.image_shape(config)
        return stage_c_side(height, config), stage_c_side(width, config)


def stage_c_side(pixels: int, config) -> int:
    """Stage C latent cells for an image side: ceil(pixels / 42.67) on stable-cascade (1024 -> 24)."""
    return max(1, math.ceil(pixels * config.stage_c_latent_size / config.image_size - 1e-9))


def decoded_side(cells: int, config) -> int:
    """The image side Stage B + A make from `cells` Stage C cells: Stage B's latent is int(cells x
    stage_b_latent_scale) (pipeline.rbmod.decode, diffusers' latent_dim_scale), which Stage A upsamples
    by image_size / its size at the preset's own resolution (4 on both presets)."""
    stage_a_factor = config.image_size // int(config.stage_c_latent_size * config.stage_b_latent_scale)
    return int(cells * config.stage_b_latent_scale) * stage_a_factor
