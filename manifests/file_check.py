"""Check that image files exist and decode, in parallel (local paths, file:// and s3:// via boto3).

Threads suit this: the work is file/network I/O and Pillow decoding, both of which release the GIL.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from manifests.input_files import DEFAULT_MAX_INPUT_BYTES, InputFileError, read_local_file, read_s3_object
from manifests.uris import local_path, split_s3, uri_scheme

MISSING_FILE, UNREADABLE_FILE = "missing-file", "unreadable-file"


class _S3Reader:
    """One boto3 client shared by the threads (clients are thread-safe; creating one is not cheap)."""

    def __init__(self):
        self._client = None
        self._lock = threading.Lock()

    def read(self, uri: str, max_bytes: int) -> bytes:
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.client("s3")  # honours AWS_ENDPOINT_URL and AWS_* credentials
        bucket, key = split_s3(uri)
        return read_s3_object(self._client, bucket, key, max_bytes)


def check_image_uris(
    uris: Iterable[str], workers: int = 16, max_bytes: int = DEFAULT_MAX_INPUT_BYTES
) -> dict[str, tuple[str, str]]:
    """{uri: (kind, reason)} for every URI that is missing, not a regular file or object, over the size
    limit, or does not decode as an image (see manifests/input_files.py: nothing here blocks)."""
    unique = sorted(set(uris))
    s3 = _S3Reader()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda uri: _check_one(uri, s3, max_bytes), unique)
        return {uri: problem for uri, problem in zip(unique, results, strict=True) if problem is not None}


def _check_one(uri: str, s3: _S3Reader, max_bytes: int) -> tuple[str, str] | None:
    try:
        data = (
            s3.read(uri, max_bytes)
            if uri_scheme(uri) == "s3"
            else read_local_file(local_path(uri), max_bytes)
        )
    except InputFileError as error:
        return UNREADABLE_FILE, str(error)
    except FileNotFoundError:
        return MISSING_FILE, "file not found"
    except IsADirectoryError:
        return UNREADABLE_FILE, "is a directory, not an image file"
    except PermissionError:
        return UNREADABLE_FILE, "permission denied"
    except Exception as error:  # botocore errors carry the S3 code: NoSuchKey, NoSuchBucket, AccessDenied
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            return MISSING_FILE, f"not found ({code})"
        return UNREADABLE_FILE, f"cannot read: {type(error).__name__}: {error}"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: verify() alone misses truncated pixel data
    except UnidentifiedImageError:
        return UNREADABLE_FILE, "not an image (unknown format)"
    except Exception as error:
        return UNREADABLE_FILE, f"does not decode as an image: {error}"
    return None
