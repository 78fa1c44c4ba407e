"""open_store: pick the store for an output URI."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.storage.local import LocalStore
from pipeline.storage.objects import OutputURIError
from pipeline.storage.s3 import S3Store
from pipeline.storage.s3_config import S3Config
from pipeline.storage.store import Store


def open_store(uri: str | Path, **options: Any) -> Store:
    """`s3://bucket/prefix` -> S3Store; a path or `file://` URI -> LocalStore.

    For S3, `options` are S3Config fields (endpoint_url, addressing_style, region, ...) on top of the
    STYLEGEN_S3_* environment; `s3_config=S3Config(...)` passes a whole config (e.g. from the run
    config). Local outputs take no options except an ignored `s3_config`."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        base = options.pop("s3_config", None)
        explicit = base.model_dump(exclude_unset=True) if isinstance(base, S3Config) else dict(base or {})
        config = S3Config.from_env(**{**explicit, **options})
        if not parsed.netloc:
            raise OutputURIError(f"output URI {text!r} names no bucket (expected s3://bucket/prefix)")
        return S3Store(parsed.netloc, parsed.path.lstrip("/"), config)
    options.pop("s3_config", None)
    if options:
        raise OutputURIError(f"options {sorted(options)} only apply to s3:// outputs, not {text!r}")
    if parsed.scheme == "file":
        return LocalStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, not a scheme
        raise OutputURIError(
            f"unsupported output URI scheme {parsed.scheme!r} in {text!r}; use a path or s3://"
        )
    return LocalStore(text)
