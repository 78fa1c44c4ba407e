"""The style descriptor Psi that SOC optimizes against: image in [0,1] -> (content, style), unit vectors.

`kind="csd"`: CSD's content and style heads (spec 4.1). `kind="clip"`: the documented fallback when no
CSD weights are configured, CLIP image embeddings from the prior's image encoder (content = style =
normalized `image_embeds`; more content leakage than CSD, spec 4.3). Both run in fp32 and do their own
`clip_preprocess` in torch, so gradients reach the input image.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.rbmod.image_ops import CLIP_MEAN, CLIP_STD, clip_preprocess


class StyleDescriptor(nn.Module):
    def __init__(self, kind: str, encoder: nn.Module, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        if kind not in ("csd", "clip"):
            raise ValueError(f"descriptor kind must be 'csd' or 'clip', got {kind!r}")
        self.kind, self.encoder, self.image_size = kind, encoder, image_size
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = clip_preprocess(images.float(), self.image_size, self.mean, self.std)
        if self.kind == "csd":
            _, content, style = self.encoder(pixels)
            return content, style
        embeds = F.normalize(self.encoder(pixel_values=pixels).image_embeds, dim=1)
        return embeds, embeds


def csd_descriptor(csd: nn.Module) -> StyleDescriptor:
    return StyleDescriptor("csd", csd.float().requires_grad_(False), csd.image_size).eval()


def clip_descriptor(image_encoder: nn.Module, image_size: int, mean, std) -> StyleDescriptor:
    """Fallback descriptor; shares the image encoder when it is already fp32, else keeps an fp32 copy
    (SOC gradients in bf16 are noisy, spec 8)."""
    if next(image_encoder.parameters()).dtype != torch.float32:
        image_encoder = copy.deepcopy(image_encoder).float()
    return StyleDescriptor("clip", image_encoder.requires_grad_(False), image_size, mean, std).eval()
