"""AFA attention-block time over the stock block, at the real Stage C block dims, on this CPU in fp32.

One `SDCascadeAttnBlock` (c=2048, 32 heads, 24x24 query tokens; condition 77 text + 4 pooled + 4 style
(+4 content) tokens; batch 2 = one CFG pair). Forms compared, all in the same run, interleaved:
stock processor, naive AFA (one full attention call per branch, the test oracle), "sliced" (K/V projected
once, one SDPA per branch) and "lse" (K/V projected once, shared tokens attended once, extras merged by
log-sum-exp). Prints ratios of the best of N interleaved runs (the least disturbed on a shared CPU; one
thread by default, as a second OpenMP thread on a busy 2-core box mostly measures its neighbours) and
ends with one key=value line.

    .venv/bin/python bench/bench_afa.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.unets.unet_stable_cascade import SDCascadeAttnBlock

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_rbmod_afa import NaiveAFAProcessor  # noqa: E402  (the oracle lives with the tests)

from pipeline.rbmod.afa import AFAAttnProcessor, AFAState  # noqa: E402


def time_block(block, x, cond, repeats) -> list[float]:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            block(x, cond)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--side", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    c = args.channels
    block = SDCascadeAttnBlock(c, c, args.heads).eval()
    x = torch.randn(2, c, args.side, args.side)
    results = {}
    for mode, image_embeddings in (("style", 1), ("content_style", 2)):
        cond = torch.randn(2, 77 + 4 + 4 * image_embeddings, c)
        state = AFAState(clip_seq=4)
        processors = {
            "stock": AttnProcessor2_0(),
            "naive": NaiveAFAProcessor(state),
            "sliced": AFAAttnProcessor(state, method="sliced"),
            "lse": AFAAttnProcessor(state, method="lse"),
        }
        times = {name: [] for name in processors}
        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, processor in processors.items():
                state.set_mode("off" if name == "stock" else mode)
                block.attention.set_processor(processor)
                times[name] += time_block(block, x, cond, 1)
        medians = {name: min(t[1:]) for name, t in times.items()}
        print(f"mode={mode}: " + ", ".join(f"{n} {m * 1e3:.1f} ms" for n, m in medians.items()))
        for name in ("naive", "sliced", "lse"):
            results[f"{mode}_{name}_over_stock"] = medians[name] / medians["stock"]
        results[f"{mode}_stock_ms"] = medians["stock"] * 1e3
    print(" ".join(f"{k}={v:.3f}" for k, v in results.items()) + f" threads={args.threads}")


if __name__ == "__main__":
    main()
