"""The JSON stylegen writes: canonical (hashed, compared) and pretty (records people read), and the
flat dotted-key view that names what differs between two records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def canonical_json(value: Any, *, allow_nan: bool = True, default: Callable | None = None) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the same value always gives the same text (fingerprints,
    sample metadata). `allow_nan=False` refuses NaN/inf (not valid JSON); `default` converts what JSON
    lacks (json.dumps' hook)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan, default=default
    )


def pretty_json(value: Any) -> bytes:
    """run.json, summary.json: sorted keys, indented, one trailing newline."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A record's nested dicts as dotted keys ({"a": {"b": 1}} -> {"a.b": 1}), to name what differs
    between two records. An empty dict stays a value of its own, so `{}` and a missing key differ."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat
