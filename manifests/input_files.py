"""Read an input image's bytes safely: only regular files and objects, never more than a size limit.

A FIFO, a character device (/dev/zero, /dev/urandom), a socket or a directory is refused at once: the
file is opened with O_NONBLOCK, so even a FIFO without a writer cannot block the open, and its type is
checked before a byte is read. A file or object larger than the limit is refused from its stat (or S3
ContentLength) before reading, so a sparse 16 GiB '.png' is never read into memory; the read itself
stops one byte past the limit, for a file that grows meanwhile. Used by the run's input loader,
`manifest validate --check-files` and the report.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DEFAULT_MAX_INPUT_BYTES = 256 * 2**20  # far above any real reference image (a 12k x 12k PNG is ~200 MiB)

_KINDS = (  # (a directory never gets here: opening one as a file raises IsADirectoryError)
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputFileError(ValueError):
    """The input exists but is not something to read as an image (its message is the reason)."""


def too_large(size: int, max_bytes: int) -> InputFileError:
    return InputFileError(f"{size} bytes, over the input size limit of {max_bytes} bytes")


def read_local_file(path: str | Path, max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; InputFileError for anything else. OSError
    (missing, permission denied, ...) is left to the caller."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "a special file")
            raise InputFileError(f"not a regular file ({kind})")
        if info.st_size > max_bytes:
            raise too_large(info.st_size, max_bytes)
        data = _read_up_to(file, max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    return data


def read_s3_object(client, bucket: str, key: str, max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """An object's bytes, refused from its ContentLength (before the body is read) when too large."""
    response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"]
    try:
        size = int(response.get("ContentLength") or 0)
        if size > max_bytes:
            raise too_large(size, max_bytes)
        data = body.read(max_bytes + 1)
    finally:
        body.close()
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    return data


def _read_up_to(file, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = file.read(min(left, 8 * 2**20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
