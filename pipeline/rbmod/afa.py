"""Attention Feature Aggregation (spec 3): an attention processor for every Stage C attention block.

The condition sequence an `SDCascadeAttnBlock` hands its `Attention` is
`[self tokens (HW)][text][pooled text (clip_seq)][image tokens]`. AFA averages the outputs of several
attention branches, each over a different subset of those tokens (the official code, not the paper):

- mode "style" (image = style x4):  A_txt [self;txt;pool], A_txt+style [self;txt;pool;s*x4],
  A_style [self;txt;s*x4]
- mode "content_style" (image = content x4, style x4): A_txt [self;txt;pool], A_sub [..;content],
  A_sub+style [..;content;s*x4], A_style [self;txt;pool;s*x4]

where s* is the mean of the style tokens, kept as 4 copies (4x softmax mass). K/V are projected once for
the whole sequence (projections are affine, so averaging tokens after them is the same) and `to_out`
runs once on the averaged branches. Two equivalent ways to form the branches:

- "lse": every branch shares one large token group; its attention logits are computed once, and each
  branch adds its few extra tokens by merging unnormalized sums over one common max (log-sum-exp).
  A single copy of s* with a +ln 4 logit bias stands for its 4 copies.
- "sliced": per branch, gather the K/V rows and run SDPA.

"auto" takes "lse" where a fused attention returns the log-sum-exp (PyTorch's CPU kernel) and "sliced"
elsewhere: on CUDA the public SDPA does not return it, and computing the logits by hand would be
memory-bound. bench/bench_afa.py prints both against the stock block.

Mode "off" delegates to diffusers' stock processor, so the prior is then bit-identical to stock.
`StableCascadeUNet` has no `set_attn_processor`; `install_afa` walks the modules instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_stable_cascade import SDCascadeAttnBlock

AFAMode = Literal["off", "style", "content_style"]
AFA_MODES = ("off", "style", "content_style")
IMAGE_EMBEDDINGS_PER_MODE = {"off": 0, "style": 1, "content_style": 2}
AFA_METHODS = ("auto", "lse", "sliced")


@dataclass
class AFAState:
    """Shared by all processors of one prior; the sampler sets it before calling the prior."""

    clip_seq: int  # tokens per pooled-text / image embedding (the prior's `clip_seq`, 4)
    mode: str = "off"
    image_tokens: int = 0  # image tokens at the end of the condition sequence

    def set_mode(self, mode: str) -> None:
        if mode not in AFA_MODES:
            raise ValueError(f"AFA mode must be one of {AFA_MODES}, got {mode!r}")
        self.mode = mode
        self.image_tokens = IMAGE_EMBEDDINGS_PER_MODE[mode] * self.clip_seq


@contextmanager
def afa_mode(state: AFAState, mode: str) -> Iterator[AFAState]:
    """Run a block of prior calls in `mode`, back to the previous mode afterwards."""
    previous = state.mode
    state.set_mode(mode)
    try:
        yield state
    finally:
        state.set_mode(previous)


class AFAAttnProcessor:
    def __init__(self, state: AFAState, has_self_tokens: bool = True, method: str = "auto"):
        if method not in AFA_METHODS:
            raise ValueError(f"AFA method must be one of {AFA_METHODS}, got {method!r}")
        self.state = state
        self.has_self_tokens = has_self_tokens
        self.method = method
        self.stock = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if self.state.mode == "off" or encoder_hidden_states is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attention_mask is not None or attn.residual_connection:
            raise ValueError("AFA processor expects no attention_mask and no residual connection")

        spatial_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial_shape is not None:
            batch, channels, height, width = spatial_shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, query_len, _ = hidden_states.shape

        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        key = _split_heads(attn.to_k(encoder_hidden_states), attn.heads)
        value = _split_heads(attn.to_v(encoder_hidden_states), attn.heads)
        layout = self._layout(encoder_hidden_states.shape[1], query_len)
        if self._use_lse(query):
            out = _afa_lse(query, key, value, layout, attn.scale, self.state)
        else:
            out = _afa_sliced(query, key, value, layout, attn.scale, self.state)

        out = out.transpose(1, 2).reshape(batch, query_len, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial_shape is not None:
            out = out.transpose(1, 2).reshape(spatial_shape)
        return out / attn.rescale_output_factor

    def _use_lse(self, query: torch.Tensor) -> bool:
        if self.method == "auto":  # lse needs a fused attention that returns its log-sum-exp (CPU here)
            return query.device.type == "cpu" and _CPU_ATTENTION_WITH_LSE is not None
        return self.method == "lse"

    def _layout(self, sequence_len: int, query_len: int) -> _TokenLayout:
        self_len = query_len if self.has_self_tokens else 0
        clip_seq, image_len = self.state.clip_seq, self.state.image_tokens
        text_len = sequence_len - self_len - clip_seq - image_len
        if text_len < 0:
            raise ValueError(
                f"AFA mode {self.state.mode!r}: a condition sequence of {sequence_len} tokens cannot hold "
                f"{self_len} self + {clip_seq} pooled + {image_len} image tokens"
            )
        return _TokenLayout(self_and_text=self_len + text_len, clip_seq=clip_seq, image_len=image_len)


@dataclass(frozen=True)
class _TokenLayout:
    self_and_text: int  # [self; text] tokens, present in every branch
    clip_seq: int
    image_len: int

    @property
    def pooled(self) -> slice:
        return slice(self.self_and_text, self.self_and_text + self.clip_seq)

    @property
    def content(self) -> slice:  # composition only: the first image embedding's tokens
        start = self.self_and_text + self.clip_seq
        return slice(start, start + self.clip_seq)

    @property
    def style(self) -> slice:  # the last image embedding's tokens
        end = self.self_and_text + self.clip_seq + self.image_len
        return slice(end - self.clip_seq, end)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, inner = x.shape
    return x.view(batch, length, heads, inner // heads).transpose(1, 2)


def _afa_lse(q, k, v, layout: _TokenLayout, scale: float, state: AFAState) -> torch.Tensor:
    """Branches as unions of token groups, merged over one common max: out_b = sum_g N_g / sum_g L_g,
    with N_g the unnormalized attention output and L_g the softmax mass of group g."""
    style_k = k[:, :, layout.style].mean(dim=2, keepdim=True)
    style_v = v[:, :, layout.style].mean(dim=2, keepdim=True)
    copies_bias = math.log(layout.clip_seq)  # one token with +ln 4 == its 4 copies
    if state.mode == "style":
        shared = slice(0, layout.self_and_text)
        extra_k = [k[:, :, layout.pooled], style_k]
        extra_v = [v[:, :, layout.pooled], style_v]
        branches = [(0,), (0, 1), (1,)]  # indices into the extra groups: txt, txt+style, style
    else:
        shared = slice(0, layout.pooled.stop)
        extra_k = [k[:, :, layout.content], style_k]
        extra_v = [v[:, :, layout.content], style_v]
        branches = [(), (0,), (0, 1), (1,)]  # txt, sub, sub+style, style

    shared_out, shared_lse = _attention_with_lse(q, k[:, :, shared], v[:, :, shared], scale)
    extra_logits = [
        torch.matmul(q, ek.transpose(-1, -2)).float() * scale + bias
        for ek, bias in zip(extra_k, (0.0, copies_bias), strict=True)
    ]
    top = shared_lse
    for logits in extra_logits:
        top = torch.maximum(top, logits.amax(dim=-1, keepdim=True))
    shared_mass = torch.exp(shared_lse - top)
    extra_outs, extra_masses = [], []
    for logits, values in zip(extra_logits, extra_v, strict=True):
        weights = torch.exp(logits - top)
        extra_outs.append(torch.matmul(weights.to(values.dtype), values).float())
        extra_masses.append(weights.sum(-1, keepdim=True))

    # Branch b is (N_shared + sum_{g in b} N_g) / mass_b. The mean over branches is regrouped so that each
    # full-size numerator is scaled once, by a per-query weight: sum over the branches that contain it.
    branch_weights = []
    for branch in branches:
        mass = shared_mass
        for g in branch:
            mass = mass + extra_masses[g]
        branch_weights.append(1 / (mass * len(branches)))
    total = shared_out * (shared_mass * sum(branch_weights))
    for g, extra_out in enumerate(extra_outs):
        weight = sum(w for w, branch in zip(branch_weights, branches, strict=True) if g in branch)
        total = total + extra_out * weight
    return total.to(q.dtype)


# PyTorch's fused CPU attention also returns the log-sum-exp; the public SDPA does not. It is an internal
# op, so look it up once and fall back to plain matmul/logsumexp when it is missing.
_CPU_ATTENTION_WITH_LSE = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attention_with_lse(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized attention output (fp32) and its log-sum-exp (fp32, shape (..., L, 1))."""
    if q.device.type == "cpu" and _CPU_ATTENTION_WITH_LSE is not None:
        out, lse = _CPU_ATTENTION_WITH_LSE(q, k, v, 0.0, False, scale=scale)
        return out.float(), lse.float().unsqueeze(-1)
    logits = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(logits - lse).to(v.dtype), v).float(), lse


