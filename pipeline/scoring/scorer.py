"""Scorer: runs the configured scorers (pipeline.scoring.registry) over batches of generated images.

The host computes what scorers share once per batch: the CLIP image/text, DINO and CSD embeddings of the
outputs (`ScoringBatch.embedding`) and the reference embeddings, cached by pixel hash
(`ScoringBatch.references`). Each scorer reads what it declared in `needs` and returns its scores and
embeddings. The built-in similarity scores (all cosine similarities in [-1, 1], computed in float32 from
L2-normalised embeddings; pipeline.scoring.builtins has the others: aesthetic, nsfw, embeddings):

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

from pipeline.scoring.models import LazyScoringModels, ScoringConfig, load_scoring_models
from pipeline.scoring.registry import (
    INPUTS,
    MODEL_INPUTS,
    ScoreModule,
    ScorerContext,
    ScorerError,
    resolve_scorers,
)

Scores = dict[str, list[float | None]]
Embeddings = dict[str, np.ndarray]  # name -> (samples, dim) float16, a row of NaN where not computed


class Scorer:
    """Scores batches of generated images with the configured scorers; models are loaded once per
    process and shared.

    `csd`, when given, is the shared CSD module (`forward(pixel_values) -> (feature, content, style)`,
    unit-norm content and style); it is only read here, never modified.
    """

    def __init__(self, config: ScoringConfig, device: Any = None, csd: torch.nn.Module | None = None):
        self.config = config
        scorers = resolve_scorers(config.scorers)
        needs = set().union(*(cls.needs for cls in scorers.classes))
        # Scorers that read only pixels or text (brightness) never need CLIP or DINO: load them on first use
        eager = needs & MODEL_INPUTS
        self.models = load_scoring_models(config, device) if eager else LazyScoringModels(config, device)
        self.device = self.models.device
        self.csd = csd
        self.modules: list[ScoreModule] = [
            cls(ScorerContext(config, self.models, csd, dict(config.scorer_options.get(cls.name, {}))))
            for cls in scorers.classes
        ]
        self.names: tuple[str, ...] = tuple(name for module in self.modules for name in module.produces)
        self.embedding_names: tuple[str, ...] = scorers.embeddings
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
        per sample, `score_with_embeddings` for the embeddings too.
        """
        return self.score_with_embeddings(images, prompts, styles, contents)[0]

    def score_with_embeddings(self, images, prompts, styles, contents) -> tuple[Scores, Embeddings]:
        """`score`'s scores and `{name: (samples, dim) float16}` for every name in `embedding_names`."""
        _check_inputs(images, prompts, styles, contents)
        scores: Scores = {name: [] for name in self.names}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.embedding_names}
        digests: dict[int, bytes] = {}  # id(image) -> pixel hash, valid while the inputs are alive
        step = 1 if self.batch_invariant else self.config.batch_size
        for start in range(0, len(images), step):
            part = slice(start, start + step)
            batch = ScoringBatch(self, images[part], prompts[part], styles[part], contents[part], digests)
            chunk_scores, chunk_embeddings = self._score_chunk(batch)
            for name in self.names:
                scores[name] += chunk_scores[name]
            for name in self.embedding_names:
                parts[name].append(chunk_embeddings[name])
        embeddings = {
            name: np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float16)
            for name, arrays in parts.items()
        }
        return scores, embeddings

    # --- one batch ---------------------------------------------------------------------------------

    def _score_chunk(self, batch: ScoringBatch) -> tuple[Scores, Embeddings]:
        scores: Scores = {}
        embeddings: Embeddings = {}
        with torch.inference_mode(), self._autocast():
            for module in self.modules:
                result = module.score(batch.view(module.needs))
                expected = set(module.produces) | set(module.embeddings)
                if set(result) != expected:
                    raise ScorerError(
                        f"scorer {module.name!r} returned {sorted(result)}, expected {sorted(expected)}"
                    )
                for name in module.produces:
                    scores[name] = _score_list(module.name, name, result[name], len(batch))
                for name in module.embeddings:
                    embeddings[name] = _embedding_array(module.name, name, result[name], len(batch))
        return scores, embeddings

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


