"""Scoring cost beside generation cost: measured on the tiny presets, estimated for the real models.

Measured in one run on this machine:
- scoring throughput (images/s) at batch 32 on the tiny scoring preset with every built-in scorer
  (clip, dino, csd, leakage, aesthetic, nsfw, dino/clip embeddings), with the tiny generation preset's
  CSD when `pipeline.models.loading` is there, in the steady state of a shard (32 samples sharing 4
  styles whose embeddings are cached) and with every style new (32 distinct styles, nothing cached);
- what the new scorers add: the same batch with the default scorers only, and each new one alone on top;
- tiny RB-Modulation generation time per image (`pipeline.rbmod.generate.RBModGenerator`) when that
  module exists; otherwise scoring alone is reported (generator=none).

Estimated for the real models, in the multiply-accumulate "GFLOPs" that model cards quote (ViT-L/14 at
224 px ~81, DINOv2-base ~22), per generated 1024^2 image:
- scoring: CLIP ViT-L/14 image + CLIP-L text (123M params x 77 tokens) + DINOv2-base + CSD ViT-L/14 on the
  output, + the aesthetic MLP on the CLIP embedding (768x1024 + 1024x128 + 128x64 + 64x16 + 16 MACs) +
  the ViT-B/16 safety classifier (~17.6 at 224 px); the embeddings reuse what is computed anyway;
  references are cached per shard, so their cost is amortised away;
- generation, lower bound: Stage C (3.6B params x 24x24 tokens, CFG batch 2, 20 steps) plus SOC
  (3 iterations per step of a CSD forward + backward, ~3x a forward); Stage B and A are left out.

    .venv/bin/python bench/bench_scoring.py [--repeats 5] [--batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.scoring.models import scoring_preset  # noqa: E402
from pipeline.scoring.registry import BUILTINS, DEFAULT_SCORERS  # noqa: E402
from pipeline.scoring.scorer import Scorer, csd_from_preset  # noqa: E402

# Real-model estimates (multiply-accumulates, per image).
VIT_L14_GMACS = 81.0
DINOV2_BASE_GMACS = 22.0
VIT_B16_GMACS = 17.6  # Falconsai/nsfw_image_detection
AESTHETIC_GMACS = (768 * 1024 + 1024 * 128 + 128 * 64 + 64 * 16 + 16) / 1e9
CLIP_L_TEXT_GMACS = 123e6 * 77 / 1e9
STAGE_C_PARAMS, STAGE_C_TOKENS, CFG_BATCH, STEPS = 3.6e9, 24 * 24, 2, 20
SOC_ITERATIONS, BACKWARD_FACTOR = 3, 3.0  # forward + backward ~ 3 forwards


def random_images(count: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tiny_generation(cache_dir: Path):
    """(models or None, seconds per generated image or None, generated images or None)."""
    try:
        from pipeline.models.loading import load_preset
    except ImportError:
        return None, None, None
    models = load_preset("tiny", device="cpu", cache_dir=cache_dir)
    try:
        from pipeline.rbmod.generate import GenerationRequest, RBModGenerator, StyleRef
        from pipeline.rbmod.settings import RBModSettings
    except ImportError:
        return models, None, None
    generator = RBModGenerator(models, RBModSettings())
    styles = random_images(2, 64, seed=1)
    requests = [
        GenerationRequest(prompt="a horse in the city", styles=(StyleRef(styles[i % 2]),), seed=i)
        for i in range(2)
    ]
    outputs: list = []
    # one timed call after the warm-up: tiny generation takes seconds per image on this CPU
    seconds = median_seconds(lambda: outputs.append(generator.generate(requests)), 1)
    return models, seconds / len(requests), [result.image for result in outputs[-1]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-scoring-"))

    models, generation_s, generated = tiny_generation(cache_dir)
    csd = csd_from_preset(models) if models is not None else None
    size = models.config.image_size if models is not None else 128
    n = args.batch
    if generated:
        images = [generated[i % len(generated)] for i in range(n)]
    else:
        images = random_images(n, size, seed=2)
    prompts = [f"a {word} in watercolor style" for word in ("horse", "dog", "city", "tree")] * (n // 4 + 1)
    shard_styles = [random_images(4, size, seed=3)[i % 4] for i in range(n)]

    def scorer_with(names) -> Scorer:
        config = scoring_preset("tiny", cache_dir=cache_dir, batch_size=n, scorers=tuple(names))
        return Scorer(config, device="cpu", csd=csd)

    def cached_seconds(scorer: Scorer) -> float:
        return median_seconds(
            lambda: scorer.score_with_embeddings(images, prompts[:n], shard_styles, [None] * n), args.repeats
        )

    scorer = scorer_with(BUILTINS)
    cached_s = cached_seconds(scorer)
    default_s = cached_seconds(scorer_with(DEFAULT_SCORERS))
    added = {
        name: cached_seconds(scorer_with([*DEFAULT_SCORERS, name])) - default_s
        for name in BUILTINS
        if name not in DEFAULT_SCORERS
    }

    seeds = iter(range(100, 100 + 10 * (args.repeats + 1)))
    fresh_styles = lambda: random_images(n, size, seed=next(seeds))  # noqa: E731
    batches = [fresh_styles() for _ in range(args.repeats + 1)]
    uncached = iter(batches)
    uncached_s = median_seconds(
        lambda: scorer.score(images, prompts[:n], next(uncached), [None] * n), args.repeats
    )

    images_per_s = n / cached_s
    print(f"tiny scoring, batch {n}, {size}px, names={','.join(scorer.names)}")
    print(f"  styles cached (4 per shard): {cached_s * 1e3:8.1f} ms/batch  {images_per_s:8.1f} images/s")
    print(f"  every style new:             {uncached_s * 1e3:8.1f} ms/batch  {n / uncached_s:8.1f} images/s")
    print(f"  default scorers only:        {default_s * 1e3:8.1f} ms/batch  {n / default_s:8.1f} images/s")
    for name, seconds in added.items():
        print(f"  + {name:<26} {seconds / n * 1e3:+8.3f} ms/image")
    if generation_s is not None:
        scoring_ms = cached_s / n * 1e3
        print(
            f"tiny RB-Mod generation: {generation_s * 1e3:.1f} ms/image (scoring {scoring_ms:.2f} ms/image)"
        )
    else:
        print("tiny RB-Mod generation: pipeline.rbmod.generate is not there yet; scoring alone is reported")

    # CLIP image + CSD, DINO, text, then the new heads: aesthetic (on the CLIP embedding) and nsfw
    scoring_gmacs = (
        2 * VIT_L14_GMACS + DINOV2_BASE_GMACS + CLIP_L_TEXT_GMACS + AESTHETIC_GMACS + VIT_B16_GMACS
    )
    stage_c = STAGE_C_PARAMS * STAGE_C_TOKENS * CFG_BATCH * STEPS / 1e9
    soc = STEPS * SOC_ITERATIONS * BACKWARD_FACTOR * VIT_L14_GMACS
    generation_gmacs = stage_c + soc
    fraction = scoring_gmacs / generation_gmacs
    estimate = f"scoring {scoring_gmacs:.0f}, generation >= {generation_gmacs:.0f}"
    print(f"real models, GMACs/image (estimate): {estimate}")
    print(f"  (Stage C {stage_c:.0f} + SOC {soc:.0f}, Stage B/A left out); scoring is {fraction:.2%} of it")
    summary = {
        "scoring_images_per_s": f"{images_per_s:.1f}",
        "scoring_ms_per_image": f"{cached_s / n * 1e3:.3f}",
        "style_cache_speedup": f"{uncached_s / cached_s:.2f}",
        "default_scorers_images_per_s": f"{n / default_s:.1f}",
        **{f"added_ms_{name}": f"{seconds / n * 1e3:.3f}" for name, seconds in added.items()},
        "generator": "rbmod" if generation_s is not None else "none",
        "tiny_generation_ms_per_image": f"{generation_s * 1e3:.1f}" if generation_s is not None else "na",
        "tiny_scoring_over_generation": f"{cached_s / n / generation_s:.4f}"
        if generation_s is not None
        else "na",
        "real_scoring_gmacs": f"{scoring_gmacs:.0f}",
        "real_generation_gmacs_lower_bound": f"{generation_gmacs:.0f}",
        "real_scoring_fraction": f"{fraction:.4f}",
    }
    print(" ".join(f"{key}={value}" for key, value in summary.items()))


if __name__ == "__main__":
    main()
