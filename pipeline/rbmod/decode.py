"""Stage B + Stage A: Stage C latents ("image embeddings") -> images, as the official RB-Modulation app
runs them (spec 5.2, 5.3).

Stage B is the Stable Cascade decoder UNet conditioned on the prompt's pooled text embedding and the
Stage C latent (`effnet`), sampled with GDF's DDPM sampler written out here (our own code, as for Stage C):

* schedule: the cosine schedule of Stage C with shift 1 (`noise_schedule(steps, 1)`), so the decoder's
  `timestep_ratio` is the t_cond recomputed from the clamped alpha-bar (0.9936 at the first step, not the
  grid value 1.0 that diffusers' decoder pipeline feeds);
* CFG 1.1 against the empty prompt and a zero `effnet`, with the std rescale 0.7: the official app calls
  the sampler without `cfg_rho`, so its default applies at Stage B too;
* DDPM update x_{k+1} = a_{k+1} x0 + sqrt(b_{k+1}^2 - sigma^2) eps + sigma z (`next_latent`);
* the result is the x0 predicted at the last step (what GDF's sampler yields), not a final update.

Stage A (Paella VQGAN) decodes `scale_factor * x0`; the official `StageA` uses 0.43, the preset's
`stage_a_scale_factor` (diffusers' `PaellaVQModel` defaults to 0.3764).

Every random draw uses the sample's own generator, so a sample's image does not depend on which batch it
is in. Arithmetic can still depend on the batch size (oneDNN convolutions and single-row matmuls sum in
another order: ~1e-6 differences on CPU), so with `batch_invariant` (the default on CPU) each sample runs
as its own batch and results are bit-identical however samples are batched; on GPU the batch runs at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from pipeline.rbmod.conditioning import run_text_encoder
from pipeline.rbmod.guidance import guided_epsilon
from pipeline.rbmod.image_ops import tensor_to_pil
from pipeline.rbmod.schedule import noise_schedule
from pipeline.rbmod.settings import OFFICIAL_CFG_RESCALE
from pipeline.rbmod.stage_c import initial_noise, low_precision_autocast, next_latent

STAGE_B_SHIFT = 1.0  # the official app samples Stage B unshifted


@dataclass(frozen=True)
class StageBStep:
    """What one Stage B step computed; handed to `on_step` (tests, inspection). Tensors fp32."""

    step: int
    x: torch.Tensor  # the latent the decoder saw
    t_cond: float  # its timestep_ratio
    eps: torch.Tensor  # guided (and rescaled) prediction
    x0: torch.Tensor  # Tweedie estimate (x - b eps) / a


def encode_pooled_prompts(models, prompts: list[str]) -> torch.Tensor:
    """(B,1,D) pooled, projected text embeddings from the decoder's text encoder."""
    output = run_text_encoder(models.decoder_tokenizer, models.decoder_text_encoder, prompts, models.device)
    return output.text_embeds[:, None].to(models.dtype)


@torch.no_grad()
def decode_latents(
    models,
    image_embeddings: torch.Tensor,
    prompts: list[str],
    generators: list[torch.Generator],
    steps: int | None = None,
    guidance_scale: float | None = None,
    batch_invariant: bool | None = None,
    cfg_rescale: float = OFFICIAL_CFG_RESCALE,
    scale_factor: float | None = None,
    on_step: Callable[[StageBStep], None] | None = None,
) -> torch.Tensor:
    """Stage B + A -> images (B,3,H,W) in [0,1], float32 on the models' device. Defaults: the preset's
    Stage B steps, CFG and Stage A scale factor."""
    config = models.config
    steps = config.stage_b_steps if steps is None else steps
    guidance_scale = config.stage_b_guidance_scale if guidance_scale is None else guidance_scale
    scale_factor = config.stage_a_scale_factor if scale_factor is None else scale_factor
    batch = len(prompts)
    if image_embeddings.dim() != 4 or image_embeddings.shape[0] != batch or len(generators) != batch:
        raise ValueError(
            f"decode: got image embeddings of shape {tuple(image_embeddings.shape)}, {batch} prompts and "
            f"{len(generators)} generators; need (B,C,h,w) embeddings, one prompt and generator per sample"
        )
    if steps < 1:
        raise ValueError(f"decode: steps must be >= 1, got {steps}")
    if batch_invariant is None:
        batch_invariant = models.device.type == "cpu"
    parts = range(batch) if batch_invariant else [slice(None)]
    images = []
    for part in parts:
        index = slice(part, part + 1) if isinstance(part, int) else part
        x0 = sample_stage_b(
            models,
            image_embeddings[index],
            prompts[index],
            generators[index],
            steps,
            guidance_scale,
            cfg_rescale,
            on_step,
        )
        images.append(models.vqgan.decode((x0 * scale_factor).to(models.dtype)).sample)
    return torch.cat(images).clamp(0, 1).float()


