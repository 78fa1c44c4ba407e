"""Stage B + A against an independent oracle: the official GDF DDPM loop written out here in float64 from
the formulas (cosine schedule clamped to [1e-4, 0.9999], shift 1, CosineTNoiseCond, CFG with std rescale,
DDPM update, last step's x0 returned, Stage A at 0.43), calling only the decoder UNet itself.
"""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch

from pipeline.rbmod.conditioning import run_text_encoder
from pipeline.rbmod.decode import decode, decode_latents, sample_stage_b

pytest_plugins = ["rbmod_fixtures"]  # the session-wide tiny_models / tiny_cache_dir fixtures
pytestmark = pytest.mark.usefixtures("torch_single_thread")

COSINE_S = 0.008
OFFICIAL_RHO = 0.7
OFFICIAL_STAGE_A_SCALE = 0.43


def embeddings(batch: int, size: int = 4) -> torch.Tensor:
    return torch.randn(batch, 16, size, size, generator=torch.Generator().manual_seed(11))


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours.double() - expected).norm() / expected.norm())


def gdf_schedule(steps: int) -> list[tuple[float, float, float]]:
    """(a, b, t_cond) at r = 1 - k/steps, k = 0..steps: GDF's CosineSchedule (shift 1), VPScaler and
    CosineTNoiseCond, in plain float64 scalars."""
    s = COSINE_S
    min_var = math.cos(math.pi / 2 * s / (1 + s)) ** 2
    rows = []
    for k in range(steps + 1):
        r = 1 - k / steps
        var = min(max(math.cos(math.pi / 2 * (r + s) / (1 + s)) ** 2 / min_var, 1e-4), 0.9999)
        log_snr = math.log(var / (1 - var))
        alpha_sq = 1 / (1 + math.exp(-log_snr))
        t_cond = math.acos(math.sqrt(alpha_sq * min_var)) * 2 / math.pi * (1 + s) - s
        rows.append((math.sqrt(alpha_sq), math.sqrt(1 - alpha_sq), min(max(t_cond, 0.0), 1.0)))
    return rows


def oracle_stage_b(m, emb, prompts, seeds, steps, w, rho, per_sample_std, inputs=None):
    """Every step's (t_cond, x, eps, x0, next x) and the returned latent, float64. With `inputs`, step k
    starts from inputs[k] instead of the oracle's own previous update (teacher forcing: each step is then
    checked on its own, without the fp32 rounding of earlier steps amplified through the UNet)."""

    def pooled(texts):
        output = run_text_encoder(m.decoder_tokenizer, m.decoder_text_encoder, texts, m.device)
        return output.text_embeds[:, None]

    batch = len(prompts)
    gens = generators(*seeds)
    side = int(emb.shape[2] * m.config.stage_b_latent_scale)
    shape = (1, m.decoder.config.in_channels, side, side)

    def draw():  # each sample's own generator, as the sampler uses them
        return torch.cat([torch.randn(shape, generator=g) for g in gens]).double()

    def std(x):
        if per_sample_std:
            return torch.stack([sample.std() for sample in x]).view(-1, 1, 1, 1)
        return x.std()  # the official whole-tensor std

    schedule = gdf_schedule(steps)
    text = torch.cat([pooled(prompts), pooled([""] * batch)])
    effnet = torch.cat([emb, torch.zeros_like(emb)])
    x, rows = draw(), []
    for k in range(steps):
        if inputs is not None:
            x = inputs[k].double()
        a, b, t_cond = schedule[k]
        with torch.no_grad():
            out = m.decoder(
                sample=torch.cat([x, x]).float(),
                timestep_ratio=torch.full((2 * batch,), t_cond),
                clip_text_pooled=text,
                effnet=effnet,
                return_dict=False,
            )[0].double()
        cond, uncond = out.chunk(2)
        cfg = uncond + w * (cond - uncond)
        eps = rho * cfg * std(cond) / (std(cfg) + 1e-9) + (1 - rho) * cfg
        x0 = (x - b * eps) / a
        x_in = x
        if k < steps - 1:
            a_next, b_next, _ = schedule[k + 1]
            sigma = math.sqrt(b_next**2 / b**2) * math.sqrt(1 - a**2 / a_next**2)
            x = x0 * a_next + math.sqrt(b_next**2 - sigma**2) * eps + sigma * draw()
        rows.append((t_cond, x_in, eps, x0, x if k < steps - 1 else None))
    return rows, rows[-1][3]


def record_decoder_timesteps(decoder, run):
    seen = []
    handle = decoder.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["timestep_ratio"].clone()), with_kwargs=True
    )
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


