"""What a run's models were, recorded once in run.json (`models`), and the short fingerprint each
sample carries instead of a copy of it.

The loaders describe their components with where they came from (hub id and revision, resolved commit,
checkpoint size). A local source is a path of the machine that ran it: only its last folder or file
name is kept, so neither run.json nor any sample leaks the machine's layout (cache folders, home).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from pipeline.json_format import canonical_json

FINGERPRINT_CHARS = 16
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


def is_local_path(text: str) -> bool:
    """An absolute or home-relative path of this machine (not a hub id like 'org/name', not s3://)."""
    return text.startswith(("/", "~", "file://")) or bool(_WINDOWS_PATH.match(text))


def public_model_info(info: Any) -> Any:
    """`info` with every local path reduced to its last name ('local:<name>')."""
    if isinstance(info, dict):
        return {key: public_model_info(value) for key, value in info.items()}
    if isinstance(info, list | tuple):
        return [public_model_info(value) for value in info]
    if isinstance(info, str) and is_local_path(info):
        name = os.path.basename(info.removeprefix("file://").rstrip("/\\").replace("\\", "/"))
        return f"local:{name}"
    return info


def model_fingerprint(public_info: dict[str, Any]) -> str | None:
    """A short sha256 of the public model description (None when there is none: a failed-shard record)."""
    if not public_info:
        return None
    text = canonical_json(public_info)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_CHARS]
