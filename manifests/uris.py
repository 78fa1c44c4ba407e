"""Image and manifest URIs: a local path, file:// (percent-encoded, RFC 8089) or s3://bucket/key (raw key,
as the AWS CLI writes it). Relative local paths are relative to the working directory of the process."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

SUPPORTED_SCHEMES = ("", "file", "s3")  # "" is a plain local path
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def uri_scheme(uri: str) -> str:
    """'' for a plain path, else the lowercase scheme ('file', 's3', 'http', ...)."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else ""


def uri_problem(uri: str) -> str | None:
    """Why this URI cannot be read by the pipeline, or None when it can."""
    scheme = uri_scheme(uri)
    if scheme not in SUPPORTED_SCHEMES:
        return f"unsupported URI scheme {scheme + '://'!r} (use a local path, file:// or s3://)"
    if scheme == "s3":
        bucket, key = split_s3(uri)
        if not bucket or not key or key.endswith("/"):
            return "an s3:// URI needs a bucket and an object key (s3://bucket/key)"
    if scheme == "file" and not urlparse(uri).path:
        return "a file:// URI needs a path (file:///absolute/path)"
    return None


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def local_path(uri: str) -> Path:
    """The local file behind a plain path or file:// URI."""
    if uri_scheme(uri) == "file":
        return Path(unquote(urlparse(uri).path))
    return Path(uri)
