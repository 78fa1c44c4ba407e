"""Prompt length in CLIP tokens, the limit of Stable Cascade's text encoder (77 with start/end tokens).

Without `--tokenizer DIR` the count uses the tiny tokenizer (manifests/tiny_tokenizer.py),
built once into a cache folder. It is a real CLIP byte-level BPE tokenizer, the scheme CLIP-bigG uses, but its
vocabulary is small, so words outside its list split into more tokens than the real one would: treat
its counts as an upper bound and pass the real tokenizer folder for exact counts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

CLIP_MAX_TOKENS = 77
TINY_TOKENIZER_NOTE = (
    "token counts use the tiny CLIP tokenizer: same byte-level BPE scheme as CLIP-bigG, much smaller "
    "vocabulary, so counts are upper bounds; pass --tokenizer DIR (a CLIP tokenizer folder) for exact counts"
)


def default_tokenizer_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "stylegen" / "tiny-clip-tokenizer"


def load_clip_tokenizer(directory: Path | None = None):
    """A CLIPTokenizer from `directory`, or the cached tiny one (built on first use)."""
    from transformers import CLIPTokenizer

    if directory is None:
        directory = default_tokenizer_dir()
        if not (directory / "tokenizer_config.json").exists():
            _build_tiny_tokenizer(directory)
    tokenizer = CLIPTokenizer.from_pretrained(str(directory))
    if len(tokenizer) <= 2:  # an empty folder or hub id loads as a 2-token tokenizer without raising
        raise ValueError(
            f"{directory}: not a CLIP tokenizer folder (vocab.json/merges.txt or tokenizer.json)"
        )
    return tokenizer


def _build_tiny_tokenizer(directory: Path) -> None:
    """Build in a private folder, then rename: concurrent first uses must not read half-written files."""
    from manifests.tiny_tokenizer import save_tiny_clip_tokenizer

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=directory.parent))
    save_tiny_clip_tokenizer(staging)
    try:
        staging.rename(directory)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)


def token_limit(tokenizer) -> int:
    limit = getattr(tokenizer, "model_max_length", CLIP_MAX_TOKENS)
    return limit if 0 < limit < 100_000 else CLIP_MAX_TOKENS


def token_counts(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens per prompt including the start and end tokens, without truncation."""
    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=True, truncation=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]
