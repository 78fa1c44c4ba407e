"""A small CLIP BPE tokenizer written from scratch, for the `tiny` presets (no model hub here).

The tokenizer is real (byte-level BPE, `CLIPTokenizer`), only its vocabulary is small: every byte,
plus whole-word merges for a fixed word list. It is written once into a folder with
`save_pretrained` and loaded back with `from_pretrained`, the same call the real presets make.
"""

from __future__ import annotations

import json
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


def write_vocab_and_merges(directory: Path, words=WORDS) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = f"{symbols[0]} {symbols[1]}"
            merged = symbols[0] + symbols[1]
            if pair not in merges:
                merges.append(pair)
                vocab.append(merged)
            symbols = [merged] + symbols[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(dict.fromkeys(vocab))}))
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def save_tiny_clip_tokenizer(directory: Path, model_max_length: int = 77):
    """Build the tokenizer and `save_pretrained` it into `directory`; returns the tokenizer."""
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_vocab_and_merges(directory / "_bpe")
    tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
