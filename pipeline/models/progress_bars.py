"""Silence transformers' progress bars while a model is built or loaded (the tiny preset is built and
loaded in every test and actor, where the bars are noise)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_progress_bars(quiet: bool = True):
    """Silence transformers' "Loading weights"/"Writing model shards" bars, then restore the setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()
