"""Read an input image's bytes safely: only regular files and objects, never more than a size limit.

A FIFO, a character device (/dev/zero, /dev/urandom), a socket or a directory is refused at once: the
file is opened with O_NONBLOCK, so even a FIFO without a writer cannot block the open, and its type is
checked before a byte is read. A file or object larger than the limit is refused from its stat (or S3
ContentLength) before reading, so a sparse 16 GiB '.png' is never read into memory; the read itself
stops one byte past the limit, for a file that grows meanwhile. `read_bytes` reads any input URI (path,
file://, s3://) this way. Used by the run's input loader, `manifest validate --check-files` and the report.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from manifests.uris import local_path, split_s3, uri_scheme

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


class InputError(ValueError):
    """An input image that cannot be read or decoded; the message names the URI."""


def read_bytes(uri: str, max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """The raw bytes behind a local path, file:// or s3:// URI: a regular file or an object of at most
    `max_bytes`, else InputError at once (never blocks on a FIFO, never reads a device)."""
    scheme = uri_scheme(uri)
    try:
        if scheme in ("", "file"):
            return read_local_file(local_path(uri), max_bytes)
        if scheme == "s3":
            return _read_s3(*split_s3(uri), max_bytes)
    except InputFileError as error:
        raise InputError(f"{uri}: {error}") from None
    except FileNotFoundError:
        raise InputError(f"{uri}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{uri}: is a directory, not an image file") from None
    except PermissionError:
        raise InputError(f"{uri}: permission denied") from None
    except OSError as error:
        raise InputError(f"{uri}: cannot read ({error.strerror or error})") from None
    raise InputError(f"{uri}: unsupported URI scheme {scheme!r} (use a path, file:// or s3://)")


# --- s3 -------------------------------------------------------------------------------------------

_s3_client = None
_s3_lock = threading.Lock()


def _read_s3(bucket: str, key: str, max_bytes: int) -> bytes:
    from botocore.exceptions import ClientError

    try:
        return read_s3_object(_client(), bucket, key, max_bytes)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError from None
        raise InputError(f"s3://{bucket}/{key}: {code or 'S3 error'}") from None


def _client():
    """One boto3 client per process (thread-safe); endpoint from AWS_ENDPOINT_URL, credentials: the chain."""
    global _s3_client
    with _s3_lock:
        if _s3_client is None:
            import boto3
            from botocore.config import Config

            _s3_client = boto3.client("s3", config=Config(retries={"mode": "adaptive", "max_attempts": 8}))
        return _s3_client