@pytest.mark.parametrize(
    ("seeds", "w", "per_sample_std"),
    [((5,), 1.1, False), ((6, 7), 3.0, True)],
    ids=["official-batch1-cfg1.1", "batch2-cfg3-per-sample-std"],
)
def test_stage_b_follows_the_gdf_ddpm_loop_step_by_step(tiny_models, seeds, w, per_sample_std):
    m, steps = tiny_models, 4
    emb = embeddings(len(seeds))
    prompts = ["a blue bird", "a cat in ink"][: len(seeds)]
    ours_rows = []
    timesteps, latent = record_decoder_timesteps(
        m.decoder,
        lambda: sample_stage_b(m, emb, prompts, generators(*seeds), steps, w, OFFICIAL_RHO, ours_rows.append),
    )
    assert len(ours_rows) == len(timesteps) == steps

    # each step on its own, from the latent our sampler fed the decoder
    inputs = [row.x for row in ours_rows]
    forced, _ = oracle_stage_b(m, emb, prompts, seeds, steps, w, OFFICIAL_RHO, per_sample_std, inputs)
    assert abs(forced[0][0] - 1.0) > 5e-3  # the first step is t_cond(clamped alpha-bar), not r = 1
    for step, seen, (t_cond, _, eps, x0, update) in zip(ours_rows, timesteps, forced, strict=True):
        assert seen.dtype == torch.float32 and seen.shape == (2 * len(seeds),)
        assert torch.allclose(seen.double(), torch.full_like(seen.double(), t_cond), rtol=1e-6, atol=0)
        assert relative_error(step.eps, eps) < 1e-6, step.step  # guided, rescaled prediction
        assert relative_error(step.x0, x0) < 1e-6, step.step
        if update is not None:
            assert relative_error(ours_rows[step.step + 1].x, update) < 1e-6, step.step
    assert torch.equal(latent, ours_rows[-1].x0)  # the last step's x0 is what comes back

    # and the whole loop free-running from the same seeds
    free, expected = oracle_stage_b(m, emb, prompts, seeds, steps, w, OFFICIAL_RHO, per_sample_std)
    assert relative_error(ours_rows[0].x, free[0][1]) == 0  # the same initial noise draws
    assert relative_error(latent, expected) < 1e-6


def test_stage_b_rescale_and_stage_a_scale_are_applied(tiny_models):
    m = tiny_models
    emb = embeddings(1)
    plain = sample_stage_b(m, emb, ["a dog"], generators(3), 3, 3.0, 0.0)
    rescaled = sample_stage_b(m, emb, ["a dog"], generators(3), 3, 3.0, OFFICIAL_RHO)
    assert relative_error(plain, rescaled.double()) > 1e-3  # rho changes the result

    assert m.config.stage_a_scale_factor == OFFICIAL_STAGE_A_SCALE
    assert m.vqgan.config.scale_factor == OFFICIAL_STAGE_A_SCALE  # the tiny Stage A is built with it
    latent = sample_stage_b(m, emb, ["a dog"], generators(3), m.config.stage_b_steps, 1.1, OFFICIAL_RHO)
    with torch.no_grad():
        expected = m.vqgan.decode(latent * OFFICIAL_STAGE_A_SCALE).sample.clamp(0, 1)
        other = m.vqgan.decode(latent * 0.3764).sample.clamp(0, 1)
    assert torch.equal(decode_latents(m, emb, ["a dog"], generators(3)), expected)
    assert torch.equal(decode_latents(m, emb, ["a dog"], generators(3), scale_factor=0.3764), other)


def test_a_vqgan_config_that_disagrees_is_warned_about(tiny_cache_dir, tmp_path, caplog):
    from pipeline.models.loading import load_models
    from pipeline.models.tiny import ensure_tiny_cache, tiny_preset_config

    root = tmp_path / "tiny"
    shutil.copytree(ensure_tiny_cache(tiny_cache_dir), root)
    config_file = root / "stable-cascade" / "vqgan" / "config.json"
    config = json.loads(config_file.read_text())
    config["scale_factor"] = 0.3764  # diffusers' PaellaVQModel default
    config_file.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="pipeline.models.loading"):
        models = load_models(tiny_preset_config(root), device="cpu")
    assert models.config.stage_a_scale_factor == OFFICIAL_STAGE_A_SCALE
    warnings = [r.getMessage() for r in caplog.records if "scale_factor" in r.getMessage()]
    assert len(warnings) == 1 and "0.3764" in warnings[0] and "0.43" in warnings[0], warnings


def test_decode_is_batch_invariant_bit_for_bit_on_cpu(tiny_models):
    emb, prompts = embeddings(3), ["a red horse", "a cat in ink style", ""]
    together = decode_latents(tiny_models, emb, prompts, generators(1, 2, 3))
    alone = [
        decode_latents(tiny_models, emb[i : i + 1], prompts[i : i + 1], generators(s))
        for i, s in enumerate((1, 2, 3))
    ]
    assert torch.equal(together, torch.cat(alone))
    # the plain batched path differs only by float summation order
    batched = decode_latents(tiny_models, emb, prompts, generators(1, 2, 3), batch_invariant=False)
    assert torch.allclose(batched, together, atol=1e-4)


def test_decode_returns_pil_images_seeded_per_sample(tiny_models):
    m = tiny_models
    emb = embeddings(2)
    first = decode(m, emb, ["a dog", "a dog"], generators(7, 8))
    again = decode(m, emb, ["a dog", "a dog"], generators(7, 8))
    size = m.config.image_size
    assert [im.size for im in first] == [(size, size)] * 2 and first[0].mode == "RGB"
    assert [np.asarray(a).tobytes() for a in first] == [np.asarray(a).tobytes() for a in again]
    assert np.asarray(first[0]).tobytes() != np.asarray(first[1]).tobytes()  # different seeds
    no_cfg = decode_latents(m, emb[:1], ["a dog"], generators(7), guidance_scale=1.0)
    cfg = decode_latents(m, emb[:1], ["a dog"], generators(7))
    assert not torch.equal(no_cfg, cfg)  # CFG 1.1 runs the unconditional branch


def test_decode_rejects_mismatched_inputs(tiny_models):
    with pytest.raises(ValueError, match="2 prompts and 1 generators"):
        decode(tiny_models, embeddings(2), ["a", "b"], generators(1))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        decode(tiny_models, embeddings(1), ["a"], generators(1), steps=0)