def _afa_sliced(q, k, v, layout: _TokenLayout, scale: float, state: AFAState) -> torch.Tensor:
    """One SDPA per branch over its gathered K/V rows (projected once), averaged."""
    copies = layout.clip_seq
    style_k = k[:, :, layout.style].mean(dim=2, keepdim=True).expand(-1, -1, copies, -1)
    style_v = v[:, :, layout.style].mean(dim=2, keepdim=True).expand(-1, -1, copies, -1)
    base = slice(0, layout.self_and_text)
    groups_k = {"base": k[:, :, base], "pool": k[:, :, layout.pooled], "style": style_k}
    groups_v = {"base": v[:, :, base], "pool": v[:, :, layout.pooled], "style": style_v}
    if state.mode == "style":
        branches = [("base", "pool"), ("base", "pool", "style"), ("base", "style")]
    else:
        groups_k["content"], groups_v["content"] = k[:, :, layout.content], v[:, :, layout.content]
        branches = [
            ("base", "pool"),
            ("base", "pool", "content"),
            ("base", "pool", "content", "style"),
            ("base", "pool", "style"),
        ]
    total = None
    for branch in branches:
        branch_k = torch.cat([groups_k[name] for name in branch], dim=2)
        branch_v = torch.cat([groups_v[name] for name in branch], dim=2)
        out = F.scaled_dot_product_attention(q, branch_k, branch_v, scale=scale)
        total = out if total is None else total + out
    return total / len(branches)


def install_afa(prior: torch.nn.Module, method: str = "auto") -> AFAState:
    """Put an AFA processor on the attention of every `SDCascadeAttnBlock`; return their shared state.

    Installing twice returns the state already installed, so two samplers on one prior agree.
    """
    blocks = [m for m in prior.modules() if isinstance(m, SDCascadeAttnBlock)]
    if not blocks:
        raise ValueError("install_afa: the prior has no SDCascadeAttnBlock")
    current = blocks[0].attention.processor
    if isinstance(current, AFAAttnProcessor):
        return current.state
    state = AFAState(clip_seq=prior.config.clip_seq)
    for block in blocks:
        block.attention.set_processor(AFAAttnProcessor(state, has_self_tokens=block.self_attn, method=method))
    return state
