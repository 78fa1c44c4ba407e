"""The tiny preset on this CPU: build and load times, and per-image times of each piece.

Measured in one run (medians of interleaved repeats; the machine is shared, so read the ratios):
  build       build_tiny into a fresh folder (seeded random weights, hub layout)
  load        load_preset("tiny") from that folder: first call (lazy imports included) and warm
  effnet      EfficientNet encoder on one reference image (reference_size^2)
  soc_iter    one SOC iteration: Previewer + descriptor (CSD) forward and backward, one latent
  prior       one Stage C prior forward on a CFG pair (batch 2)
  decode      Stage B + A per image, batch of 4: batch-invariant (one sample at a time, the CPU default)
              against the plain batched path; the ratio is what bit-identical batching costs
Ends with one key=value line.

Runs with one intra-op thread by default (tiny tensors gain nothing from more, and on a shared CPU two
spinning OpenMP threads were 10-40x slower); `--threads 2` to compare.

    .venv/bin/python bench/bench_rbmod_models.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.models.loading import load_preset  # noqa: E402
from pipeline.models.progress_bars import quiet_progress_bars  # noqa: E402
from pipeline.models.tiny import build_tiny, tiny_key  # noqa: E402
from pipeline.rbmod.decode import decode_latents  # noqa: E402
from pipeline.rbmod.image_ops import imagenet_normalize  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        with quiet_progress_bars():
            build_s = timed(lambda: build_tiny(cache / f"tiny-{tiny_key()}"))
        first_load_s = timed(lambda: load_preset("tiny", device="cpu", cache_dir=cache))
        warm = [timed(lambda: load_preset("tiny", device="cpu", cache_dir=cache)) for _ in range(3)]
        models = load_preset("tiny", device="cpu", cache_dir=cache)
    c = models.config
    gen = torch.Generator().manual_seed(0)

    reference = torch.rand(1, 3, c.reference_size, c.reference_size, generator=gen)
    latent = torch.randn(1, 16, c.stage_c_latent_size, c.stage_c_latent_size, generator=gen)
    tokens = models.tokenizer(["a cat", ""], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        text = models.text_encoder(
            tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        )

    def effnet():
        with torch.no_grad():
            models.effnet(imagenet_normalize(reference))

    def soc_iter():
        z = latent.clone().requires_grad_(True)
        _, style = models.descriptor(models.previewer(z))
        (1 - style.sum()).backward()

    def prior():
        with torch.no_grad():
            models.prior(
                sample=latent.repeat(2, 1, 1, 1),
                timestep_ratio=torch.tensor([0.5, 0.5]),
                clip_text_pooled=text.text_embeds[:, None],
                clip_text=text.hidden_states[-1],
                clip_img=torch.zeros(2, 1, models.prior.config.clip_image_in_channels),
                return_dict=False,
            )

    batch = 4
    embeddings = latent.repeat(batch, 1, 1, 1)

    def decode(invariant: bool):
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        decode_latents(models, embeddings, ["a cat"] * batch, gens, batch_invariant=invariant)

    pieces = {"effnet": effnet, "soc_iter": soc_iter, "prior": prior}
    pieces["decode_invariant"] = lambda: decode(True)
    pieces["decode_batched"] = lambda: decode(False)
    for fn in pieces.values():  # warm-up (oneDNN primitives, allocator)
        fn()
    times = {name: [] for name in pieces}
    for _ in range(args.repeats):
        for name, fn in pieces.items():
            times[name].append(timed(fn))
    ms = {name: median_ms(t) for name, t in times.items()}
    ms["decode_invariant"] /= batch
    ms["decode_batched"] /= batch

    steps = c.stage_c_steps
    # one stylized image at the tiny defaults: per step a prior CFG pair + 3 SOC iterations
    stage_c_ms = steps * (ms["prior"] + 3 * ms["soc_iter"]) + ms["effnet"]
    image_ms = stage_c_ms + ms["decode_invariant"]
    print(f"tiny build {build_s:.2f} s, first load {first_load_s:.2f} s, warm load {min(warm):.3f} s")
    for name, value in ms.items():
        print(f"  {name:18s} {value:8.2f} ms{' per image' if name.startswith('decode') else ''}")
    print(f"estimated per image at the tiny defaults ({steps} Stage C steps, 3 SOC iters): {image_ms:.0f} ms")
    ratio = ms["decode_invariant"] / ms["decode_batched"]
    print(
        f"threads={args.threads} build_s={build_s:.2f} first_load_s={first_load_s:.2f} "
        f"warm_load_s={min(warm):.3f} "
        f"effnet_ms={ms['effnet']:.2f} soc_iter_ms={ms['soc_iter']:.2f} prior_cfg_ms={ms['prior']:.2f} "
        f"decode_invariant_ms={ms['decode_invariant']:.2f} decode_batched_ms={ms['decode_batched']:.2f} "
        f"invariant_over_batched={ratio:.2f} est_image_ms={image_ms:.0f}"
    )


if __name__ == "__main__":
    main()
