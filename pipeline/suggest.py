"""A "did you mean ...?" hint for a mistyped name (a config key, a score), from the names that exist."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'clip_t'?)' when a choice is close to `name`, else ''."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
