"""Torch-only image preprocessing shared by RB-Modulation, scoring and the worker (no torchvision).

Every function takes float tensors in [0,1], (3,H,W) or (B,3,H,W), and is differentiable, so SOC can
back-propagate through `clip_preprocess`. The rounding rules follow torchvision's `Resize(int)` and
`CenterCrop`, which Stable Cascade and CSD use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> float32 (3,H,W) in [0,1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255.0)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B,3,H,W) or (3,H,W) in [0,1] -> RGB PIL images (values clamped, rounded like diffusers)."""
    batch = images if images.dim() == 4 else images[None]
    arrays = (batch.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round()
    return [Image.fromarray(a.astype(np.uint8)) for a in arrays]


def _as_batch(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if images.dim() == 3:
        return images[None], True
    if images.dim() != 4:
        raise ValueError(f"expected an image tensor (3,H,W) or (B,3,H,W), got shape {tuple(images.shape)}")
    return images, False


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (H, W) of torchvision's Resize(size): short side = size, long side truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_short_side(images: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize so the shorter side is `size`, with antialias (Stable Cascade's `resize_image`)."""
    batch, single = _as_batch(images)
    out_hw = short_side_size(batch.shape[-2], batch.shape[-1], size)
    if out_hw != tuple(batch.shape[-2:]):
        batch = F.interpolate(batch, size=out_hw, mode=mode, align_corners=False, antialias=True)
    return batch[0] if single else batch


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's CenterCrop offsets (round half to even of the margin / 2); no padding."""
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"center_crop: image {height}x{width} is smaller than the crop {size}x{size}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """The EfficientNet encoder's input normalization."""
    return normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def clip_preprocess(images: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Resize(size, bicubic) -> CenterCrop(size) -> Normalize, on tensors (differentiable)."""
    resized = resize_short_side(images, size, mode="bicubic")
    return normalize(center_crop(resized, size), mean, std)
