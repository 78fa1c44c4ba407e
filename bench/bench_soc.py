"""SOC step cost: reference targets computed once per request (ours) over recomputing them at every step
(the official code, spec 2.3), on a mid-size config that fits this CPU.

Mid-size: the real EfficientNetV2-S encoder on a 384^2 reference (-> 16x12x12 latent), the real Previewer
(c_hidden 512, -> 96^2 preview), and a ViT-S-sized CSD (width 384, 6 layers, patch 16, 224^2); random
weights, fp32, M = 3. One "SOC step" is what one denoising step adds:
- cached:   M x (Previewer + CSD forward/backward)
- official: reference EffNet -> Previewer -> CSD, then the same M iterations; in composition mode the
            official code also runs CSD twice per iteration (content and style) on the same preview.

    .venv/bin/python bench/bench_soc.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.rbmod.csd import CSD, vision_config_for  # noqa: E402
from pipeline.rbmod.descriptor import csd_descriptor  # noqa: E402
from pipeline.rbmod.effnet import EfficientNetEncoder  # noqa: E402
from pipeline.rbmod.image_ops import imagenet_normalize  # noqa: E402
from pipeline.rbmod.previewer import Previewer  # noqa: E402
from pipeline.rbmod.soc import DescriptorTargets, SOCWeights, soc_refine  # noqa: E402

ITERATIONS = 3


def reference_targets(effnet, previewer, descriptor, image):
    with torch.no_grad():
        return descriptor(previewer(effnet(imagenet_normalize(image))))


def official_composition_step(z0, style_ref, content_ref, effnet, previewer, descriptor, lr):
    """What the official code does per step in composition mode: both references re-encoded, and the
    descriptor run once for content and once for style on the same preview."""
    _, style_target = descriptor(previewer(effnet(imagenet_normalize(style_ref))))
    content_target, _ = descriptor(previewer(effnet(imagenet_normalize(content_ref))))
    z = z0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    for _ in range(ITERATIONS):
        optimizer.zero_grad()
        preview = previewer(z)
        content, _ = descriptor(preview)
        _, style = descriptor(preview)
        loss = (1 - F.cosine_similarity(style, style_target.detach())).mean()
        loss = loss + (1 - F.cosine_similarity(content, content_target.detach())).mean()
        loss.backward()
        optimizer.step()
    return z.detach()


def interleaved_medians(variants: dict, repeats: int) -> dict[str, float]:
    """Best-of-N seconds per variant, the variants taking turns (on a shared CPU the least disturbed run
    is the closest to the true cost)."""
    times = {name: [] for name in variants}
    for round_ in range(repeats + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    effnet = EfficientNetEncoder().eval().requires_grad_(False)
    previewer = Previewer().eval().requires_grad_(False)
    csd = CSD(vision_config_for(384, 6, 16, 224, 1536), 768)
    with torch.no_grad():
        csd.last_layer_style.normal_(std=384**-0.5)
        csd.last_layer_content.normal_(std=384**-0.5)
    descriptor = csd_descriptor(csd)
    style_ref, content_ref = torch.rand(1, 3, 384, 384), torch.rand(1, 3, 384, 384)
    x0 = torch.randn(1, 16, 12, 12)
    stylize = SOCWeights(1.0, 0.0, 1.0)
    compose = SOCWeights(1.0, 1.0, 0.0)

    style_content, style_style = reference_targets(effnet, previewer, descriptor, style_ref)
    content_content, _ = reference_targets(effnet, previewer, descriptor, content_ref)
    cached_style = DescriptorTargets(style=style_style)
    cached_both = DescriptorTargets(style=style_style, content=content_content)

    def refine(targets, weights):
        return soc_refine(
            x0, lr=0.1, iterations=ITERATIONS, previewer=previewer, descriptor=descriptor,
            targets=targets, weights=weights,
        )  # fmt: skip

    def official_stylize():
        _, style = reference_targets(effnet, previewer, descriptor, style_ref)
        return refine(DescriptorTargets(style=style), stylize)

    results = interleaved_medians(
        {
            "stylize_cached_s": lambda: refine(cached_style, stylize),
            "stylize_official_s": official_stylize,
            "compose_cached_s": lambda: refine(cached_both, compose),
            "compose_official_s": lambda: official_composition_step(
                x0, style_ref, content_ref, effnet, previewer, descriptor, 0.1
            ),
        },
        args.repeats,
    )
    results["stylize_official_over_cached"] = results["stylize_official_s"] / results["stylize_cached_s"]
    results["compose_official_over_cached"] = results["compose_official_s"] / results["compose_cached_s"]
    results["threads"] = args.threads
    for key in ("stylize", "compose"):
        print(
            f"{key}: cached {results[f'{key}_cached_s'] * 1e3:.0f} ms/step, "
            f"official {results[f'{key}_official_s'] * 1e3:.0f} ms/step"
        )
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
