"""The built-in scorers, registered by name in pipeline.scoring.registry.BUILTINS.

Similarity (see pipeline.scoring.scorer for the definitions): `clip` (clip_t, clip_content), `dino`
(dino_style), `csd` (csd_style, only with a CSD module), `leakage`.

Quality and safety:
- `aesthetic`: the LAION improved aesthetic predictor's MLP (pipeline.scoring.aesthetic) on the output's
  normalised CLIP image embedding, the one clip_t already computed: ~1-10, higher is better. Needs a CLIP
  whose embedding width matches the head (ViT-L/14, 768, for the real head).
- `brightness`: the image's mean luminance (ITU-R BT.601 weights) in 0-1, computed from the pixels;
  filter out near-black or blown-out images with e.g. `brightness >= 0.1`.
- `nsfw`: the probability of the unsafe labels (`nsfw_labels`) of an image-classification model
  (Falconsai/nsfw_image_detection by default): 0-1, higher is less safe; filter with `nsfw < 0.5`.

Near-duplicate embeddings (stored as `embedding_<name>` float16 columns of the shard parquet, for
`stylegen dedup --by <name>`): `dino_embedding` (the output's DINO CLS embedding, normalised: DINO is the
usual copy-detection feature) and `clip_embedding` (its CLIP image embedding).

Like every score, these never depend on what else is in the batch: on CPU the host hands each scorer
one sample at a time (BLAS kernels round differently by batch size there).
"""

from __future__ import annotations

from typing import Any

from pipeline.scoring.registry import ScoreModule, ScorerContext, ScorerError


# Imported on use: resolving the scorers' names and outputs (every shard's parquet schema does) must not
# import torch into a process that never scores.
def _cosines(a, b):
    from pipeline.scoring.scorer import _cosines

    return _cosines(a, b)


def _unit(vectors):
    from pipeline.scoring.scorer import _unit

    return _unit(vectors)


class ClipScores(ScoreModule):
    name = "clip"
    needs = frozenset({"clip_image", "clip_text", "content"})
    outputs = ("clip_t", "clip_content")

    def score(self, batch) -> dict[str, Any]:
        output = batch.embedding("clip_image")
        clip_content: list[float | None] = [None] * len(batch)
        composed = [i for i, content in enumerate(batch.contents) if content is not None]
        if composed:
            references = batch.references("clip", [batch.contents[i] for i in composed])
            for i, value in zip(composed, _cosines(output[composed], references), strict=True):
                clip_content[i] = value
        return {"clip_t": _cosines(output, batch.embedding("clip_text")), "clip_content": clip_content}


class DinoStyle(ScoreModule):
    name = "dino"
    needs = frozenset({"dino_image", "style"})
    outputs = ("dino_style",)

    def score(self, batch) -> dict[str, Any]:
        references = batch.references("dino", batch.styles)
        return {"dino_style": _cosines(batch.embedding("dino_image"), references)}


class CsdStyle(ScoreModule):
    name = "csd"
    needs = frozenset({"csd_image", "style"})
    outputs = ("csd_style",)

    @property
    def produces(self) -> tuple[str, ...]:
        return self.outputs if self.context.csd is not None else ()

    def score(self, batch) -> dict[str, Any]:
        if self.context.csd is None:
            return {}
        style = batch.references("csd", batch.styles)[:, 1]
        return {"csd_style": _cosines(batch.embedding("csd_image")[:, 1], style)}


class Leakage(ScoreModule):
    name = "leakage"
    needs = frozenset({"csd_image", "clip_image", "style"})
    outputs = ("leakage",)

    def score(self, batch) -> dict[str, Any]:
        if self.context.csd is not None:  # the CSD content head: content apart from style
            content = batch.references("csd", batch.styles)[:, 0]
            return {"leakage": _cosines(batch.embedding("csd_image")[:, 0], content)}
        references = batch.references("clip", batch.styles)  # fallback: CLIP image cosine
        return {"leakage": _cosines(batch.embedding("clip_image"), references)}


class Aesthetic(ScoreModule):
    name = "aesthetic"
    needs = frozenset({"clip_image"})
    outputs = ("aesthetic",)

    def __init__(self, context: ScorerContext):
        super().__init__(context)
        from pipeline.scoring.models import load_aesthetic_head

        self.head = load_aesthetic_head(context.config, context.device)
        width = context.models.clip.config.projection_dim
        if self.head.input_dim != width:
            raise ScorerError(
                f"the aesthetic head {context.config.aesthetic_model!r} takes {self.head.input_dim}-dim CLIP "
                f"embeddings but {context.config.clip_model!r} gives {width}-dim ones; the LAION head needs "
                "CLIP ViT-L/14 (openai/clip-vit-large-patch14)"
            )

    def score(self, batch) -> dict[str, Any]:
        embeddings = batch.embedding("clip_image")  # already L2-normalised float32, as the head was trained
        return {"aesthetic": self.head(embeddings)}


class Brightness(ScoreModule):
    name = "brightness"
    needs = frozenset({"image"})
    outputs = ("brightness",)

    def score(self, batch) -> dict[str, Any]:
        import numpy as np

        weights = np.array([0.299, 0.587, 0.114])
        means = [
            np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for image in batch.images
        ]
        return {"brightness": [float(mean @ weights / 255.0) for mean in means]}


class Nsfw(ScoreModule):
    name = "nsfw"
    needs = frozenset({"image"})
    outputs = ("nsfw",)

    def __init__(self, context: ScorerContext):
        super().__init__(context)
        from pipeline.scoring.models import load_safety_classifier

        self.model, self.processor, self.labels = load_safety_classifier(
            context.config, context.device, context.dtype
        )

    def score(self, batch) -> dict[str, Any]:
        pixels = self.processor(images=batch.images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device=self.context.device, dtype=self.context.dtype)
        probabilities = self.model(pixel_values=pixels).logits.float().softmax(dim=-1)
        return {"nsfw": probabilities[:, self.labels].sum(dim=-1)}


class DinoEmbedding(ScoreModule):
    name = "dino_embedding"
    needs = frozenset({"dino_image"})
    embeddings = ("dino",)

    def score(self, batch) -> dict[str, Any]:
        return {"dino": _unit(batch.embedding("dino_image"))}


class ClipEmbedding(ScoreModule):
    name = "clip_embedding"
    needs = frozenset({"clip_image"})
    embeddings = ("clip",)

    def score(self, batch) -> dict[str, Any]:
        return {"clip": _unit(batch.embedding("clip_image"))}
