"""A small CLIP BPE tokenizer written from scratch, for the `tiny` presets (no model hub here).

The tokenizer is real (byte-level BPE, `CLIPTokenizer`), only its vocabulary is small: every byte,
plus whole-word merges for a fixed word list. It is written once into a folder with
`save_pretrained` and loaded back with `from_pretrained`, the same call the real presets make.
"""

from __future__ import annotations

import hashlib
import json
from itertools import pairwise
from pathlib import Path

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "with",
    "and",
    "at",
    "by",
    "to",
    "from",
    "style",
    "painting",
    "photo",
    "drawing",
    "sketch",
    "watercolor",
    "oil",
    "portrait",
    "landscape",
    "city",
    "street",
    "house",
    "horse",
    "dog",
    "cat",
    "bird",
    "tree",
    "flower",
    "mountain",
    "river",
    "sea",
    "sky",
    "sun",
    "moon",
    "night",
    "day",
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "small",
    "big",
    "old",
    "new",
    "bright",
    "dark",
    "cubist",
    "abstract",
    "minimalist",
    "vintage",
    "neon",
    "pastel",
    "pixel",
    "art",
    "digital",
    "anime",
    "comic",
    "ink",
]


def vocabulary_key() -> str:
    """Changes whenever the words or the training recipe change, so cached tiny models are rebuilt."""
    return hashlib.sha256(json.dumps(["bpe-trained-v2", WORDS]).encode()).hexdigest()[:8]


def _bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's reversible byte -> printable character map (the GPT-2/CLIP convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _train_merges(words) -> list[tuple[str, str]]:
    """Byte-pair training on the word list until every word is one symbol. Applying the learned merges in
    rank order re-creates the training segmentation, so each listed word encodes to exactly one token."""
    corpus = [list(word[:-1]) + [word[-1] + "</w>"] for word in dict.fromkeys(words)]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in pairwise(symbols):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = max(counts, key=lambda pair: (counts[pair], pair))  # ties broken by the pair: deterministic
        merges.append(best)
        for i, symbols in enumerate(corpus):
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            corpus[i] = merged


def write_vocab_and_merges(directory: Path, words=WORDS) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    merges = _train_merges(words)
    vocab = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(dict.fromkeys(vocab))}))
    merges_path.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return vocab_path, merges_path


def save_tiny_clip_tokenizer(directory: Path, model_max_length: int = 77):
    """Build the tokenizer and `save_pretrained` it into `directory`; returns the tokenizer."""
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_vocab_and_merges(directory / "_bpe")
    tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
