from transformers import CLIPTokenizer

from manifests.tiny_tokenizer import WORDS, save_tiny_clip_tokenizer


def test_tiny_tokenizer_round_trips_through_from_pretrained(tmp_path):
    built = save_tiny_clip_tokenizer(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert len(loaded) == len(built) > 2 * 256  # every byte, with and without </w>, plus merges
    ids = loaded("a horse in watercolor style").input_ids
    tokens = loaded.convert_ids_to_tokens(ids)
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "horse</w>",
        "in</w>",
        "watercolor</w>",
        "style</w>",
        "<|endoftext|>",
    ]
    text = " ".join(WORDS)
    assert loaded.decode(loaded(text).input_ids, skip_special_tokens=True) == text
    for word in WORDS:  # every listed word is one whole-word token
        assert loaded.convert_ids_to_tokens(loaded(word).input_ids) == [
            "<|startoftext|>",
            word + "</w>",
            "<|endoftext|>",
        ]


def test_unknown_words_fall_back_to_bytes(tmp_path):
    tok = save_tiny_clip_tokenizer(tmp_path)
    ids = tok("zqxj").input_ids
    assert len(ids) > 3 and tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "zqxj"