class ScoringBatch:
    """One chunk of samples as the scorers see it: the RGB outputs, prompts, references, and the shared
    embeddings, each computed at most once per chunk whichever scorers ask. A scorer gets a view limited
    to the inputs it declared (`needs`), so an undeclared dependency fails at once, naming the input."""

    def __init__(self, host: Scorer, images, prompts, styles, contents, digests, needs=INPUTS, memo=None):
        self._host = host
        self._images = [_as_rgb(image) for image in images] if memo is None else images
        self._prompts, self._styles, self._contents = list(prompts), list(styles), list(contents)
        self._digests = digests
        self._needs = frozenset(needs)
        self._memo: dict[str, torch.Tensor] = {} if memo is None else memo

    def view(self, needs) -> ScoringBatch:
        return ScoringBatch(
            self._host,
            self._images,
            self._prompts,
            self._styles,
            self._contents,
            self._digests,
            needs,
            self._memo,
        )

    def __len__(self) -> int:
        return len(self._images)

    def _need(self, what: str) -> None:
        if what not in self._needs:
            raise ScorerError(
                f"a scorer read {what!r} without declaring it in `needs` ({sorted(self._needs)})"
            )

    @property
    def images(self) -> list[Image.Image]:
        """The generated images, RGB."""
        self._need("image")
        return self._images

    @property
    def prompts(self) -> list[str]:
        self._need("prompt")
        return self._prompts

    @property
    def styles(self) -> list[Image.Image]:
        self._need("style")
        return self._styles

    @property
    def contents(self) -> list[Image.Image | None]:
        """Content references; None in stylization mode."""
        self._need("content")
        return self._contents

    def embedding(self, kind: str) -> torch.Tensor:
        """Shared embeddings of the batch, L2-normalised float32: `clip_image` (B, D), `clip_text` (B, D),
        `dino_image` (B, D), `csd_image` (B, 2, D: content, style heads)."""
        self._need(kind)
        if kind not in self._memo:
            host = self._host
            if kind == "clip_text":
                self._memo[kind] = host._clip_texts(self._prompts)
            elif kind in ("clip_image", "dino_image", "csd_image"):
                if kind == "csd_image" and host.csd is None:
                    raise ScorerError("csd_image needs a CSD module (the generation preset has none)")
                self._memo[kind] = host._embedders[kind.removesuffix("_image")](self._images)
            else:
                raise ScorerError(f"{kind!r} is not a shared embedding")
        return self._memo[kind]

    def references(self, kind: str, images: list[Image.Image]) -> torch.Tensor:
        """`kind` ("clip", "dino", "csd") embeddings of reference images (style or content), computed
        once per distinct image and cached across batches."""
        self._need(f"{kind}_image")
        return self._host._references(kind, images, self._digests)


def csd_from_preset(models: Any) -> torch.nn.Module | None:
    """The CSD module inside a loaded generation preset (`pipeline.models.presets.Models`), to share with the
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


def _score_list(scorer: str, name: str, values: Any, count: int) -> list[float | None]:
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != count:
        raise ScorerError(f"scorer {scorer!r} gave {len(values)} {name} values for {count} samples")
    try:
        return [None if value is None else float(value) for value in values]
    except (TypeError, ValueError) as error:
        raise ScorerError(f"scorer {scorer!r}: a {name} value is not a number ({error})") from None


def _embedding_array(scorer: str, name: str, values: Any, count: int) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float16)
    if array.ndim != 2 or array.shape[0] != count:
        raise ScorerError(f"scorer {scorer!r}: embedding {name!r} must be (samples, dim), got {array.shape}")
    return array


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
