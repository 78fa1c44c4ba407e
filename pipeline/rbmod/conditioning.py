"""Stage C conditioning (spec 3.2, 6, 7): text embeddings, per-reference features, weighted style mixing.

Per reference image (style or content), computed once under no_grad at batch 1 and cached by a hash of
its pixels, so a shard that reuses a style pays once:
- `clip_embedding`: CLIP `image_embeds` of clip_preprocess(resize_short(image, reference_size)), the
  AFA image tokens;
- `content`, `style`: the descriptor of Previewer(EffNet(resize_short(image))), the SOC targets (spec 2.3;
  the official code recomputes these at every step).

Several style references mix by normalized weights: the AFA embedding is sum_i w_i e_i / sum w, the SOC
style target normalize(sum_i w_i style_i). Zero-weight references are left out, so weights (1, 0) give
exactly the single-style conditioning.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.rbmod.image_ops import clip_preprocess, imagenet_normalize, pil_to_tensor, resize_short_side


@dataclass(frozen=True)
class ReferenceFeatures:
    clip_embedding: torch.Tensor  # (D_img,) fp32
    content: torch.Tensor  # (D,) unit, fp32
    style: torch.Tensor  # (D,) unit, fp32


@dataclass(frozen=True)
class StyleMix:
    clip_embedding: torch.Tensor  # (D_img,)
    style_target: torch.Tensor  # (D,) unit


def image_key(image: Image.Image) -> str:
    """Identity of an image's pixels: mode, size and bytes."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ReferenceCache:
    """Least-recently-used cache of `ReferenceFeatures`, keyed by `image_key`."""

    def __init__(self, models, capacity: int = 512):
        self.models = models
        self.capacity = capacity
        self.entries: OrderedDict[str, ReferenceFeatures] = OrderedDict()
        self.computed = 0  # how many references were actually encoded (for tests and stats)

    def features(self, image: Image.Image) -> ReferenceFeatures:
        key = image_key(image)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        features = reference_features(self.models, image)
        self.computed += 1
        self.entries[key] = features
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return features


@torch.no_grad()
def reference_features(models, image: Image.Image) -> ReferenceFeatures:
    pixels = pil_to_tensor(image).to(models.device)
    reference = resize_short_side(pixels, models.config.reference_size)[None]
    clip_pixels = clip_preprocess(reference, models.clip_image_size, models.clip_mean, models.clip_std)
    clip_embedding = models.image_encoder(pixel_values=clip_pixels.to(models.dtype)).image_embeds
    preview = models.previewer(models.effnet(imagenet_normalize(reference)))
    content, style = models.descriptor(preview)
    return ReferenceFeatures(clip_embedding[0].float(), content[0].float(), style[0].float())


def mix_styles(features: Sequence[ReferenceFeatures], weights: Sequence[float]) -> StyleMix:
    """Weighted mix of style references; weights must sum to > 0 (the caller names the request)."""
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"style weights must sum to > 0, got {list(weights)}")
    used = [(f, w / total) for f, w in zip(features, weights, strict=True) if w != 0]
    clip_embedding = sum(w * f.clip_embedding for f, w in used)
    style = sum(w * f.style for f, w in used)
    return StyleMix(clip_embedding, F.normalize(style, dim=0))


def run_text_encoder(tokenizer, text_encoder, prompts: list[str], device, *, hidden_states: bool = False):
    """Prompts padded/truncated to the tokenizer's 77 tokens, through a CLIP text encoder (no grad)."""
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return text_encoder(
            tokens.input_ids.to(device),
            attention_mask=tokens.attention_mask.to(device),
            output_hidden_states=hidden_states,
        )


def encode_prompts(models, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip_text (B,L,D), clip_text_pooled (B,1,D)) in the prior's dtype: the text encoder's
    `hidden_states[-1]` and projected `text_embeds` (spec 3.2; as StableCascadePriorPipeline)."""
    output = run_text_encoder(
        models.tokenizer, models.text_encoder, prompts, models.device, hidden_states=True
    )
    return output.hidden_states[-1].to(models.dtype), output.text_embeds[:, None].to(models.dtype)
