"""The batch API on the tiny preset: determinism, batch invariance, composition, weighted styles, caching,
recorded parameters and clear errors for bad requests."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from test_rbmod_soc import make_conditions, one_torch_thread, pattern_image  # noqa: F401

from pipeline.rbmod.afa import install_afa
from pipeline.rbmod.generate import GenerationRequest, RBModGenerator, RBModSettings, StyleRef
from pipeline.rbmod.stage_c import sample_stage_c

pytest_plugins = ["rbmod_fixtures"]  # the session's tiny preset (tiny_models)

STYLE_A, STYLE_B, CONTENT = pattern_image(11), pattern_image(12, size=(128, 80)), pattern_image(13)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image)


def request(prompt="a horse in watercolor style", styles=None, seed=0, **kwargs) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, styles=styles or (StyleRef(STYLE_A),), seed=seed, **kwargs)


@pytest.fixture(scope="module")
def generator(tiny_models):
    return RBModGenerator(tiny_models)


def test_same_seed_same_image_different_seed_different_image(tiny_models, generator):
    first = generator.generate([request(seed=3)])[0]
    again = RBModGenerator(tiny_models).generate([request(seed=3)])[0]
    other = generator.generate([request(seed=4)])[0]
    assert first.image.size == (128, 128)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_batch_of_four_equals_four_batches_of_one_bit_for_bit(generator):
    requests = [
        request(seed=1),
        request("a castle on a hill", seed=2, styles=(StyleRef(STYLE_B),)),
        request(seed=3, styles=(StyleRef(STYLE_A), StyleRef(STYLE_B, 0.5))),
        request("a boat", seed=1),
    ]
    batched = generator.generate(requests)
    singles = [generator.generate([r])[0] for r in requests]
    for i, (b, s) in enumerate(zip(batched, singles, strict=True)):
        assert np.array_equal(pixels(b), pixels(s)), f"request {i}"
        assert b.params == s.params


@pytest.mark.parametrize("soc_iterations", [0, 3])
def test_batched_stage_c_matches_per_sample_runs(tiny_models, soc_iterations):
    """With the batch run at once (the GPU path), per-sample CFG std and the summed SOC loss keep each
    sample's math its own: equal to batch-of-1 runs up to float rounding. (With SOC, sign-like Adam steps
    can turn a rounding difference into a step of a few lr, hence the looser bound.)"""
    m = tiny_models
    styles, prompts, seeds = [STYLE_A, STYLE_B, STYLE_A], ["a horse", "a castle", "a boat"], (7, 8, 9)
    state = install_afa(m.prior)
    settings = RBModSettings(steps=3, soc_iterations=soc_iterations).resolve("stylization", m.config)
    cond = make_conditions(m, prompts, styles)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    batched = sample_stage_c(m, state, cond, settings, generators, (4, 4))
    for i, seed in enumerate(seeds):
        one = make_conditions(m, prompts[i : i + 1], styles[i : i + 1])
        single = sample_stage_c(m, state, one, settings, [torch.Generator().manual_seed(seed)], (4, 4))
        # the random tiny prior's latents reach ~1e2 (x0 = (x - b eps) / a, a = 0.01 at the first step)
        scale = single.abs().max().item()
        atol = max(0.5, 1e-3 * scale) if soc_iterations else 1e-5 * scale
        torch.testing.assert_close(batched[i : i + 1], single, rtol=0, atol=atol)


def test_composition_runs_ddpm_with_four_branch_afa(tiny_models, generator):
    seen = []
    hook = tiny_models.prior.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((generator.afa_state.mode, tuple(kwargs["clip_img"].shape))),
        with_kwargs=True,
    )
    try:
        composed = generator.generate([request("a dog", seed=5, content=CONTENT)])[0]
    finally:
        hook.remove()
    steps = tiny_models.config.stage_c_steps
    assert seen == [("content_style", (2, 2, 32))] * steps  # [cond; uncond] x [content, style] tokens
    assert generator.afa_state.mode == "off"
    assert composed.params["mode"] == "composition"
    assert (composed.params["sampler"], composed.params["lambda_proximal"]) == ("ddpm", 0.0)
    stylized = generator.generate([request("a dog", seed=5)])[0]
    assert stylized.params["sampler"] == "ddim"
    assert not np.array_equal(pixels(composed), pixels(stylized))


def test_weighted_styles_mix(generator):
    single = generator.generate([request(seed=6)])[0]
    with_zero = generator.generate(
        [request(seed=6, styles=(StyleRef(STYLE_A, 1.0), StyleRef(STYLE_B, 0.0)))]
    )[0]
    assert np.array_equal(pixels(single), pixels(with_zero))
    mixed = generator.generate([request(seed=6, styles=(StyleRef(STYLE_A, 1.0), StyleRef(STYLE_B, 1.0)))])[0]
    scaled = generator.generate([request(seed=6, styles=(StyleRef(STYLE_A, 2.0), StyleRef(STYLE_B, 2.0)))])[0]
    only_b = generator.generate([request(seed=6, styles=(StyleRef(STYLE_B),))])[0]
    assert np.array_equal(pixels(mixed), pixels(scaled))  # weights are normalized
    assert not np.array_equal(pixels(mixed), pixels(single))
    assert not np.array_equal(pixels(mixed), pixels(only_b))
    assert mixed.params["style_weights"] == [1.0, 1.0]


def test_style_features_are_computed_once_per_image(tiny_models):
    gen = RBModGenerator(tiny_models)
    copy_of_a = Image.fromarray(np.asarray(STYLE_A))  # another object, same pixels
    requests = [
        request(seed=s, styles=(StyleRef(img),)) for s, img in enumerate([STYLE_A, STYLE_B, copy_of_a])
    ]
    gen.generate(requests)
    assert gen.references.computed == 2
    gen.generate([request(seed=9, styles=(StyleRef(STYLE_B),))])
    assert gen.references.computed == 2


def test_requests_with_different_overrides_in_one_call(generator):
    requests = [
        request(seed=1, overrides={"steps": 2}, uid="short"),
        request(seed=1, uid="default"),
        request(seed=1, overrides={"steps": 2, "guidance_scale": 2.0}, uid="weak-cfg"),
    ]
    together = generator.generate(requests)
    apart = [generator.generate([r])[0] for r in requests]
    for t, a in zip(together, apart, strict=True):
        assert np.array_equal(pixels(t), pixels(a))
    assert [r.params["steps"] for r in together] == [2, 4, 2]
    assert [r.params["guidance_scale"] for r in together] == [4.0, 4.0, 2.0]
    assert not np.array_equal(pixels(together[0]), pixels(together[1]))


def test_params_record_the_settings_used(tiny_models):
    gen = RBModGenerator(tiny_models, RBModSettings(eta=0.05, stage_b_steps=3))
    result = gen.generate([request(seed=42, overrides={"cfg_rescale": 0.5})])[0]
    assert result.params == {
        "generator": "rbmod",
        "preset": "tiny",
        "mode": "stylization",
        "sampler": "ddim",
        "steps": 4,
        "guidance_scale": 4.0,
        "cfg_rescale": 0.5,
        "shift": 2.0,
        "eta": 0.05,
        "soc_iterations": 3,
        "tau": 4,
        "lambda_style": 1.0,
        "lambda_content": None,
        "lambda_proximal": 1.0,
        "afa": True,
        "seed": 42,
        "resolution": [128, 128],
        "latent_size": [4, 4],
        "descriptor": "csd",
        "style_weights": [1.0],
        "stage_b_steps": 3,
        "stage_b_guidance_scale": 1.1,
        "stage_b_cfg_rescale": 0.7,  # the official sampler's default cfg_rho, which the app keeps at Stage B
        "stage_a_scale_factor": 0.43,  # the official StageA's, the preset default
    }
    scaled = gen.generate([request(seed=42, overrides={"stage_a_scale_factor": 0.3764})])[0]
    assert scaled.params["stage_a_scale_factor"] == 0.3764


def truncated_png() -> Image.Image:
    buffer = io.BytesIO()
    STYLE_A.save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()[:200]))  # opens lazily; fails on load


@pytest.mark.parametrize(
    "bad, message",
    [
        (request("  ", uid="u1"), r"request 'u1': field 'prompt' is empty"),
        (GenerationRequest("a cat", (), 0, uid="u2"), r"request 'u2': field 'styles' has no style reference"),
        (
            request(styles=(StyleRef(STYLE_A, 0.0),), uid="u3"),
            r"request 'u3': field 'styles' weights must sum",
        ),
        (
            request(styles=(StyleRef(STYLE_A, 1.0), StyleRef(STYLE_B, -2.0)), uid="u4"),
            r"request 'u4': field 'styles' weights must sum to > 0",
        ),
        (
            request(styles=(StyleRef(truncated_png()),), uid="u5"),
            r"request 'u5': field 'styles\[0\].image' cannot",
        ),
        (
            request(styles=(StyleRef("style.png"),), uid="u6"),
            r"'u6': field 'styles\[0\].image' must be a PIL image",
        ),
        (request(content=truncated_png(), uid="u7"), r"request 'u7': field 'content' cannot be read"),
        (
            request(overrides={"cfg_rho": 0.7}, uid="u8"),
            r"request 'u8': field 'overrides' is invalid.*cfg_rho",
        ),
        (
            request(styles=(StyleRef(STYLE_A, float("nan")),)),
            r"request #1: field 'styles\[0\].weight' must be",
        ),
        (request(seed="7", uid="u9"), r"request 'u9': field 'seed' must be an int, got str"),
        (request(overrides=[("steps", 2)], uid="u10"), r"request 'u10': field 'overrides' must be a mapping"),
        (
            request(styles=(StyleRef(Image.new("RGB", (4000, 1))),), uid="u11"),
            r"request 'u11': field 'styles\[0\].image' has an aspect ratio over 8:1 \(4000x1\)",
        ),
    ],
    ids=[
        "empty-prompt",
        "no-style",
        "zero-weight",
        "negative-total",
        "truncated",
        "not-image",
        "content",
        "override",
        "nan-weight",
        "seed",
        "override-type",
        "sliver",
    ],
)
def test_bad_requests_name_the_request_and_field(generator, bad, message):
    assert generator.generate([]) == []
    good = request(seed=0)
    with pytest.raises(ValueError, match=message):
        generator.generate([good, bad])
