"""Style and content images: read (local path, file://, s3://), decode, cache per process, prefetch.

A shard usually repeats a handful of style images, so decoded images are kept in a small LRU cache
keyed by URI (the same PIL object comes back, which also lets the generator's per-style cache hit).
`InputLoader.prefetch(rows)` starts loading a batch's images on background threads and returns at
once; the worker calls it for batch i+1 before generating batch i, so decoding hides behind the GPU.
A bad input (missing file, undecodable bytes, a FIFO or device, a file over the size limit) becomes an
error for that row only, at once: see manifests/input_files.py.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image, ImageOps

from manifests.input_files import DEFAULT_MAX_INPUT_BYTES, InputError, read_bytes


@dataclass(frozen=True)
class RowInputs:
    style: Image.Image | None
    content: Image.Image | None
    error: str | None = None  # "style: <why>" / "content: <why>" when the row cannot run


def decode_image(data: bytes, uri: str) -> Image.Image:
    """Decode fully (so truncation shows up here, not later), honour EXIF rotation, return RGB."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except Exception as error:  # PIL raises many types for bad bytes
        raise InputError(f"{uri}: cannot decode image ({type(error).__name__}: {error})") from None
    return image


class InputLoader:
    """Per-process image cache plus a thread pool that loads a batch's inputs ahead of time."""

    def __init__(
        self, max_cached_images: int = 128, threads: int = 8, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    ):
        self.max_cached_images = max_cached_images
        self.max_input_bytes = max_input_bytes
        self._cache: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inputs")
        self.reads = 0  # images actually read and decoded (cache misses), for tests

    def image(self, uri: str) -> Future:
        """A future of the decoded image at `uri`; concurrent and repeated requests share one read."""
        if not isinstance(uri, str) or not uri.strip():
            failed: Future = Future()
            failed.set_exception(InputError(f"{uri!r}: not an image URI"))
            return failed
        with self._lock:
            future = self._cache.get(uri)
            if future is not None and not (future.done() and future.exception() is not None):
                self._cache.move_to_end(uri)
                return future
            future = self._pool.submit(self._load, uri)
            self._cache[uri] = future
            while len(self._cache) > self.max_cached_images:
                self._cache.popitem(last=False)
            return future

    def _load(self, uri: str) -> Image.Image:
        with self._lock:
            self.reads += 1
        try:
            return decode_image(read_bytes(uri, self.max_input_bytes), uri)
        except InputError:
            raise
        except Exception as error:  # e.g. a NUL byte in a path, a bucket name boto3 refuses: this row only
            raise InputError(f"{uri}: cannot read ({type(error).__name__}: {error})") from None

    def prefetch(self, rows: Iterable[Mapping]) -> PendingInputs:
        """Start loading the `style` and `content` of each row; `.result()` gathers them."""
        return PendingInputs(
            [
                (self.image(row.get("style")), self.image(row["content"]) if row.get("content") else None)
                for row in rows
            ]
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class PendingInputs:
    def __init__(self, futures: list[tuple[Future, Future | None]]):
        self._futures = futures

    def result(self) -> list[RowInputs]:
        loaded = []
        for style_future, content_future in self._futures:
            style = content = None
            errors = []
            try:
                style = style_future.result()
            except InputError as error:
                errors.append(f"style: {error}")
            if content_future is not None:
                try:
                    content = content_future.result()
                except InputError as error:
                    errors.append(f"content: {error}")
            loaded.append(RowInputs(style, content, "; ".join(errors) or None))
        return loaded
