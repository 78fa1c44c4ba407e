"""Image encoding with no timestamps or carried-over metadata, so equal pixels give equal bytes."""

from __future__ import annotations

import io

from PIL import Image

# Tar member extension -> Pillow format name. "jpeg" is accepted as an alias of "jpg".
IMAGE_EXTENSIONS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_ALIASES = {"jpeg": "jpg"}
# Modes each format stores as is; anything else is converted to RGB first.
_NATIVE_MODES = {"png": {"RGB", "RGBA", "L", "LA"}, "jpg": {"RGB", "L"}, "webp": {"RGB", "RGBA"}}


def normalize_image_format(fmt: str) -> str:
    """'PNG', 'jpeg', 'webp' ... -> the member extension ('png', 'jpg', 'webp'); ValueError otherwise."""
    ext = _ALIASES.get(fmt.lower(), fmt.lower())
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"unsupported image format {fmt!r}; use one of {sorted(IMAGE_EXTENSIONS)}")
    return ext


def encode_image(image: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode `image` as png/jpg/webp. `quality` (1-100) applies to jpg and webp; png is lossless.

    The pixels are copied into a fresh image so nothing from the source file (ICC profile, EXIF,
    text chunks, dpi) reaches the output, and every encoder option is fixed."""
    ext = normalize_image_format(fmt)
    if not 1 <= quality <= 100:
        raise ValueError(f"image quality must be within 1..100, got {quality}")
    mode = image.mode if image.mode in _NATIVE_MODES[ext] else "RGB"
    pixels = image.convert(mode) if mode != image.mode else image
    clean = Image.frombytes(mode, pixels.size, pixels.tobytes())
    buffer = io.BytesIO()
    if ext == "png":
        clean.save(buffer, "PNG", compress_level=6, optimize=False)
    elif ext == "jpg":
        clean.save(buffer, "JPEG", quality=quality, optimize=False, progressive=False, subsampling=0)
    else:
        clean.save(buffer, "WEBP", quality=quality, method=4, lossless=False, exact=False)
    return buffer.getvalue()
