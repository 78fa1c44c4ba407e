"""Stage B + Stage A: Stage C latents ("image embeddings") -> PIL images.

Stage B is the Stable Cascade decoder UNet run with `DDPMWuerstchenScheduler` (shift 1), conditioned on
the prompt's pooled text embedding and the Stage C latent (`effnet`), with CFG 1.1 against the empty
prompt and a zero `effnet` (spec 5.2, the official app's settings). Stage A is the Paella VQGAN.

The loop is the decoder pipeline's, written out (its `from_pretrained` is broken in diffusers 0.42 and
it is deprecated). Every random draw uses the sample's own generator, so a sample's image does not
depend on which batch it is in. Arithmetic can still depend on the batch size (oneDNN convolutions and
single-row matmuls sum in another order: ~1e-6 differences on CPU), so with `batch_invariant` (the
default on CPU) each sample runs as its own batch and results are bit-identical however samples are
batched; on GPU the batch runs at once for throughput.
"""

from __future__ import annotations

import torch
from diffusers import DDPMWuerstchenScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from pipeline.rbmod.conditioning import run_text_encoder
from pipeline.rbmod.image_ops import tensor_to_pil
from pipeline.rbmod.stage_c import low_precision_autocast


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
) -> torch.Tensor:
    """Stage B + A -> images (B,3,H,W) in [0,1], float32 on the models' device."""
    config = models.config
    steps = config.stage_b_steps if steps is None else steps
    guidance_scale = config.stage_b_guidance_scale if guidance_scale is None else guidance_scale
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
    if batch_invariant and batch > 1:
        parts = [
            _decode_batch(
                models,
                image_embeddings[i : i + 1],
                prompts[i : i + 1],
                generators[i : i + 1],
                steps,
                guidance_scale,
            )
            for i in range(batch)
        ]
        return torch.cat(parts)
    return _decode_batch(models, image_embeddings, prompts, generators, steps, guidance_scale)


def _decode_batch(
    models, image_embeddings, prompts, generators, steps: int, guidance_scale: float
) -> torch.Tensor:
    config, batch = models.config, len(prompts)
    device, dtype = models.device, models.dtype
    use_cfg = guidance_scale > 1  # as the diffusers decoder pipeline decides

    effnet = image_embeddings.to(device=device, dtype=dtype)
    pooled = encode_pooled_prompts(models, prompts)
    if use_cfg:
        effnet = torch.cat([effnet, torch.zeros_like(effnet)])
        pooled = torch.cat([pooled, encode_pooled_prompts(models, [""] * batch)])

    height, width = image_embeddings.shape[-2:]
    scale = config.stage_b_latent_scale
    shape = (batch, models.decoder.config.in_channels, int(height * scale), int(width * scale))
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype)

    scheduler = DDPMWuerstchenScheduler()
    scheduler.set_timesteps(steps, device=device)
    for t in scheduler.timesteps[:-1]:
        ratio = t.expand(batch).float()  # fp32, unlike the diffusers pipeline: see low_precision_autocast
        model_in = torch.cat([latents, latents]) if use_cfg else latents
        ratio_in = torch.cat([ratio, ratio]) if use_cfg else ratio
        with low_precision_autocast(models):
            predicted = models.decoder(
                sample=model_in,
                timestep_ratio=ratio_in,
                clip_text_pooled=pooled,
                effnet=effnet,
                return_dict=False,
            )[0].to(dtype)
        if use_cfg:
            cond, uncond = predicted.chunk(2)
            predicted = torch.lerp(uncond, cond, guidance_scale)
        latents = scheduler.step(predicted, ratio, latents, generator=generators).prev_sample

    images = models.vqgan.decode(latents * models.vqgan.config.scale_factor).sample
    return images.clamp(0, 1).float()


def decode(
    models,
    image_embeddings: torch.Tensor,
    prompts: list[str],
    generators: list[torch.Generator],
    steps: int | None = None,
    guidance_scale: float | None = None,
    batch_invariant: bool | None = None,
) -> list[Image.Image]:
    """Stage B (DDPM, `config.stage_b_steps` steps, CFG `config.stage_b_guidance_scale`) + Stage A."""
    images = decode_latents(
        models, image_embeddings, prompts, generators, steps, guidance_scale, batch_invariant
    )
    return tensor_to_pil(images)
