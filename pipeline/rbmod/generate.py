"""Batch API for RB-Modulation, used by the shard worker: requests in, PIL images and their parameters out.

`RBModGenerator.generate` validates every request (a bad one raises ValueError naming the request and
the field), resolves each request's settings (defaults < generator settings < request overrides), groups
requests whose settings agree, and runs each group in batches: conditioning, the Stage C loop with AFA and
SOC, then Stage B + A. Each request owns one seeded `torch.Generator` (initial noise, DDPM noise, Stage B
noise), and the per-sample math (CFG std, SOC loss) is per sample, so its image does not depend on its
batch. Bit for bit that needs more: on CPU, MKL's sgemm picks a different kernel for 1-3, 5-7 and 9-11
rows than for 4, 8 or >= 12 (the first prior GEMMs have 2B rows), and oneDNN convolutions round by
batch size, ~1e-6 either way. So with `batch_invariant` (the default on CPU) each request runs as its
own batch; on GPU the group runs batched for throughput.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from pydantic import ValidationError

from pipeline.rbmod.afa import install_afa
from pipeline.rbmod.conditioning import ReferenceCache, encode_prompts, mix_styles
from pipeline.rbmod.decode import decode
from pipeline.rbmod.requests import GenerationRequest, GenerationResult, StyleRef
from pipeline.rbmod.settings import RBModSettings, decoded_side, stage_c_side
from pipeline.rbmod.soc import DescriptorTargets
from pipeline.rbmod.stage_c import StageCConditions, sample_stage_c

PROMPT_CACHE_SIZE = 128  # (77 x 1280) bf16 each on the real preset: ~25 MB in all

__all__ = ["GenerationRequest", "GenerationResult", "RBModGenerator", "RBModSettings", "StyleRef"]


@dataclass
class _Prepared:
    """A validated request with its resolved settings."""

    index: int
    request: GenerationRequest
    mode: str  # "stylization" | "composition"
    settings: RBModSettings
    weights: list[float]


class RBModGenerator:
    def __init__(self, models, settings: RBModSettings | None = None):
        self.models = models
        self.settings = settings or RBModSettings()
        self.afa_state = install_afa(models.prior)
        self.references = ReferenceCache(models)
        self._prompt_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        prepared = [self._prepare(index, request) for index, request in enumerate(requests)]
        groups: dict[tuple, list[_Prepared]] = {}
        for item in prepared:
            groups.setdefault((item.mode, item.settings), []).append(item)
        results: list[GenerationResult | None] = [None] * len(prepared)
        for (_, settings), items in groups.items():
            batch_size = 1 if self._batch_invariant(settings) else settings.max_batch_size
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                for item, result in zip(batch, self._run_batch(batch, settings), strict=True):
                    results[item.index] = result
        return results

    # --- validation -------------------------------------------------------------------------------

    def _prepare(self, index: int, request: GenerationRequest) -> _Prepared:
        name = f"request {request.uid!r}" if getattr(request, "uid", "") else f"request #{index}"

        def fail(field_name: str, problem: str) -> ValueError:
            return ValueError(f"{name}: field {field_name!r} {problem}")

        if not isinstance(request, GenerationRequest):
            raise ValueError(f"{name}: expected a GenerationRequest, got {type(request).__name__}")
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise fail("prompt", "is empty")
        if isinstance(request.seed, bool) or not isinstance(request.seed, int):
            raise fail("seed", f"must be an int, got {type(request.seed).__name__}")
        if not -(2**63) <= request.seed < 2**64:
            raise fail("seed", f"must fit in 64 bits, got {request.seed}")
        if not request.styles:
            raise fail("styles", "has no style reference")
        weights = []
        for i, ref in enumerate(request.styles):
            if not isinstance(ref, StyleRef):
                raise fail(f"styles[{i}]", f"must be a StyleRef, got {type(ref).__name__}")
            _check_image(ref.image, lambda problem, i=i: fail(f"styles[{i}].image", problem))
            if isinstance(ref.weight, bool) or not isinstance(ref.weight, (int, float)):
                raise fail(f"styles[{i}].weight", f"must be a number, got {ref.weight!r}")
            if not math.isfinite(ref.weight):
                raise fail(f"styles[{i}].weight", f"must be finite, got {ref.weight!r}")
            weights.append(float(ref.weight))
        if not sum(weights) > 0:
            raise fail("styles", f"weights must sum to > 0, got {weights}")
        if request.content is not None:
            _check_image(request.content, lambda problem: fail("content", problem))
        if not isinstance(request.overrides, Mapping):
            raise fail("overrides", f"must be a mapping, got {type(request.overrides).__name__}")
        mode = "composition" if request.content is not None else "stylization"
        try:
            merged = {**self.settings.model_dump(exclude_unset=True), **request.overrides}
            settings = RBModSettings.model_validate(merged).resolve(mode, self.models.config)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise fail("overrides", f"is invalid: {problems}") from None
        if problem := _size_problem(settings, self.models.config):
            raise fail("overrides", problem)
        return _Prepared(index, request, mode, settings, weights)

    def _batch_invariant(self, settings: RBModSettings) -> bool:
        if settings.batch_invariant is None:
            return self.models.device.type == "cpu"
        return settings.batch_invariant

    # --- one batch --------------------------------------------------------------------------------

    def _run_batch(self, batch: list[_Prepared], settings: RBModSettings) -> list[GenerationResult]:
        models = self.models
        generators = [torch.Generator().manual_seed(item.request.seed) for item in batch]
        prompts = [item.request.prompt for item in batch]
        cond = self._conditions(batch, settings)
        latent_shape = settings.latent_shape(models.config)  # the batch shares its settings, so its shape
        x0 = sample_stage_c(models, self.afa_state, cond, settings, generators, latent_shape)
        images = decode(
            models,
            x0,
            prompts,
            generators,
            steps=settings.stage_b_steps,
            guidance_scale=settings.stage_b_guidance_scale,
            batch_invariant=self._batch_invariant(settings),
            cfg_rescale=settings.stage_b_cfg_rescale,
            scale_factor=settings.stage_a_scale_factor,
        )
        return [
            GenerationResult(image=image, params=self._params(item, settings, image, latent_shape))
            for item, image in zip(batch, images, strict=True)
        ]

    def _conditions(self, batch: list[_Prepared], settings: RBModSettings) -> StageCConditions:
        models = self.models
        text, pooled = zip(*(self._encode_prompt(item.request.prompt) for item in batch), strict=True)
        uncond_text, uncond_pooled = self._encode_prompt("")
        image_tokens, style_targets, content_targets = [], [], []
        for item in batch:
            used = [(ref, w) for ref, w in zip(item.request.styles, item.weights, strict=True) if w != 0]
            mix = mix_styles([self.references.features(ref.image) for ref, _ in used], [w for _, w in used])
            tokens = [mix.clip_embedding]
            if item.request.content is not None:
                content = self.references.features(item.request.content)
                tokens.insert(0, content.clip_embedding)
                content_targets.append(content.content)
            image_tokens.append(torch.stack(tokens))
            style_targets.append(mix.style_target)
        composition = batch[0].mode == "composition"
        batch_size = len(batch)
        return StageCConditions(
            clip_text=torch.cat(text),
            clip_text_pooled=torch.cat(pooled),
            clip_img=torch.stack(image_tokens).to(models.dtype),
            uncond_clip_text=uncond_text.expand(batch_size, -1, -1),
            uncond_clip_text_pooled=uncond_pooled.expand(batch_size, -1, -1),
            targets=DescriptorTargets(
                style=torch.stack(style_targets),
                content=torch.stack(content_targets) if composition else None,
            ),
            afa_mode=("content_style" if composition else "style") if settings.afa else "off",
        )

    def _encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1,L,D), (1,1,D); each prompt is encoded alone (batch 1), so the result is batch-independent.
        A small LRU cache: shards often repeat a prompt across styles, and "" is the uncond prompt."""
        if prompt in self._prompt_cache:
            self._prompt_cache.move_to_end(prompt)
        else:
            self._prompt_cache[prompt] = encode_prompts(self.models, [prompt])
            if len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        return self._prompt_cache[prompt]

    def _params(self, item: _Prepared, settings: RBModSettings, image: Image.Image, latent_shape) -> dict:
        return {
            "generator": "rbmod",
            "preset": self.models.config.name,
            "mode": item.mode,
            "sampler": settings.sampler,
            "steps": settings.steps,
            "guidance_scale": settings.guidance_scale,
            "cfg_rescale": settings.cfg_rescale,
            "shift": settings.shift,
            "eta": settings.eta,
            "soc_iterations": settings.soc_iterations,
            "tau": settings.tau,
            "lambda_style": settings.lambda_style,
            "lambda_content": settings.lambda_content if item.mode == "composition" else None,
            "lambda_proximal": settings.lambda_proximal,
            "afa": settings.afa,
            "seed": item.request.seed,
            "resolution": list(image.size),
            "latent_size": list(latent_shape),
            "descriptor": self.models.config.descriptor,
            "style_weights": item.weights,
            "stage_b_steps": settings.stage_b_steps,
            "stage_b_guidance_scale": settings.stage_b_guidance_scale,
            "stage_b_cfg_rescale": settings.stage_b_cfg_rescale,
            "stage_a_scale_factor": settings.stage_a_scale_factor,
        }