def sample_stage_b(
    models,
    image_embeddings: torch.Tensor,
    prompts: Sequence[str],
    generators: Sequence[torch.Generator],
    steps: int,
    guidance_scale: float,
    cfg_rescale: float,
    on_step: Callable[[StageBStep], None] | None = None,
) -> torch.Tensor:
    """GDF DDPM over the decoder, one batch -> the last step's x0, (B,C,H,W) fp32."""
    batch, device, dtype = len(prompts), models.device, models.dtype
    # As the official sampler: CFG whenever a scale is given. At exactly 1 the uncond pass is skipped
    # (lerp gives cond; the rescale would change it only through the 1e-9 in its denominator).
    use_cfg = guidance_scale != 1
    effnet = image_embeddings.to(device=device, dtype=dtype)
    pooled = encode_pooled_prompts(models, list(prompts))
    if use_cfg:
        effnet = torch.cat([effnet, torch.zeros_like(effnet)])
        pooled = torch.cat([pooled, encode_pooled_prompts(models, [""] * batch)])

    a, b, t_cond = (v.tolist() for v in noise_schedule(steps, STAGE_B_SHIFT))
    height, width = image_embeddings.shape[-2:]
    scale = models.config.stage_b_latent_scale
    shape = (models.decoder.config.in_channels, int(height * scale), int(width * scale))
    x = initial_noise(shape, generators, device)
    copies = 2 if use_cfg else 1
    for k in range(steps):
        # fp32 ratio, as the official code runs it under autocast: see low_precision_autocast
        ratio = torch.full((copies * batch,), t_cond[k], device=device, dtype=torch.float32)
        with low_precision_autocast(models):
            predicted = models.decoder(
                sample=torch.cat([x] * copies).to(dtype),
                timestep_ratio=ratio,
                clip_text_pooled=pooled,
                effnet=effnet,
                return_dict=False,
            )[0].float()
        if use_cfg:
            cond, uncond = predicted.chunk(2)
            eps = guided_epsilon(cond, uncond, guidance_scale, cfg_rescale)
        else:
            eps = predicted
        x0 = (x - b[k] * eps) / a[k]
        if on_step is not None:
            on_step(StageBStep(k, x, t_cond[k], eps, x0))
        if k == steps - 1:
            return x0
        x = next_latent(x0, eps, a[k], b[k], a[k + 1], b[k + 1], "ddpm", generators)
    raise AssertionError("unreachable")


def decode(
    models,
    image_embeddings: torch.Tensor,
    prompts: list[str],
    generators: list[torch.Generator],
    steps: int | None = None,
    guidance_scale: float | None = None,
    batch_invariant: bool | None = None,
    cfg_rescale: float = OFFICIAL_CFG_RESCALE,
    scale_factor: float | None = None,
) -> list[Image.Image]:
    """Stage B (GDF DDPM, CFG with rescale) + Stage A -> PIL images."""
    images = decode_latents(
        models,
        image_embeddings,
        prompts,
        generators,
        steps,
        guidance_scale,
        batch_invariant,
        cfg_rescale,
        scale_factor,
    )
    return tensor_to_pil(images)
