"""Stage C noise schedule of Stable Cascade's GDF, with RB-Modulation's logSNR shift (spec 2.1).

Cosine schedule (s = 0.008) clamped to [1e-4, 0.9999], logit shifted by 2 ln(1/shift) and clamped to the
limits of the *unshifted* schedule; the UNet's timestep is mapped back from the shifted logSNR with the
cosine inverse (`CosineTNoiseCond`), so with shift != 1 it is not the grid value r.
"""

from __future__ import annotations

import math

import torch

COSINE_S = 0.008
ALPHA_BAR_RANGE = (1e-4, 0.9999)


def _cosine_min_var() -> float:
    return math.cos(math.pi / 2 * COSINE_S / (1 + COSINE_S)) ** 2


def noise_schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, t_cond), float64 tensors of length steps + 1 on the grid r_k = linspace(1, 0, steps + 1).

    x_t = a * x0 + b * eps; t_cond is the `timestep_ratio` fed to the prior.
    """
    if steps < 1:
        raise ValueError(f"noise_schedule: steps must be >= 1, got {steps}")
    if not shift > 0:
        raise ValueError(f"noise_schedule: shift must be > 0, got {shift}")
    s = COSINE_S
    m = _cosine_min_var()
    r = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    alpha_bar = (torch.cos(math.pi / 2 * (r + s) / (1 + s)) ** 2 / m).clamp(*ALPHA_BAR_RANGE)
    # The clamp limits are those of the unshifted schedule (GDF computes them once with shift 1).
    low, high = (math.log(v / (1 - v)) for v in ALPHA_BAR_RANGE)
    log_snr = (torch.logit(alpha_bar) + 2 * math.log(1 / shift)).clamp(low, high)
    a = torch.sigmoid(log_snr).sqrt()
    b = torch.sigmoid(-log_snr).sqrt()
    t_cond = ((torch.sigmoid(log_snr) * m).sqrt().acos() * (2 / math.pi) * (1 + s) - s).clamp(0.0, 1.0)
    return a, b, t_cond
