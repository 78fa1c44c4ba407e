"""Classifier-free guidance with std rescale (spec 2.1, `gdf_rbm.py`).

Deviation from the official code: the std is taken per sample, not over the whole [B, ...] tensor, so a
sample's guided prediction does not depend on the other samples of its batch.
"""

from __future__ import annotations

import torch


def per_sample_std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std over all non-batch elements, shape (B, 1, 1, ...).

    One reduction per sample: a reduction over a batch can split its work differently with the batch
    size, which would change the summation order and so the last bits.
    """
    stds = [sample.std() for sample in x]
    return torch.stack(stds).view(-1, *([1] * (x.dim() - 1)))


def guided_epsilon(
    eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float, rescale: float
) -> torch.Tensor:
    """eps_u + w (eps_c - eps_u), then blended with its std-matched version by `rescale` (rho)."""
    eps = torch.lerp(eps_uncond, eps_cond, guidance_scale)
    if rescale > 0:
        matched = eps * (per_sample_std(eps_cond) / (per_sample_std(eps) + 1e-9))
        eps = rescale * matched + (1 - rescale) * eps
    return eps
