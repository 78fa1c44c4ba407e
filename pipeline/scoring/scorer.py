"""Scorer: per-sample similarity scores of generated images against their prompt and references.

Scores (all cosine similarities in [-1, 1], computed in float32 from L2-normalised embeddings):

- `clip_t`: CLIP image embedding of the output vs CLIP text embedding of the prompt (the paper's
  CLIP-T). Prompts longer than the text model's window (77 tokens for CLIP) are truncated.
- `clip_content`: CLIP image embedding of the output vs the content image (the paper's CLIP-I);
  None in stylization mode (no content image).
- `dino_style`: DINO CLS embedding of the output vs the style reference. The CLS embedding is
  `last_hidden_state[:, 0]`, which is after the final layernorm; for `Dinov2Model` it equals
  `pooler_output`, and it also works for DINO v1 `ViTModel` checkpoints (whose pooler differs).
- `csd_style` (only with a CSD module): CSD style-head embedding of the output vs the style reference.
- `leakage`: how much of the style reference's *content* shows up in the output. With CSD it is the
  cosine of CSD content-head embeddings (output vs style image), the head trained to capture content
  apart from style; without CSD it falls back to the CLIP image cosine (output vs style image), which
  mixes style and content. The two have different scales, so leakage thresholds are per preset.

Reference embeddings (style and content images) are cached by pixel hash, so a style repeated across
a shard is embedded once. Scores are batch-invariant: a reference is always embedded alone, so its
embedding does not depend on which references an earlier call embedded with it (or left in the
cache); on CPU every sample is also scored alone (MKL/oneDNN round differently by batch shape, as in
generation), so a sample's scores are bit-identical whatever else is in its batch. On GPU the
generated images and prompts are batched (`batch_size`) for speed.

Every image is made RGB first (transparency composited onto white). CLIP and
DINO images then go through each checkpoint's own image processor (PIL backend: bicubic shortest-edge
resize, centre crop, rescale, normalise: the recipe the checkpoint was trained with). CSD images go
through the shared torch `image_ops.clip_preprocess` at the module's input size, the transform
RB-Modulation applies before CSD (CSD's official Resize/CenterCrop/CLIP stats).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.scoring.models import ScoringConfig, load_scoring_models

SCORE_NAMES = ("clip_t", "clip_content", "dino_style", "csd_style", "leakage")
Scores = dict[str, list[float | None]]


class Scorer:
    """Scores batches of generated images; models are loaded once per process and shared.

    `csd`, when given, is the shared CSD module (`forward(pixel_values) -> (feature, content, style)`,
    unit-norm content and style); it is only read here, never modified.
    """

    def __init__(self, config: ScoringConfig, device: Any = None, csd: torch.nn.Module | None = None):
        self.config = config
        self.models = load_scoring_models(config, device)
        self.device = self.models.device
        self.csd = csd
        self.names: tuple[str, ...] = tuple(n for n in SCORE_NAMES if n != "csd_style" or csd is not None)
        self._cache = _ReferenceCache(config.reference_cache_size)
        self.batch_invariant = self.device.type == "cpu"  # one sample per forward pass (see above)
        self._embedders: dict[str, Callable[[list[Image.Image]], torch.Tensor]] = {
            "clip": self._clip_images,
            "dino": self._dino_images,
            "csd": self._csd_images,
        }

    def score(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        styles: Sequence[Image.Image],
        contents: Sequence[Image.Image | None],
    ) -> Scores:
        """Columnar scores: `{name: [value per sample]}` for every name in `self.names`, in input order.

        `styles[i]` is sample i's style reference; with several weighted references, pass the first
        (highest-weight) one. `contents[i]` is None in stylization mode. Use `score_rows` for one dict
        per sample.
        """
        _check_inputs(images, prompts, styles, contents)
        scores: Scores = {name: [] for name in self.names}
        digests: dict[int, bytes] = {}  # id(image) -> pixel hash, valid while the inputs are alive
        step = 1 if self.batch_invariant else self.config.batch_size
        for start in range(0, len(images), step):
            part = slice(start, start + step)
            chunk = self._score_chunk(images[part], prompts[part], styles[part], contents[part], digests)
            for name in self.names:
                scores[name] += chunk[name]
        return scores

    # --- one batch ---------------------------------------------------------------------------------

    def _score_chunk(self, images, prompts, styles, contents, digests) -> Scores:
        images = [_as_rgb(image) for image in images]
        with torch.inference_mode(), self._autocast():
            output_clip = self._clip_images(images)
            scores: Scores = {
                "clip_t": _cosines(output_clip, self._clip_texts(prompts)),
                "dino_style": _cosines(self._dino_images(images), self._references("dino", styles, digests)),
                "clip_content": [None] * len(images),
            }
            composed = [i for i, content in enumerate(contents) if content is not None]
            if composed:
                content_clip = self._references("clip", [contents[i] for i in composed], digests)
                for i, value in zip(composed, _cosines(output_clip[composed], content_clip), strict=True):
                    scores["clip_content"][i] = value
            if self.csd is not None:
                output_csd = self._csd_images(images)  # (B, 2, D): content, style
                style_csd = self._references("csd", styles, digests)
                scores["csd_style"] = _cosines(output_csd[:, 1], style_csd[:, 1])
                scores["leakage"] = _cosines(output_csd[:, 0], style_csd[:, 0])
            else:
                scores["leakage"] = _cosines(output_clip, self._references("clip", styles, digests))
        return scores

    def _autocast(self):
        if self.device.type == "cuda" and self.models.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast("cuda", dtype=self.models.dtype)
        return contextlib.nullcontext()

    # --- embeddings (L2-normalised float32) ---------------------------------------------------------

    def _clip_images(self, images: list[Image.Image]) -> torch.Tensor:
        models = self.models
        pixels = _pixels(models.clip_processor, images, models.device, models.dtype)
        return _unit(_pooled(models.clip.get_image_features(pixel_values=pixels)))

    def _clip_texts(self, prompts: list[str]) -> torch.Tensor:
        models = self.models
        tokens = models.clip_tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=models.max_text_tokens,
            return_tensors="pt",
        ).to(models.device)
        return _unit(_pooled(models.clip.get_text_features(**tokens)))

    def _dino_images(self, images: list[Image.Image]) -> torch.Tensor:
        models = self.models
        pixels = _pixels(models.dino_processor, images, models.device, models.dtype)
        return _unit(models.dino(pixel_values=pixels).last_hidden_state[:, 0])

    def _csd_images(self, images: list[Image.Image]) -> torch.Tensor:
        from pipeline.rbmod.image_ops import clip_preprocess

        parameter = next(self.csd.parameters())
        size, device = self.csd.image_size, parameter.device
        pixels = torch.empty(len(images), 3, size, size, device=device, dtype=parameter.dtype)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            by_size.setdefault(image.size, []).append(index)
        for indices in by_size.values():  # one resize per image size (generated outputs share one)
            batch = torch.from_numpy(np.stack([np.asarray(images[i]) for i in indices])).to(device)
            batch = batch.permute(0, 3, 1, 2).float().div(255.0)
            pixels[indices] = clip_preprocess(batch, size).to(parameter.dtype)
        _, content, style = self.csd(pixels)
        return torch.stack([_unit(content), _unit(style)], dim=1)

    def _references(self, kind: str, images: list[Image.Image], digests: dict[int, bytes]) -> torch.Tensor:
        """Embeddings of reference images, computed once per distinct image (by pixel hash)."""
        keys = [(kind, _digest(image, digests)) for image in images]
        found: dict[tuple, torch.Tensor] = {}
        missing: dict[tuple, Image.Image] = {}
        for key, image in zip(keys, images, strict=True):
            if key not in found and key not in missing:
                cached = self._cache.get(key)
                if cached is None:
                    missing[key] = image
                else:
                    found[key] = cached
        for key, image in missing.items():  # one at a time: the value never depends on the others
            found[key] = self._embedders[kind]([_as_rgb(image)])[0]
            self._cache.put(key, found[key])
        return torch.stack([found[key] for key in keys])

    @property
    def cached_references(self) -> int:
        return len(self._cache)


def csd_from_preset(models: Any) -> torch.nn.Module | None:
    """The CSD module inside a loaded generation preset (`pipeline.models.Models`), to share with the
    scorer; None when the preset has no CSD weights (SOC then uses the CLIP fallback descriptor)."""
    descriptor = getattr(models, "descriptor", None)
    return descriptor.encoder if getattr(descriptor, "kind", None) == "csd" else None


def score_rows(scores: Scores) -> list[dict[str, float | None]]:
    """Columnar scores -> one `{name: value}` dict per sample (what `FilterRules.evaluate` takes)."""
    names = list(scores)
    return [dict(zip(names, values, strict=True)) for values in zip(*scores.values(), strict=True)]


class _ReferenceCache:
    """A small LRU of reference embeddings keyed by (model kind, pixel hash)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def get(self, key: tuple) -> torch.Tensor | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: tuple, value: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _as_rgb(image: Image.Image) -> Image.Image:
    """RGB for every model alike; transparency is composited onto white (as transformers does)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _digest(image: Image.Image, memo: dict[int, bytes]) -> bytes:
    if id(image) not in memo:
        hasher = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
        hasher.update(image.tobytes())
        memo[id(image)] = hasher.digest()
    return memo[id(image)]


def _pixels(
    processor: Any, images: list[Image.Image], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    return pixels.to(device=device, dtype=dtype)


def _pooled(output: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding.
    return getattr(output, "pooler_output", output)


def _unit(embeddings: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return (a * b).sum(dim=-1).clamp(-1.0, 1.0).cpu().tolist()


def _check_inputs(images, prompts, styles, contents) -> None:
    lengths = {
        "images": len(images),
        "prompts": len(prompts),
        "styles": len(styles),
        "contents": len(contents),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"score() needs one entry per sample in every list, got {lengths}")
    for i in range(len(images)):
        named = [("image", images[i]), ("style", styles[i])]
        if contents[i] is not None:
            named.append(("content", contents[i]))
        for field, value in named:
            if not isinstance(value, Image.Image):
                raise ValueError(f"sample {i}: {field} must be a PIL image, got {type(value).__name__}")
            if value.width == 0 or value.height == 0:
                raise ValueError(f"sample {i}: {field} image is empty ({value.width}x{value.height})")
        if not isinstance(prompts[i], str):
            raise ValueError(f"sample {i}: prompt must be a string, got {type(prompts[i]).__name__}")
