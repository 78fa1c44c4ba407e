"""Per-row generation settings: the optional manifest columns `width`, `height` and the RB-Modulation
settings a row may set for itself (`steps`, `guidance_scale`, `lambda_style`, `lambda_content`).

A manifest without these columns is planned, generated and written exactly as before (its uids, plan and
shards do not change); a null cell means "the run's setting" (`rbmod` in the run config, else the
preset's). Rows that differ in any of them never share a batch (see `batch_key`).

Sizes. Stable Cascade's Stage C works on a latent 42.67x smaller than the image (1024 px -> 24 cells,
diffusers' `resolution_multiple`); Stage B makes a latent 10.67x the Stage C one (`latent_dim_scale`)
that Stage A decodes 4x. Three Stage C cells are exactly 128 px (3 x 42.67 = 128, 3 x 10.67 x 4 = 128.04
-> 128), and a 128 px multiple is also a 32-cell multiple of Stage B's latent, which its down-sampling
levels halve without remainder. So a side that is a multiple of SIZE_STEP = 128 px comes out exactly
that size; any other side would come out another size (1000 px -> 24 cells -> 1024 px), so such a row
is refused with its row named, never rounded. Each side lies in [MIN_SIDE, MAX_SIDE] = [256, 2048]: below
256 px the prior's latent is under 6 cells (3 after its down-sampling), above 2048 px (48 x 48 cells)
the attention cost is 16x that of the 1024 px the model was trained around.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

WIDTH, HEIGHT = "width", "height"
SIZE_COLUMNS = (WIDTH, HEIGHT)
# the RB-Modulation settings (pipeline.rbmod.settings.RBModSettings fields) a row may set
SETTING_COLUMNS = ("steps", "guidance_scale", "lambda_style", "lambda_content")
ROW_SETTING_COLUMNS = (*SIZE_COLUMNS, *SETTING_COLUMNS)  # also the order in which they enter the uid
INTEGER_COLUMNS = (WIDTH, HEIGHT, "steps")  # the others are float64
SIZE_STEP, MIN_SIDE, MAX_SIDE = 128, 256, 2048
MAX_STEPS = 1000
DEFAULT_SIZE = (1024, 1024)  # the stable-cascade preset's image; the tiny preset makes 128 x 128

SIZE_RULE = (
    f"each side must be a multiple of {SIZE_STEP} px between {MIN_SIDE} and {MAX_SIDE} "
    f"(Stable Cascade's Stage C latent is 1/42.67 of the image, so only multiples of {SIZE_STEP} px "
    "decode to exactly the size asked for)"
)


def present_columns(names) -> tuple[str, ...]:
    """The per-row setting columns among `names`, in their canonical order."""
    return tuple(name for name in ROW_SETTING_COLUMNS if name in names)


def side_problem(side: int) -> str | None:
    """Why a width or height cannot be generated exactly, or None."""
    if not MIN_SIDE <= side <= MAX_SIDE or side % SIZE_STEP:
        nearest = min(max(round(side / SIZE_STEP) * SIZE_STEP, MIN_SIDE), MAX_SIDE)
        return f"{side} px is not allowed: {SIZE_RULE}; the nearest allowed side is {nearest}"
    return None


def setting_problem(name: str, value: Any) -> str | None:
    """Why a non-null setting value cannot be used, or None (the bounds RBModSettings enforces)."""
    if name == "steps":
        return None if 1 <= value <= MAX_STEPS else f"steps must be between 1 and {MAX_STEPS}, got {value}"
    if not math.isfinite(value) or value < 0:
        return f"{name} must be a finite number >= 0, got {value}"
    return None


def size_problem(width: int | None, height: int | None) -> str | None:
    """Why a row's (width, height) cannot be generated, or None (both null: the run's size)."""
    if (width is None) != (height is None):
        return "width and height must be set together (or both left empty for the run's size)"
    if width is None:
        return None
    problems = [
        f"{name} {why}" for name, side in ((WIDTH, width), (HEIGHT, height)) if (why := side_problem(side))
    ]
    return "; ".join(problems) or None


def row_size(row: Mapping[str, Any], default: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int]:
    """The (width, height) a row asks for, or `default` when it leaves them empty (or has no such columns)."""
    width, height = row.get(WIDTH), row.get(HEIGHT)
    return (int(width), int(height)) if width is not None and height is not None else default


def row_overrides(row: Mapping[str, Any]) -> dict[str, Any]:
    """The generator overrides a row sets (pipeline.rbmod.requests.GenerationRequest.overrides)."""
    return {name: row[name] for name in ROW_SETTING_COLUMNS if row.get(name) is not None}


def batch_key(row: Mapping[str, Any]) -> tuple:
    """What rows of one batch must share: the size and every setting (all None without the columns)."""
    return tuple(row.get(name) for name in ROW_SETTING_COLUMNS)


def uid_text(name: str, value: Any) -> str:
    """How a non-null value enters the uid: integers as decimal text, floats as Python's shortest
    round-trip repr (4.0 -> "4.0"), so 4 and 4.0 in a float column give one uid."""
    return str(int(value)) if name in INTEGER_COLUMNS else repr(float(value))
