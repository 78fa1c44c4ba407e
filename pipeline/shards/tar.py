"""The WebDataset tar of a shard: `{uid}.{png|jpg|webp}` + `{uid}.json` (+ `{uid}.txt`, the caption) per
sample, byte-reproducible.

Samples are sorted by uid and each sample's members are written together in extension order; since
'.' sorts before every hex digit this is also plain member-name order. Every header field that could
vary between machines or runs (mtime, owner, mode) is fixed, as webdataset's TarWriter sets them with
a fixed mtime (a plain `tarfile` stream, so writing a shard does not import torch through webdataset;
tests/test_shards.py checks the bytes against TarWriter's), into a temporary file that is renamed into
place only when complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.shards.images import IMAGE_EXTENSIONS
from pipeline.shards.keys import sample_json, validate_uid

TAR_MTIME = 0  # fixed member mtime (an int: a float mtime would add a pax header)
_TAR_OWNER = "stylegen"
_TAR_MODE = 0o444


@dataclass(frozen=True)
class ShardSample:
    """One kept (or rejected) sample: encoded image bytes, the metadata for its `.json` member and its
    caption for the `.txt` member (none when None).

    `meta` is whatever the worker records (pipeline.worker.shard_files.ShardFiles.sample_metadata).
    It is written as canonical JSON with `uid` added; the caption as UTF-8."""

    uid: str
    image: bytes
    ext: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    caption: str | None = None

    def __post_init__(self) -> None:
        validate_uid(self.uid)
        if self.ext not in IMAGE_EXTENSIONS:
            raise ValueError(
                f"sample {self.uid}: image extension {self.ext!r} is not one of {sorted(IMAGE_EXTENSIONS)}"
            )
        if not isinstance(self.image, bytes | bytearray) or not self.image:
            raise ValueError(f"sample {self.uid}: image must be non-empty encoded bytes")
        if self.caption is not None and not isinstance(self.caption, str):
            raise ValueError(
                f"sample {self.uid}: caption must be a string, got {type(self.caption).__name__}"
            )
        if "uid" in self.meta and self.meta["uid"] != self.uid:
            raise ValueError(f"sample {self.uid}: meta['uid'] is {self.meta['uid']!r}, not the sample uid")

    def json_bytes(self) -> bytes:
        try:
            return sample_json({**self.meta, "uid": self.uid})
        except (TypeError, ValueError) as error:
            raise ValueError(f"sample {self.uid}: metadata is not JSON-serializable: {error}") from None


class TarStats(NamedTuple):
    size: int  # bytes
    sha256: str  # hex digest of the whole tar
    count: int  # samples


class _HashingWriter:
    """Passes writes through to a file while hashing and counting them (one pass over the bytes)."""

    def __init__(self, file) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)


def write_tar(samples: Iterable[ShardSample], path: str | Path) -> TarStats:
    """Write `samples` as a tar at `path` (atomically: temp file + fsync + rename) and describe it."""
    path = Path(path)
    ordered = sorted(samples, key=lambda sample: sample.uid)
    for previous, sample in pairwise(ordered):
        if previous.uid == sample.uid:
            raise ValueError(f"sample uid {sample.uid} appears twice in one shard")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(temp, "wb") as file:
            sink = _HashingWriter(file)
            with tarfile.open(fileobj=sink, mode="w|") as tar:  # a stream: written once, in order
                for sample in ordered:
                    members = {sample.ext: bytes(sample.image), "json": sample.json_bytes()}
                    if sample.caption is not None:
                        members["txt"] = sample.caption.encode("utf-8")
                    for ext, data in sorted(members.items()):
                        tar.addfile(_member(f"{sample.uid}.{ext}", len(data)), io.BytesIO(data))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return TarStats(size=sink.size, sha256=sink.hash.hexdigest(), count=len(ordered))


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, _TAR_MODE
    info.uname = info.gname = _TAR_OWNER
    return info
