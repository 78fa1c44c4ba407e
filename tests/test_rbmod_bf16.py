"""The real preset runs the prior and decoder in bf16 (CUDA). The timestep ratio must still reach their
sinusoidal embedding in fp32, as in the official code (fp32 r under bf16 autocast): bf16 keeps 8 bits of
r, and the embedding multiplies r by 10000, so a bf16 r scrambles its high-frequency terms. Checked on
CPU with bf16 copies of the tiny models against an embedding computed here in float64."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from diffusers.models.unets.unet_stable_cascade import SDCascadeTimestepBlock

from pipeline.rbmod.afa import install_afa
from pipeline.rbmod.decode import decode_latents
from pipeline.rbmod.schedule import noise_schedule
from pipeline.rbmod.settings import RBModSettings
from pipeline.rbmod.soc import DescriptorTargets
from pipeline.rbmod.stage_c import StageCConditions, predict_eps

pytest_plugins = ["rbmod_fixtures"]  # the session's tiny preset (tiny_models)


@pytest.fixture(scope="module")
def bf16_models(tiny_models):
    bf16 = torch.bfloat16
    m = tiny_models
    return dataclasses.replace(
        m,
        dtype=bf16,
        prior=copy.deepcopy(m.prior).to(bf16),
        decoder=copy.deepcopy(m.decoder).to(bf16),
        decoder_text_encoder=copy.deepcopy(m.decoder_text_encoder).to(bf16),
        vqgan=copy.deepcopy(m.vqgan).to(bf16),
    )


def sinusoidal_embedding(ratios: list[float], dim: int) -> torch.Tensor:
    """StableCascadeUNet's timestep embedding of r * 10000, in float64."""
    r = torch.tensor(ratios, dtype=torch.float64)[:, None] * 10000
    freqs = torch.exp(-torch.arange(dim // 2, dtype=torch.float64) * math.log(10000) / (dim // 2 - 1))
    return torch.cat([(r * freqs).sin(), (r * freqs).cos()], dim=1)


def first_timestep_embeddings(unet, run) -> list[torch.Tensor]:
    """The r embedding handed to the unet's first timestep block, at every call made by `run()`."""
    block = next(m for m in unet.modules() if isinstance(m, SDCascadeTimestepBlock))
    seen = []
    handle = block.register_forward_pre_hook(lambda _module, args: seen.append(args[1].float()))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_bf16_prior_sees_the_fp32_timestep_embedding(bf16_models):
    m = bf16_models
    dim = m.prior.config.timestep_ratio_embedding_dim
    _, _, t_cond = noise_schedule(20, 2.0)
    k = 7  # any step of the shifted schedule: t_cond is not a bf16 number
    assert float(t_cond[k]) != float(t_cond[k].to(torch.bfloat16))
    text, pooled = m.prior.config.clip_text_in_channels, m.prior.config.clip_text_pooled_in_channels
    gen = torch.Generator().manual_seed(0)
    cond = StageCConditions(
        clip_text=torch.randn(1, 77, text, generator=gen).to(torch.bfloat16),
        clip_text_pooled=torch.randn(1, 1, pooled, generator=gen).to(torch.bfloat16),
        clip_img=torch.randn(1, 1, m.prior.config.clip_image_in_channels, generator=gen).to(torch.bfloat16),
        uncond_clip_text=torch.zeros(1, 77, text, dtype=torch.bfloat16),
        uncond_clip_text_pooled=torch.zeros(1, 1, pooled, dtype=torch.bfloat16),
        targets=DescriptorTargets(style=torch.zeros(1, 8)),
        afa_mode="style",
    )
    x = torch.randn(1, 16, 4, 4, generator=gen)
    state = install_afa(m.prior)
    eps = []
    seen = first_timestep_embeddings(
        m.prior, lambda: eps.append(predict_eps(m, state, x, float(t_cond[k]), cond, RBModSettings()))
    )
    expected = sinusoidal_embedding([float(t_cond[k])] * 2, dim)
    assert len(seen) == 1
    assert torch.allclose(seen[0][:, :dim].double(), expected, atol=1e-2)
    assert eps[0].dtype == torch.float32 and eps[0].shape == x.shape and eps[0].isfinite().all()


def test_bf16_decoder_sees_the_fp32_timestep_embedding(bf16_models, torch_single_thread):
    m = bf16_models
    dim = m.decoder.config.timestep_ratio_embedding_dim
    steps = 3  # Stage B's t_cond at shift 1 (0.9936, 2/3, 1/3): none is a bf16 number
    emb = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(2)]
    images = []
    seen = first_timestep_embeddings(
        m.decoder, lambda: images.append(decode_latents(m, emb, ["a dog"], gens, steps=steps))
    )
    ratios = noise_schedule(steps, 1.0)[2][:steps].tolist()
    assert all(r != float(torch.tensor(r).to(torch.bfloat16)) for r in ratios)
    assert len(seen) == steps
    for embedding, ratio in zip(seen, ratios, strict=True):
        expected = sinusoidal_embedding([ratio] * embedding.shape[0], dim)  # cond and uncond halves
        assert torch.allclose(embedding[:, :dim].double(), expected, atol=1e-2)
    assert images[0].dtype == torch.float32 and images[0].isfinite().all()
