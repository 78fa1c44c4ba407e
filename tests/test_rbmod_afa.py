"""AFA processor: the efficient forms against a naive oracle, and `off` against the stock processor."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableCascadeUNet
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_stable_cascade import SDCascadeAttnBlock

from pipeline.rbmod.afa import AFAAttnProcessor, AFAState, afa_mode, install_afa

CLIP_SEQ = 4
TEXT_TOKENS = 7


class NaiveAFAProcessor:
    """The oracle: one stock attention call per branch, with that branch's tokens written out (4 copies
    of the style mean), outputs averaged after `to_out`. Slices are taken from the end of the sequence,
    unlike the processor under test."""

    def __init__(self, state: AFAState):
        self.state = state
        self.stock = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if self.state.mode == "off":
            return self.stock(attn, hidden_states, encoder_hidden_states)
        c, n_img = self.state.clip_seq, self.state.image_tokens
        seq = encoder_hidden_states
        image = seq[:, seq.shape[1] - n_img :]
        pooled = seq[:, seq.shape[1] - n_img - c : seq.shape[1] - n_img]
        self_and_text = seq[:, : seq.shape[1] - n_img - c]
        style_mean = image[:, -c:].mean(dim=1, keepdim=True).repeat(1, c, 1)
        if self.state.mode == "style":
            branches = [
                [self_and_text, pooled],
                [self_and_text, pooled, style_mean],
                [self_and_text, style_mean],
            ]
        else:
            content = image[:, :c]
            branches = [
                [self_and_text, pooled],
                [self_and_text, pooled, content],
                [self_and_text, pooled, content, style_mean],
                [self_and_text, pooled, style_mean],
            ]
        outs = [self.stock(attn, hidden_states, torch.cat(tokens, dim=1)) for tokens in branches]
        return torch.stack(outs).mean(dim=0)


def make_attention_inputs(batch=2, channels=64, heads=4, hw=(5, 6), image_embeddings=1, seed=0):
    """An Attention as SDCascadeAttnBlock builds it, and its inputs: 4-D queries and the condition sequence
    [self tokens; text; pooled; image]."""
    torch.manual_seed(seed)
    attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=True).eval()
    x = torch.randn(batch, channels, *hw)
    cond = torch.randn(batch, TEXT_TOKENS + CLIP_SEQ * (1 + image_embeddings), channels)
    self_tokens = x.flatten(2).transpose(1, 2)
    return attn, x, torch.cat([self_tokens, cond], dim=1)


def tiny_prior(seed=0) -> StableCascadeUNet:
    torch.manual_seed(seed)
    return StableCascadeUNet(
        conditioning_dim=64,
        block_out_channels=(64, 64),
        num_attention_heads=(2, 2),
        down_num_layers_per_block=(1, 1),
        up_num_layers_per_block=(1, 1),
        switch_level=(False,),
        clip_image_in_channels=24,
        clip_text_in_channels=16,
        clip_text_pooled_in_channels=16,
        dropout=(0.0, 0.0),
    ).eval()


def prior_inputs(batch=2, image_embeddings=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sample=torch.randn(batch, 16, 4, 4, generator=g),
        timestep_ratio=torch.rand(batch, generator=g),
        clip_text_pooled=torch.randn(batch, 1, 16, generator=g),
        clip_text=torch.randn(batch, TEXT_TOKENS, 16, generator=g),
        clip_img=torch.randn(batch, image_embeddings, 24, generator=g),
    )


@pytest.mark.parametrize("method", ["lse", "sliced", "auto"])
@pytest.mark.parametrize("mode", ["style", "content_style"])
def test_efficient_forms_equal_naive_oracle(mode, method):
    attn, x, seq = make_attention_inputs(image_embeddings=1 if mode == "style" else 2)
    state = AFAState(clip_seq=CLIP_SEQ)
    state.set_mode(mode)
    with torch.no_grad():
        expected = NaiveAFAProcessor(state)(attn, x, seq)
        got = AFAAttnProcessor(state, method=method)(attn, x, seq)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The branches matter: AFA is not the plain attention over the whole sequence.
    assert (got - AttnProcessor2_0()(attn, x, seq)).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["style", "content_style"])
def test_lse_without_the_fused_cpu_kernel_equals_naive_oracle(mode, monkeypatch):
    import pipeline.rbmod.afa as afa

    monkeypatch.setattr(afa, "_CPU_ATTENTION_WITH_LSE", None)  # the matmul/logsumexp fallback
    attn, x, seq = make_attention_inputs(image_embeddings=1 if mode == "style" else 2, seed=5)
    state = AFAState(clip_seq=CLIP_SEQ)
    state.set_mode(mode)
    with torch.no_grad():
        got = AFAAttnProcessor(state, method="lse")(attn, x, seq)
        expected = NaiveAFAProcessor(state)(attn, x, seq)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_lse_handles_large_logits_without_overflow():
    attn, x, seq = make_attention_inputs(seed=3)
    seq = seq * 40.0  # logits in the thousands: exp would overflow without the common max
    state = AFAState(clip_seq=CLIP_SEQ)
    state.set_mode("style")
    with torch.no_grad():
        got = AFAAttnProcessor(state, method="lse")(attn, x, seq)
        expected = NaiveAFAProcessor(state)(attn, x, seq)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_off_is_the_stock_processor_bit_for_bit():
    stock = tiny_prior()
    patched = tiny_prior()
    state = install_afa(patched)
    inputs = prior_inputs()
    with torch.no_grad():
        assert state.mode == "off"
        assert torch.equal(patched(**inputs).sample, stock(**inputs).sample)


@pytest.mark.parametrize("mode", ["style", "content_style"])
def test_whole_prior_with_afa_equals_prior_with_naive_oracle(mode):
    efficient, naive = tiny_prior(), tiny_prior()
    state = install_afa(efficient)
    oracle_state = AFAState(clip_seq=naive.config.clip_seq)
    blocks = [m for m in naive.modules() if isinstance(m, SDCascadeAttnBlock)]
    for block in blocks:
        block.attention.set_processor(NaiveAFAProcessor(oracle_state))
    inputs = prior_inputs(image_embeddings=1 if mode == "style" else 2)
    with torch.no_grad(), afa_mode(state, mode), afa_mode(oracle_state, mode):
        got = efficient(**inputs).sample
        expected = naive(**inputs).sample
        plain = tiny_prior()(**inputs).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (got - plain).abs().max() > 1e-4
    assert state.mode == "off"


def test_install_patches_every_attention_block_once():
    prior = tiny_prior()
    state = install_afa(prior)
    blocks = [m for m in prior.modules() if isinstance(m, SDCascadeAttnBlock)]
    assert len(blocks) == 4
    assert all(isinstance(b.attention.processor, AFAAttnProcessor) for b in blocks)
    assert all(b.attention.processor.state is state for b in blocks)
    assert install_afa(prior) is state  # a second install keeps the shared state


def test_mode_errors_are_clear():
    state = AFAState(clip_seq=CLIP_SEQ)
    with pytest.raises(ValueError, match="AFA mode must be one of"):
        state.set_mode("styles")
    attn, x, seq = make_attention_inputs()
    state.set_mode("content_style")
    short = seq[:, : x.shape[2] * x.shape[3] + 6]
    with pytest.raises(ValueError, match="cannot hold"), torch.no_grad():
        AFAAttnProcessor(state)(attn, x, short)
