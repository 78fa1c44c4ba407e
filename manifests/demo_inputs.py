"""Synthetic demo inputs, made locally with no download: procedural style images (distinct palettes and
textures), simple content shapes, and prompts written only with words the tiny tokenizer encodes as one
token each (some WORDS, e.g. "cat" or "mountain", still split into pieces there, so they are avoided).
The same call always writes the same bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
STYLIZATION_PROMPTS = [
    "a horse in watercolor style",
    "a city street at night",
    "a small house by the river",
    "a portrait of a dog",
    "a red sun in the sky",
    "a bird on a tree",
    "a flower in the dark",
    "the blue sea at day",
]
# One prompt per content shape, in the order of CONTENT_SHAPES.
CONTENT_SHAPES = {"circle": "a yellow sun", "square": "a small house", "triangle": "a big tree"}


@dataclass(frozen=True)
class DemoInputs:
    styles: list[str]
    contents: list[str]
    prompts_file: str  # the stylization prompts, one per line
    content_prompts: list[str]  # the prompt for each content image


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE


def _blend(weight: np.ndarray, low, high) -> np.ndarray:
    """Per-pixel mix of two RGB colours; weight in [0, 1]."""
    weight = np.clip(weight, 0.0, 1.0)[..., None]
    return (np.array(low, np.float32) * (1 - weight) + np.array(high, np.float32) * weight).astype(np.uint8)


def _stripes() -> np.ndarray:
    y, x = _grid()
    return _blend((np.sin((x + y) * 40) > 0).astype(np.float32), (230, 90, 40), (250, 210, 120))


def _checks() -> np.ndarray:
    y, x = _grid()
    return _blend(((x * 8).astype(int) + (y * 8).astype(int)) % 2, (20, 40, 120), (240, 220, 60))


def _gradient() -> np.ndarray:
    y, x = _grid()
    return _blend(np.hypot(x - 0.5, y - 0.5) * 1.6, (250, 150, 40), (70, 20, 110))


def _blobs() -> np.ndarray:
    y, x = _grid()
    rng = np.random.default_rng(7)
    field = np.zeros((SIZE, SIZE), np.float32)
    for cx, cy, r in rng.uniform([0, 0, 0.05], [1, 1, 0.2], size=(12, 3)):
        field += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    return _blend(field / field.max(), (15, 60, 30), (170, 240, 120))


def _dots() -> np.ndarray:
    y, x = _grid()
    cell_x, cell_y = (x * 6) % 1 - 0.5, (y * 6) % 1 - 0.5
    return _blend((np.hypot(cell_x, cell_y) < 0.3).astype(np.float32), (20, 20, 20), (220, 30, 60))


def _waves() -> np.ndarray:
    y, x = _grid()
    return _blend(0.5 + 0.5 * np.sin(y * 25 + np.sin(x * 12) * 2.5), (20, 150, 160), (250, 170, 200))


STYLE_PATTERNS = {
    "stripes": _stripes,
    "checks": _checks,
    "gradient": _gradient,
    "blobs": _blobs,
    "dots": _dots,
    "waves": _waves,
}


def _shape(name: str) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (28, 28, 100, 100)
    if name == "circle":
        draw.ellipse(box, fill=(30, 30, 30))
    elif name == "square":
        draw.rectangle(box, fill=(30, 30, 30))
    else:
        draw.polygon([(64, 20), (108, 104), (20, 104)], fill=(30, 30, 30))
    return image


def write_demo_inputs(directory: Path) -> DemoInputs:
    """styles/*.png, contents/*.png and prompts.txt under `directory` (overwritten if present)."""
    (directory / "styles").mkdir(parents=True, exist_ok=True)
    (directory / "contents").mkdir(parents=True, exist_ok=True)
    styles = []
    for index, (name, pattern) in enumerate(STYLE_PATTERNS.items()):
        path = directory / "styles" / f"style-{index:02d}-{name}.png"
        Image.fromarray(pattern()).save(path)
        styles.append(str(path.absolute()))
    contents = []
    for index, name in enumerate(CONTENT_SHAPES):
        path = directory / "contents" / f"content-{index:02d}-{name}.png"
        _shape(name).save(path)
        contents.append(str(path.absolute()))
    prompts_file = directory / "prompts.txt"
    prompts_file.write_text("\n".join(STYLIZATION_PROMPTS) + "\n")
    return DemoInputs(styles, contents, str(prompts_file.absolute()), list(CONTENT_SHAPES.values()))
