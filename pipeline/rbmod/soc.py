"""The stochastic optimal controller of RB-Modulation, as the official code runs it (spec 2.2-2.3).

At a denoising step the Tweedie estimate x0 (a Stage C latent) is refined by M Adam steps on a fresh
optimizer with lr eta * (1 - k/T). The loss scores Previewer(z) with the style descriptor against targets
computed once per request (`conditioning.reference_features`):

    loss_i = lambda_s (1 - cos(style(P(z_i)), g_style_i)) + lambda_c (1 - cos(content(P(z_i)), g_content_i))
             + lambda_p mean((z_i - x0_i)^2)

Gradients reach z only (every module is frozen); everything runs in fp32. The batch loss is the *sum* of
the per-sample losses, so each sample's gradient is exactly its batch-of-1 gradient (the official mean
over the batch would scale it by 1/B, which Adam does not fully undo: its eps is not scaled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DescriptorTargets:
    style: torch.Tensor  # (B, D) unit vectors
    content: torch.Tensor | None = None  # (B, D), composition only


@dataclass(frozen=True)
class SOCWeights:
    style: float
    content: float
    proximal: float

    def moves_latent(self, composition: bool) -> bool:
        """The proximal term alone has zero gradient at z = x0, so SOC would leave x0 unchanged."""
        return self.style > 0 or (composition and self.content > 0)


def soc_lr(eta: float, step: int, steps: int) -> float:
    return eta * (1 - step / steps)


def descriptor_loss(
    z: torch.Tensor,
    x0: torch.Tensor,
    previewer: torch.nn.Module,
    descriptor: torch.nn.Module,
    targets: DescriptorTargets,
    weights: SOCWeights,
) -> torch.Tensor:
    """Per-sample SOC loss, shape (B,)."""
    content, style = descriptor(previewer(z))
    loss = weights.style * (1 - F.cosine_similarity(style, targets.style, dim=-1))
    if targets.content is not None:
        loss = loss + weights.content * (1 - F.cosine_similarity(content, targets.content, dim=-1))
    if weights.proximal:
        loss = loss + weights.proximal * (z - x0).pow(2).flatten(1).mean(dim=1)
    return loss


def soc_refine(
    x0: torch.Tensor,
    *,
    lr: float,
    iterations: int,
    previewer: torch.nn.Module,
    descriptor: torch.nn.Module,
    targets: DescriptorTargets,
    weights: SOCWeights,
) -> torch.Tensor:
    """M Adam steps on z (initialized at x0) -> the optimized x0, detached, fp32."""
    x0 = x0.detach().float()
    z = x0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            loss = descriptor_loss(z, x0, previewer, descriptor, targets, weights).sum()
            loss.backward()
            optimizer.step()
    return z.detach()
