"""Sample keys and canonical JSON, the two things that make shard bytes reproducible."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from pipeline.json_format import canonical_json

# A uid is a hex digest: it is the WebDataset __key__ and the tar member stem, so it must be dot-free
# (readers split keys at the first dot) and must never contain a path separator.
_UID = re.compile(r"[0-9a-f]{8,128}")


def validate_uid(uid: object) -> str:
    """Return `uid` if it is 8-128 lowercase hex characters, else raise ValueError naming it."""
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        raise ValueError(
            f"invalid sample uid {uid!r}: a uid must be 8-128 lowercase hex characters "
            "(it is the tar member name; user ids and file names belong in the metadata)"
        )
    return uid


def _to_json_value(value: Any) -> Any:
    # numpy / torch scalars and arrays carry `tolist`; paths become strings.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sample_json(value: Any) -> bytes:
    """A sample's metadata as UTF-8 canonical JSON; NaN/inf are refused (not valid JSON), numpy/torch
    values and paths converted."""
    return canonical_json(value, allow_nan=False, default=_to_json_value).encode("utf-8")
