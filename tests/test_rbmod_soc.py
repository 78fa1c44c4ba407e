"""SOC (spec 2.2-2.4): the controller on small stand-in modules, then inside the Stage C loop on the tiny
preset, against an uncontrolled loop written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pipeline.rbmod.afa import install_afa
from pipeline.rbmod.conditioning import encode_prompts, mix_styles, reference_features
from pipeline.rbmod.guidance import guided_epsilon
from pipeline.rbmod.schedule import noise_schedule
from pipeline.rbmod.settings import RBModSettings
from pipeline.rbmod.soc import DescriptorTargets, SOCWeights, descriptor_loss, soc_lr, soc_refine
from pipeline.rbmod.stage_c import StageCConditions, sample_stage_c

pytest_plugins = ["rbmod_fixtures"]  # the session's tiny preset (tiny_models)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny models are all per-op overhead: one thread is faster, and much faster on a shared,
    oversubscribed CPU where a second OpenMP thread spins waiting for a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- stand-in modules ---------------------------------------------------------------------------------


class StandInPreviewer(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(16, 8, 3, padding=1), nn.GELU(), nn.ConvTranspose2d(8, 3, 2, stride=2)
        )

    def forward(self, latent):
        return self.net(latent)


class StandInDescriptor(nn.Module):
    def __init__(self, pixels: int, dim: int = 12):
        super().__init__()
        self.content_head = nn.Linear(pixels, dim)
        self.style_head = nn.Linear(pixels, dim)

    def forward(self, images):
        flat = images.flatten(1)
        return F.normalize(self.content_head(flat), dim=-1), F.normalize(self.style_head(flat), dim=-1)


@pytest.fixture(scope="module")
def stand_ins():
    torch.manual_seed(0)
    previewer = StandInPreviewer().eval().requires_grad_(False)
    descriptor = StandInDescriptor(3 * 8 * 8).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 16, 4, 4, generator=g)
    targets = DescriptorTargets(
        style=F.normalize(torch.randn(3, 12, generator=g), dim=-1),
        content=F.normalize(torch.randn(3, 12, generator=g), dim=-1),
    )
    return previewer, descriptor, x0, targets


def test_lr_decays_linearly_from_eta():
    assert [soc_lr(0.1, k, 20) for k in (0, 10, 19)] == pytest.approx([0.1, 0.05, 0.005])


@pytest.mark.parametrize(
    "weights", [SOCWeights(0.0, 0.0, 0.0), SOCWeights(0.0, 0.0, 1.0)], ids=["all-zero", "proximal-only"]
)
def test_soc_without_descriptor_terms_leaves_x0_unchanged(stand_ins, weights):
    previewer, descriptor, x0, targets = stand_ins
    out = soc_refine(
        x0, lr=0.1, iterations=3, previewer=previewer, descriptor=descriptor, targets=targets, weights=weights
    )
    assert torch.equal(out, x0)  # zero gradient: Adam moves nothing (proximal grad is 0 at z = x0)
    assert not weights.moves_latent(composition=True)


@pytest.mark.parametrize("composition", [False, True])
def test_soc_lowers_the_descriptor_loss(stand_ins, composition):
    previewer, descriptor, x0, targets = stand_ins
    if not composition:
        targets = DescriptorTargets(style=targets.style)
    weights = SOCWeights(1.0, 1.0, 0.0)
    out = soc_refine(
        x0,
        lr=0.05,
        iterations=3,
        previewer=previewer,
        descriptor=descriptor,
        targets=targets,
        weights=weights,
    )
    before = descriptor_loss(x0, x0, previewer, descriptor, targets, weights)
    after = descriptor_loss(out, x0, previewer, descriptor, targets, weights)
    assert torch.all(after < before)


def test_first_adam_step_moves_every_element_by_lr(stand_ins):
    previewer, descriptor, x0, targets = stand_ins
    out = soc_refine(
        x0,
        lr=0.05,
        iterations=1,
        previewer=previewer,
        descriptor=descriptor,
        targets=targets,
        weights=SOCWeights(1.0, 1.0, 1.0),
    )
    # a fresh Adam's first step is lr * g / (|g| + eps) (bias corrections cancel): sign descent
    z = x0.clone().requires_grad_(True)
    loss = descriptor_loss(z, x0, previewer, descriptor, targets, SOCWeights(1.0, 1.0, 1.0)).sum()
    (grad,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(out, x0 - 0.05 * grad / (grad.abs() + 1e-8), rtol=1e-6, atol=1e-7)


def test_summed_loss_gives_each_sample_its_batch_of_one_gradient(stand_ins):
    previewer, descriptor, x0, targets = stand_ins
    weights = SOCWeights(1.0, 1.0, 1.0)
    z = (x0 + 0.1).requires_grad_(True)
    (batch_grad,) = torch.autograd.grad(
        descriptor_loss(z, x0, previewer, descriptor, targets, weights).sum(), z
    )
    for i in range(3):
        zi = (x0[i : i + 1] + 0.1).requires_grad_(True)
        one = DescriptorTargets(targets.style[i : i + 1], targets.content[i : i + 1])
        (grad,) = torch.autograd.grad(
            descriptor_loss(zi, x0[i : i + 1], previewer, descriptor, one, weights).sum(), zi
        )
        torch.testing.assert_close(batch_grad[i : i + 1], grad, rtol=1e-5, atol=1e-7)
    # and the loss terms are the spec's: 1 - cos for each head, MSE-mean for the proximal term
    with torch.no_grad():
        content, style = descriptor(previewer(z))
        expected = (
            (1 - (style * targets.style).sum(-1))
            + (1 - (content * targets.content).sum(-1))
            + ((z - x0) ** 2).mean(dim=(1, 2, 3))
        )
        got = descriptor_loss(z, x0, previewer, descriptor, targets, weights)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_soc_sends_gradients_to_the_latent_only(stand_ins):
    previewer, descriptor, x0, targets = stand_ins
    soc_refine(
        x0,
        lr=0.1,
        iterations=2,
        previewer=previewer,
        descriptor=descriptor,
        targets=targets,
        weights=SOCWeights(1.0, 1.0, 1.0),
    )
    for module in (previewer, descriptor):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())


# --- inside the Stage C loop, tiny preset ----------------------------------------------------------


def pattern_image(seed: int, size=(96, 128)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def make_conditions(models, prompts, styles, contents=None, afa=True) -> StageCConditions:
    text, pooled = encode_prompts(models, prompts)
    empty_text, empty_pooled = encode_prompts(models, [""])
    style_feats = [reference_features(models, image) for image in styles]
    mixes = [mix_styles([f], [1.0]) for f in style_feats]
    tokens = [[m.clip_embedding] for m in mixes]
    content_targets = None
    if contents is not None:
        content_feats = [reference_features(models, image) for image in contents]
        tokens = [[c.clip_embedding, *t] for c, t in zip(content_feats, tokens, strict=True)]
        content_targets = torch.stack([c.content for c in content_feats])
    batch = len(prompts)
    mode = "content_style" if contents is not None else "style"
    return StageCConditions(
        clip_text=text,
        clip_text_pooled=pooled,
        clip_img=torch.stack([torch.stack(t) for t in tokens]),
        uncond_clip_text=empty_text.expand(batch, -1, -1),
        uncond_clip_text_pooled=empty_pooled.expand(batch, -1, -1),
        targets=DescriptorTargets(torch.stack([m.style_target for m in mixes]), content_targets),
        afa_mode=mode if afa else "off",
    )


def run(models, cond, seed=0, composition=False, on_step=None, **overrides):
    mode = "composition" if composition else "stylization"
    settings = RBModSettings(**overrides).resolve(mode, models.config)
    state = install_afa(models.prior)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(cond.clip_text.shape[0])]
    side = models.config.stage_c_latent_size
    return sample_stage_c(models, state, cond, settings, generators, (side, side), on_step=on_step)


def uncontrolled_by_hand(models, cond, seed, steps, sampler):
    """The loop of spec 7 without SOC, written out: the reference for 'SOC off' runs."""
    a, b, t_cond = noise_schedule(steps, 2.0)
    g = torch.Generator().manual_seed(seed)
    side = models.config.stage_c_latent_size
    x = torch.randn(1, 16, side, side, generator=g)
    state = install_afa(models.prior)
    state.set_mode(cond.afa_mode)
    try:
        for k in range(steps):
            with torch.no_grad():
                out = models.prior(
                    sample=torch.cat([x, x]),
                    timestep_ratio=torch.full((2,), float(t_cond[k])),
                    clip_text_pooled=torch.cat([cond.clip_text_pooled, cond.uncond_clip_text_pooled]),
                    clip_text=torch.cat([cond.clip_text, cond.uncond_clip_text]),
                    clip_img=torch.cat([cond.clip_img, torch.zeros_like(cond.clip_img)]),
                ).sample
            eps = guided_epsilon(out[:1], out[1:], 4.0, 0.7)
            x0 = (x - float(b[k]) * eps) / float(a[k])
            if k == steps - 1:
                return x0
            ak, bk, an, bn = (float(v) for v in (a[k], b[k], a[k + 1], b[k + 1]))
            if sampler == "ddim":
                x = an * x0 + bn * eps
            else:
                sigma = bn / bk * (1 - ak**2 / an**2) ** 0.5
                noise = torch.randn(1, 16, side, side, generator=g)
                x = an * x0 + (bn**2 - sigma**2) ** 0.5 * eps + sigma * noise
    finally:
        state.set_mode("off")


@pytest.fixture(scope="module")
def stylize_cond(tiny_models):
    return make_conditions(tiny_models, ["a horse in watercolor style"], [pattern_image(1)])


@pytest.fixture(scope="module")
def compose_cond(tiny_models):
    return make_conditions(tiny_models, ["a dog"], [pattern_image(2)], contents=[pattern_image(3)])


def test_soc_lowers_the_style_loss_at_every_step(tiny_models, stylize_cond):
    # Without the proximal term: on the tiny 16x4x4 latent, MSE-mean's gradient is 36x stronger than on
    # the real 16x24x24 one and would dominate the style term.
    m = tiny_models
    records = []
    final = run(m, stylize_cond, steps=4, on_step=records.append, lambda_proximal=0.0)
    assert len(records) == 4

    def style_loss(latent):
        with torch.no_grad():
            _, style = m.descriptor(m.previewer(latent))
        return (1 - F.cosine_similarity(style, stylize_cond.targets.style)).item()

    for record in records:
        assert style_loss(record.x0_controlled) < style_loss(record.x0), f"step {record.step}"
    uncontrolled = run(m, stylize_cond, steps=4, soc_iterations=0)
    assert style_loss(final) < style_loss(uncontrolled)
    assert torch.equal(final, records[-1].x0_controlled)  # the output is the last optimized x0


@pytest.mark.parametrize(
    "overrides",
    [
        dict(soc_iterations=0),
        dict(lambda_style=0.0),
        dict(tau=0),
        dict(lambda_style=0.0, lambda_proximal=0.0),
    ],
    ids=["M=0", "lambda_s=0", "tau=0", "lambda_s=lambda_p=0"],
)
def test_soc_off_reproduces_the_uncontrolled_ddim_sampler(tiny_models, stylize_cond, overrides):
    got = run(tiny_models, stylize_cond, seed=5, steps=4, **overrides)
    expected = uncontrolled_by_hand(tiny_models, stylize_cond, seed=5, steps=4, sampler="ddim")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got, run(tiny_models, stylize_cond, seed=5, steps=4, soc_iterations=0))
    assert not torch.equal(got, run(tiny_models, stylize_cond, seed=5, steps=4))  # SOC does move it


def test_composition_soc_off_reproduces_the_uncontrolled_ddpm_sampler(tiny_models, compose_cond):
    got = run(
        tiny_models, compose_cond, seed=9, composition=True, steps=4, lambda_style=0.0, lambda_content=0.0
    )
    expected = uncontrolled_by_hand(tiny_models, compose_cond, seed=9, steps=4, sampler="ddpm")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with_soc = run(tiny_models, compose_cond, seed=9, composition=True, steps=4)
    assert not torch.equal(got, with_soc)


def test_composition_soc_lowers_style_and_content_loss(tiny_models, compose_cond):
    m = tiny_models
    records = []
    run(m, compose_cond, composition=True, steps=4, on_step=records.append)

    def loss(latent):
        with torch.no_grad():
            content, style = m.descriptor(m.previewer(latent))
        targets = compose_cond.targets
        return (
            2 - F.cosine_similarity(style, targets.style) - F.cosine_similarity(content, targets.content)
        ).item()

    for record in records:
        assert loss(record.x0_controlled) < loss(record.x0), f"step {record.step}"
