"""The generator protocol's data types: what the shard worker asks for and what it gets back.

Kept free of torch and diffusers so that code which only builds or reads requests (the worker, the fake
generator used by tests and benchmarks) stays cheap to import. `pipeline.rbmod.generate.RBModGenerator`
and `pipeline.models.fake_generator.FakeGenerator` both take these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class StyleRef:
    image: Image.Image
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    styles: tuple[StyleRef, ...]
    seed: int
    content: Image.Image | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    uid: str = ""


@dataclass
class GenerationResult:
    image: Image.Image
    params: dict  # the exact parameters used
