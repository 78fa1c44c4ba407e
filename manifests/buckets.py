"""Aspect-ratio buckets for `stylegen manifest build --aspect-ratios 1:1,4:3,3:4,16:9 [--resolution 1024]`.

The sizes are the ones trainers bucket by (kohya-ss' scripts, SDXL's table): for each width on the size
grid, the tallest height whose area stays within resolution², sides within [MIN_SIDE, MAX_SIDE]; each
ratio takes the size of that frontier nearest to it in log ratio (ties: the larger area, then the wider).
The grid is the model's, SIZE_STEP = 128 px (manifests/row_settings.py), so at 1024: 1:1 -> 1024x1024,
4:3 -> 1152x896, 3:4 -> 896x1152, 16:9 -> 1280x768, 9:16 -> 768x1280 (SDXL's 64 px grid would give
1344x768 for 16:9, which Stable Cascade would make 1364x768).

A row's bucket is its generation seed (the manifest seed, else the one derived from its uid before
the size is added) modulo the number of ratios: deterministic, uniform over rows without seeds, and
with --repeats K each (style, content, prompt) cycles through the buckets.
"""

from __future__ import annotations

import math
import re

import numpy as np

from manifests.row_settings import MAX_SIDE, MIN_SIDE, SIZE_STEP, side_problem
from manifests.schema import ManifestError

_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")


def parse_ratios(text: str) -> list[tuple[float, float]]:
    """'1:1,4:3,16:9' -> [(1, 1), (4, 3), (16, 9)]; a bad or repeated item is refused, named."""
    ratios = []
    for item in text.split(","):
        match = _RATIO.match(item)
        if not match or not float(match[1]) > 0 or not float(match[2]) > 0:
            raise ManifestError(f"--aspect-ratios: {item.strip()!r} is not a ratio like 4:3")
        ratios.append((float(match[1]), float(match[2])))
    if len(set(ratios)) != len(ratios):
        raise ManifestError(f"--aspect-ratios: {text!r} lists a ratio twice")
    return ratios


def bucket_sizes(ratios: list[tuple[float, float]], resolution: int = 1024) -> list[tuple[int, int]]:
    """The (width, height) of each ratio at `resolution` (see the module docstring)."""
    if why := side_problem(resolution):
        raise ManifestError(f"--resolution {resolution}: {why}")
    area = resolution * resolution
    frontier = []
    for width in range(MIN_SIDE, MAX_SIDE + 1, SIZE_STEP):
        height = min(MAX_SIDE, area // width // SIZE_STEP * SIZE_STEP)
        if height >= MIN_SIDE:
            frontier.append((width, height))
    sizes = []
    for a, b in ratios:
        target = math.log(a / b)
        sizes.append(min(frontier, key=lambda s: (abs(math.log(s[0] / s[1]) - target), -s[0] * s[1], -s[0])))
    return sizes


def assign_buckets(seeds: np.ndarray, sizes: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(widths, heights) for rows with these generation seeds (int64, >= 0)."""
    index = np.asarray(seeds, dtype=np.int64) % len(sizes)
    table = np.asarray(sizes, dtype=np.int64)
    return table[index, 0], table[index, 1]
