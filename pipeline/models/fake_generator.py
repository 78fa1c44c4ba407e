"""FakeGenerator: the RBModGenerator interface without a model, for tests and benchmarks.

Each image is a deterministic function of the request (seed, prompt, the style's mean colour and,
in composition mode, the content's), so reruns are byte-identical; its size is the request's own
`width` x `height` override (a manifest's per-row size), else `size` square. Latency is a sleep (it
releases the GIL, so many fake "GPUs" fit on a small CPU). Faults can be injected (FakeGeneratorConfig):
- `fail_uids` / `fail_prompts`: generate() raises for a batch holding such a request;
- `hang_uids`: the first time such a request runs (a flag file in `hang_flag_dir` holding the pid
  records it, across processes), generate() sleeps `hang_s` (every time with `hang_every_time`);
- `crash_uids`: the process exits on the spot, every time (like a CUDA fault).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.models.fake_config import FakeGeneratorConfig
from pipeline.rbmod.requests import GenerationRequest, GenerationResult


class InjectedFailure(RuntimeError):
    """Raised for requests the config marks as failing."""


class FakeGenerator:
    def __init__(self, config: FakeGeneratorConfig | None = None):
        self.config = config or FakeGeneratorConfig()
        self.calls = 0  # generate() calls, for tests that check batching

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls += 1
        cfg = self.config
        for request in requests:
            if request.uid in cfg.crash_uids:
                os._exit(17)  # a hard crash (like a CUDA fault): no exception, the process is gone
        for request in requests:
            if request.uid in cfg.fail_uids or any(s in request.prompt for s in cfg.fail_prompts):
                raise InjectedFailure(f"fake generator: injected failure for uid {request.uid}")
        for request in requests:
            if request.uid in cfg.hang_uids and (cfg.hang_every_time or self._first_time(request.uid)):
                time.sleep(cfg.hang_s)
        time.sleep(cfg.batch_latency_s + cfg.latency_s * len(requests))
        return [GenerationResult(image=self._image(r), params=self._params(r)) for r in requests]

    def _first_time(self, uid: str) -> bool:
        """True once per uid across processes: the flag file records that it already hung."""
        flag_dir = Path(self.config.hang_flag_dir or ".")
        flag_dir.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(flag_dir / f"{uid}.hung", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(descriptor, str(os.getpid()).encode())  # tests use it to find (and kill) this process
        os.close(descriptor)
        return True

    def _size(self, request: GenerationRequest) -> tuple[int, int]:
        overrides = request.overrides
        if overrides.get("width") is not None and overrides.get("height") is not None:
            return int(overrides["width"]), int(overrides["height"])
        return self.config.size, self.config.size

    def _image(self, request: GenerationRequest) -> Image.Image:
        digest = hashlib.sha256(f"{request.seed}\0{request.prompt}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        pattern = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        pattern = np.asarray(Image.fromarray(pattern).resize(self._size(request), Image.NEAREST), np.float32)
        tint = _mean_colour(request.styles[0].image)
        if request.content is not None:
            tint = (tint + _mean_colour(request.content)) / 2
        pixels = 0.5 * pattern + 0.5 * tint
        return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), "RGB")

    def _params(self, request: GenerationRequest) -> dict:
        return {
            "generator": "fake",
            "mode": "composition" if request.content is not None else "stylization",
            "seed": request.seed,
            "resolution": list(self._size(request)),
            "style_weights": [ref.weight for ref in request.styles],
        }


def _mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((1, 1), Image.BOX), dtype=np.float32).reshape(3)
