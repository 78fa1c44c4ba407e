"""Helpers for the manifest tests (plain functions: each test module declares the fixtures it needs)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png_bytes(color=(200, 30, 30), size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(path: Path, color=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color))
    return str(path)


def write_parquet(path: Path, columns: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


def sample_images(root: Path) -> dict[str, str]:
    """Three real style images and two content images, with awkward names, under `root`."""
    root = root / "im ages ü"
    return {
        "s1": write_image(root / "styles" / "a.first style.png", (250, 0, 0)),
        "s2": write_image(root / "styles" / "b-ü.png", (0, 250, 0)),
        "s3": write_image(root / "styles" / "sub" / "c.png", (0, 0, 250)),
        "c1": write_image(root / "contents" / "cat 1.png", (10, 10, 10)),
        "c2": write_image(root / "contents" / "dog.png", (90, 90, 90)),
    }
