"""Throughput of the batch API: images/s at batch 8 over batch 1, on the tiny preset and a mid-size config.

Both execution modes are measured: `batch_invariant=True` (the CPU default: each request runs as its
own batch, bit-identical whatever the batching) and `batch_invariant=False` (one batched prior/SOC/Stage B
call per step, the GPU default). Style features are cached before timing (a shard shares styles).

Mid-size: the tiny preset with a 256-wide, 2+2-layer prior on 16x8x8 latents (256^2 images) and a
128-wide Previewer, random weights.

    .venv/bin/python bench/bench_batch.py [--images 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.loading import load_preset  # noqa: E402
from pipeline.rbmod.generate import GenerationRequest, RBModGenerator, RBModSettings, StyleRef  # noqa: E402
from pipeline.rbmod.previewer import Previewer  # noqa: E402


def mid_size_models(tiny):
    from diffusers import StableCascadeUNet

    torch.manual_seed(0)
    prior = StableCascadeUNet(
        in_channels=16,
        out_channels=16,
        conditioning_dim=256,
        block_out_channels=[256, 256],
        num_attention_heads=[4, 4],
        down_num_layers_per_block=[2, 2],
        up_num_layers_per_block=[2, 2],
        switch_level=[False],
        clip_text_in_channels=32,
        clip_text_pooled_in_channels=32,
        clip_image_in_channels=32,
        dropout=[0.0, 0.0],
    )
    config = tiny.config.model_copy(
        update=dict(image_size=256, stage_c_latent_size=8, reference_size=256, preview_size=64)
    )
    return dataclasses.replace(
        tiny,
        prior=prior.eval().requires_grad_(False),
        previewer=Previewer(16, 128, 3).eval().requires_grad_(False),
        config=config,
    )


def requests(count: int) -> list[GenerationRequest]:
    rng = np.random.default_rng(0)
    styles = [Image.fromarray(rng.integers(0, 256, (160, 192, 3), dtype=np.uint8)) for _ in range(2)]
    prompts = ["a horse in watercolor style", "a castle on a hill", "a boat at sea", "a cat"]
    return [GenerationRequest(prompts[i % 4], (StyleRef(styles[i % 2]),), seed=i) for i in range(count)]


def throughput(models, invariant: bool, count: int, repeats: int) -> tuple[float, float]:
    """(images/s at batch 1, images/s at batch 8), the two taking turns."""
    generator = RBModGenerator(models, RBModSettings(batch_invariant=invariant, max_batch_size=8))
    batch = requests(count)
    generator.generate(batch[:2])  # warm-up; caches the two styles
    one, eight = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for request in batch:
            generator.generate([request])
        one.append(count / (time.perf_counter() - start))
        start = time.perf_counter()
        for i in range(0, count, 8):
            generator.generate(batch[i : i + 8])
        eight.append(count / (time.perf_counter() - start))
    return max(one), max(eight)  # best of the interleaved rounds: the least disturbed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as cache:
        tiny = load_preset("tiny", device="cpu", cache_dir=Path(cache))
    results: dict[str, float] = {}
    for name, models in (("tiny", tiny), ("mid", mid_size_models(tiny))):
        for invariant in (False, True):
            mode = "invariant" if invariant else "batched"
            one, eight = throughput(models, invariant, args.images, args.repeats)
            print(f"{name} {mode}: batch 1 {one:.2f} img/s, batch 8 {eight:.2f} img/s")
            results[f"{name}_{mode}_b1_img_s"] = one
            results[f"{name}_{mode}_b8_over_b1"] = eight / one
    print(" ".join(f"{k}={v:.3f}" for k, v in results.items()) + f" threads={args.threads}")


if __name__ == "__main__":
    main()
