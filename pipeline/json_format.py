"""The two JSON forms stylegen writes: canonical (hashed, compared) and pretty (records people read)."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the same value always gives the same text (fingerprints)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pretty_json(value: Any) -> bytes:
    """run.json, summary.json: sorted keys, indented, one trailing newline."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
