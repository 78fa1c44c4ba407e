"""The Stage C denoising loop of RB-Modulation (spec 2.4, 7), returning the SOC-optimized x0 of the last
step, which Stage B takes as its `effnet` condition.

Per step k: the prior predicts eps for [cond; uncond] with AFA on in both halves, CFG with rescale gives
eps, Tweedie gives x0, SOC refines x0, and the next latent is formed from the refined x0 and the
*unchanged* eps (DDIM for stylization, DDPM for composition; diffusers' schedulers cannot take a
modified x0, so the update is written here). Random draws use each sample's own generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pipeline.rbmod.afa import AFAState, afa_mode
from pipeline.rbmod.guidance import guided_epsilon
from pipeline.rbmod.schedule import noise_schedule
from pipeline.rbmod.soc import DescriptorTargets, SOCWeights, soc_lr, soc_refine


@dataclass(frozen=True)
class StageCConditions:
    """Batched conditions, cond and uncond halves; tensors in the prior's dtype."""

    clip_text: torch.Tensor  # (B, L, D)
    clip_text_pooled: torch.Tensor  # (B, 1, D)
    clip_img: torch.Tensor  # (B, N, D_img): [style] or [content, style]
    uncond_clip_text: torch.Tensor
    uncond_clip_text_pooled: torch.Tensor
    targets: DescriptorTargets  # SOC descriptor targets, fp32
    afa_mode: str  # "off" | "style" | "content_style"


@dataclass(frozen=True)
class StageCStep:
    """What one step computed; handed to `on_step` (tests, inspection)."""

    step: int
    x: torch.Tensor  # the latent the prior saw
    eps: torch.Tensor  # guided prediction
    x0: torch.Tensor  # Tweedie estimate before SOC
    x0_controlled: torch.Tensor  # after SOC (== x0 when SOC is off at this step)


def initial_noise(shape: Sequence[int], generators: Sequence[torch.Generator], device) -> torch.Tensor:
    """One (1, *shape) draw per sample from its own generator (on CPU, so seeds mean the same on GPU)."""
    draws = [torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(draws).to(device)


def predict_eps(
    models, afa_state: AFAState, x: torch.Tensor, t_cond: float, cond: StageCConditions, settings
) -> torch.Tensor:
    """CFG-rescaled eps (fp32) for the latent batch x."""
    batch = x.shape[0]
    dtype = models.dtype
    sample = torch.cat([x, x]).to(dtype)
    # fp32 ratio: the prior embeds ratio * 10000, which bf16 would scramble (see `low_precision_autocast`)
    ratio = torch.full((2 * batch,), t_cond, device=x.device, dtype=torch.float32)
    clip_img = cond.clip_img.to(dtype)
    with afa_mode(afa_state, cond.afa_mode), low_precision_autocast(models):
        out = models.prior(
            sample=sample,
            timestep_ratio=ratio,
            clip_text_pooled=torch.cat([cond.clip_text_pooled, cond.uncond_clip_text_pooled]),
            clip_text=torch.cat([cond.clip_text, cond.uncond_clip_text]),
            clip_img=torch.cat([clip_img, torch.zeros_like(clip_img)]),  # uncond image tokens: zeros
            return_dict=False,
        )[0]
    eps_cond, eps_uncond = out.float().chunk(2)
    return guided_epsilon(eps_cond, eps_uncond, settings.guidance_scale, settings.cfg_rescale)


def low_precision_autocast(models):
    """Autocast to the models' dtype when it is not fp32, so a UNet takes an fp32 timestep ratio as the
    official code runs it (fp32 r under bf16 autocast): its sinusoidal embedding of r * 10000 stays
    fp32 (8-bit bf16 r is off by up to ~20 there), and the layers still run in bf16."""
    enabled = models.dtype != torch.float32
    return torch.autocast(models.device.type, dtype=models.dtype, enabled=enabled)


@torch.no_grad()
def sample_stage_c(
    models,
    afa_state: AFAState,
    cond: StageCConditions,
    settings,
    generators: Sequence[torch.Generator],
    latent_size: tuple[int, int],
    on_step: Callable[[StageCStep], None] | None = None,
) -> torch.Tensor:
    """Run the resolved `settings` (RBModSettings) -> optimized x0 of the last step, (B,16,h,w) fp32."""
    steps = settings.steps
    a, b, t_cond = (v.tolist() for v in noise_schedule(steps, settings.shift))
    composition = cond.targets.content is not None
    weights = SOCWeights(settings.lambda_style, settings.lambda_content, settings.lambda_proximal)
    soc_on = settings.soc_iterations > 0 and weights.moves_latent(composition)

    channels = models.prior.config.in_channels
    x = initial_noise((channels, *latent_size), generators, models.device)
    for k in range(steps):
        eps = predict_eps(models, afa_state, x, t_cond[k], cond, settings)
        x0 = (x - b[k] * eps) / a[k]
        x0_controlled = x0
        if soc_on and k < settings.tau:
            x0_controlled = soc_refine(
                x0,
                lr=soc_lr(settings.eta, k, steps),
                iterations=settings.soc_iterations,
                previewer=models.previewer,
                descriptor=models.descriptor,
                targets=cond.targets,
                weights=weights,
            )
        if on_step is not None:
            on_step(StageCStep(k, x, eps, x0, x0_controlled))
        if k == steps - 1:
            return x0_controlled
        x = next_latent(x0_controlled, eps, a[k], b[k], a[k + 1], b[k + 1], settings.sampler, generators)
    raise AssertionError("unreachable")


def next_latent(x0, eps, a_k, b_k, a_next, b_next, sampler: str, generators) -> torch.Tensor:
    """x_{k+1} from the (controlled) x0 and the unchanged eps (spec 2.4)."""
    if sampler == "ddim":
        return a_next * x0 + b_next * eps
    if sampler != "ddpm":
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    sigma = (b_next / b_k) * (1 - a_k**2 / a_next**2) ** 0.5
    noise = initial_noise(x0.shape[1:], generators, x0.device)
    return a_next * x0 + (b_next**2 - sigma**2) ** 0.5 * eps + sigma * noise
