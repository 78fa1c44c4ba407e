"""Stage C schedule (spec 2.1), CFG with per-sample rescale, and the settings' defaults."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from pipeline.models.presets import PresetConfig
from pipeline.rbmod.guidance import guided_epsilon
from pipeline.rbmod.schedule import noise_schedule
from pipeline.rbmod.settings import RBModSettings


def schedule_by_hand(r: float, shift: float) -> tuple[float, float, float]:
    """Spec 2.1 for one grid point, in plain float math."""
    s = 0.008
    m = math.cos(math.pi / 2 * s / (1 + s)) ** 2
    alpha_bar = min(max(math.cos(math.pi / 2 * (r + s) / (1 + s)) ** 2 / m, 1e-4), 0.9999)
    limit = math.log(0.9999 / 1e-4)  # logit(0.9999) = -logit(1e-4)
    lam = min(max(math.log(alpha_bar / (1 - alpha_bar)) + 2 * math.log(1 / shift), -limit), limit)
    sig = 1 / (1 + math.exp(-lam))
    t_cond = min(max(2 / math.pi * math.acos(math.sqrt(sig * m)) * (1 + s) - s, 0.0), 1.0)
    return math.sqrt(sig), math.sqrt(1 - sig), t_cond


@pytest.mark.parametrize("shift", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_schedule_matches_the_formulas(steps, shift):
    a, b, t_cond = noise_schedule(steps, shift)
    assert a.shape == b.shape == t_cond.shape == (steps + 1,)
    for k in range(steps + 1):
        r = 1 - k / steps
        expected = schedule_by_hand(r, shift)
        assert (a[k].item(), b[k].item(), t_cond[k].item()) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(a**2 + b**2, torch.ones_like(a))  # variance preserving


def test_shift_two_moves_the_timestep_away_from_r():
    a, b, t_cond = noise_schedule(2, 2.0)  # grid 1, 0.5, 0
    assert t_cond[1].item() == pytest.approx(schedule_by_hand(0.5, 2.0)[2], abs=1e-12)
    assert t_cond[1].item() == pytest.approx(0.7057, abs=5e-4)  # shift 2 -> noisier than r = 0.5
    _, _, unshifted = noise_schedule(2, 1.0)
    assert unshifted[1].item() == pytest.approx(0.5, abs=1e-6)  # with shift 1, t_cond ~= r


def test_schedule_endpoints_are_clamped_with_the_unshifted_limits():
    a, b, _ = noise_schedule(20, 2.0)
    # r = 1: alpha_bar clamps at 1e-4 and the shifted logit at logit(1e-4): a = sqrt(1e-4)
    assert a[0].item() == pytest.approx(0.01, rel=1e-9)
    # r = 0: alpha_bar = 0.9999 shifted down by 2 ln 2, inside the limits
    sig = 1 / (1 + math.exp(-(math.log(0.9999 / 1e-4) - 2 * math.log(2))))
    assert a[-1].item() == pytest.approx(math.sqrt(sig), rel=1e-9)
    assert torch.all(a[1:] >= a[:-1])  # less noise at every step


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        noise_schedule(0, 2.0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        noise_schedule(4, 0.0)


def test_cfg_without_rescale_is_plain_guidance():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(guided_epsilon(cond, uncond, 4.0, 0.0), uncond + 4.0 * (cond - uncond))


def test_cfg_rescale_uses_each_samples_own_std():
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(3, 4, 5, 5, generator=g) * torch.tensor([1.0, 3.0, 0.2]).view(3, 1, 1, 1)
    uncond = torch.randn(3, 4, 5, 5, generator=g)
    got = guided_epsilon(cond, uncond, 4.0, 0.7)
    for i in range(3):
        c, u = cond[i].double(), uncond[i].double()
        guided = u + 4.0 * (c - u)
        expected = 0.7 * guided * c.std() / guided.std() + 0.3 * guided
        torch.testing.assert_close(got[i].double(), expected, rtol=1e-5, atol=1e-6)
        # a sample's result does not depend on its batch, bit for bit
        assert torch.equal(got[i : i + 1], guided_epsilon(cond[i : i + 1], uncond[i : i + 1], 4.0, 0.7))
    # the official whole-tensor std would couple the samples: clearly different here
    whole = uncond + 4.0 * (cond - uncond)
    official = 0.7 * whole * cond.std() / whole.std() + 0.3 * whole
    assert (official - got).abs().max() > 0.1


def test_settings_defaults_are_the_official_app_values():
    s = RBModSettings()
    assert (s.guidance_scale, s.cfg_rescale, s.shift) == (4.0, 0.7, 2.0)
    assert (s.eta, s.soc_iterations, s.lambda_style, s.lambda_content) == (0.1, 3, 1.0, 1.0)
    config = PresetConfig(name="stable-cascade")
    stylize = s.resolve("stylization", config)
    compose = s.resolve("composition", config)
    assert (stylize.steps, stylize.tau, stylize.sampler, stylize.lambda_proximal) == (20, 20, "ddim", 1.0)
    assert (compose.sampler, compose.lambda_proximal) == ("ddpm", 0.0)
    assert (stylize.resolution, stylize.stage_b_steps, stylize.stage_b_guidance_scale) == (1024, 10, 1.1)
    explicit = RBModSettings(steps=8, tau=3, sampler="ddpm", lambda_proximal=0.5, stage_b_guidance_scale=0.0)
    resolved = explicit.resolve("stylization", config)
    assert (resolved.steps, resolved.tau, resolved.sampler, resolved.lambda_proximal) == (8, 3, "ddpm", 0.5)
    assert resolved.stage_b_guidance_scale == 0.0


@pytest.mark.parametrize("resolution, latent", [(1024, 24), (768, 18), (1280, 30), (1536, 36), (64, 2)])
def test_latent_size_follows_stable_cascade(resolution, latent):
    config = PresetConfig(name="stable-cascade")
    assert RBModSettings(resolution=resolution).latent_size(config) == latent == math.ceil(resolution / 42.67)


def test_settings_reject_unknown_and_out_of_range_fields():
    with pytest.raises(ValidationError, match="cfg_rho"):
        RBModSettings(cfg_rho=0.7)
    with pytest.raises(ValidationError, match="cfg_rescale"):
        RBModSettings(cfg_rescale=1.5)
    with pytest.raises(ValidationError, match="sampler"):
        RBModSettings(sampler="euler")