def _size_problem(settings: RBModSettings, config) -> str | None:
    """A requested size that Stage C's latent cannot make exactly is refused, never rounded."""
    if settings.width is None and settings.height is None:
        return None
    if (settings.width is None) != (settings.height is None):
        return "sets width or height alone: give both"
    for name, side in (("width", settings.width), ("height", settings.height)):
        made = decoded_side(stage_c_side(side, config), config)
        if made != side:
            return f"asks for {name} {side}, which preset {config.name!r} would make {made} px: not allowed"
    return None


# References are resized so their short side is 768 px (spec 2.3): a sliver of an image would blow up to
# gigabytes (1x4000 -> 768x3,072,000), so such a row fails instead of the process running out of memory.
MAX_ASPECT_RATIO = 8.0


def _check_image(image: Any, fail) -> None:
    if not isinstance(image, Image.Image):
        raise fail(f"must be a PIL image, got {type(image).__name__}")
    try:
        image.load()
        if image.width < 1 or image.height < 1:
            raise ValueError(f"empty image of size {image.size}")
    except Exception as err:  # truncated or corrupt files surface here, at load time
        raise fail(f"cannot be read: {type(err).__name__}: {err}") from None
    if max(image.size) / min(image.size) > MAX_ASPECT_RATIO:
        raise fail(f"has an aspect ratio over {MAX_ASPECT_RATIO:g}:1 ({image.width}x{image.height})")
