import hashlib

import pyarrow as pa
import pytest

from manifests.uid import SEED_MASK, compute_uid, compute_uids, derived_seeds, generation_seed

ROWS = [
    ("/data/a.png", None, "a cat", None),
    ("/data/a.png", "", "a cat", None),  # "" content differs from None
    ("/data/a.png", None, "a cat", 0),
    ("ab", None, "c", None),
    ("a", None, "bc", None),  # same concatenation as the row above, different fields
    ("s3://bucket/dir with space/ü.png", "file:///x%20y.png", 'comma, "quote"\nnewline', -7),
    ("", None, "", SEED_MASK),
    ("N", "N", "S1:x", 42),  # field text that looks like the encoding itself
]


def expected_uid(style, content, prompt, seed) -> str:
    """The documented encoding, written out independently of manifests.uid."""

    def field(value):
        if value is None:
            return b"N"
        data = str(value).encode()
        return b"S%d:%s" % (len(data), data)

    message = b"stylegen-uid-v1" + field(style) + field(content) + field(prompt) + field(seed)
    return hashlib.sha256(message).hexdigest()[:32]


def rows_table(rows) -> pa.Table:
    style, content, prompt, seed = zip(*rows, strict=True)
    return pa.table(
        {
            "style": pa.array(style, pa.string()),
            "content": pa.array(content, pa.string()),
            "prompt": pa.array(prompt, pa.string()),
            "seed": pa.array(seed, pa.int64()),
        }
    )


def test_compute_uid_matches_the_documented_encoding():
    for row in ROWS:
        assert compute_uid(*row) == expected_uid(*row)
    uids = [compute_uid(*row) for row in ROWS]
    assert len(set(uids)) == len(ROWS)  # None vs "", shifted field boundaries, lookalike text all differ
    assert all(len(u) == 32 and set(u) <= set("0123456789abcdef") for u in uids)  # lowercase hex, no dot


def test_compute_uids_equals_the_scalar_function_row_by_row():
    table = rows_table(ROWS)
    assert compute_uids(table).to_pylist() == [compute_uid(*row) for row in ROWS]


def test_compute_uids_ignores_chunking_slicing_and_dictionary_encoding():
    table = rows_table(ROWS * 3)
    expected = compute_uids(table).to_pylist()
    chunked = pa.concat_tables([table.slice(0, 5), table.slice(5, 11), table.slice(16)])
    assert compute_uids(chunked).to_pylist() == expected
    assert compute_uids(table.slice(3, 9)).to_pylist() == expected[3:12]
    compact = table.set_column(2, "prompt", table.column("prompt").dictionary_encode())
    compact = compact.set_column(0, "style", compact.column("style").dictionary_encode())
    assert compute_uids(compact).to_pylist() == expected


def test_compute_uid_rejects_non_integer_seeds():
    with pytest.raises(TypeError, match="seed"):
        compute_uid("a.png", None, "p", True)
    with pytest.raises(TypeError, match="seed"):
        compute_uid("a.png", None, "p", 1.0)


def test_generation_seed_prefers_the_manifest_seed_and_else_derives_from_the_uid():
    uid = compute_uid("a.png", None, "a cat", None)
    assert generation_seed(uid, 1234) == 1234
    assert generation_seed(uid, None) == int(uid[:16], 16) % 2**63
    assert 0 <= generation_seed(uid, None) < 2**63
    with pytest.raises(ValueError, match="seed"):
        generation_seed(uid, -1)
    with pytest.raises(ValueError, match="uid"):
        generation_seed("not-a.uid", None)


def test_derived_seeds_equal_generation_seed_for_every_row():
    table = rows_table(ROWS)
    uids = compute_uids(table).to_pylist()
    assert derived_seeds(table).tolist() == [generation_seed(u, None) for u in uids]
