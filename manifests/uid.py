"""The row uid and the generation seed.

uid = first 32 hex digits (128 bits) of sha256 over this byte string:

    b"stylegen-uid-v1" + field(style) + field(content) + field(prompt) + field(seed)
    field(None) = b"N"
    field(text) = b"S" + <decimal length of the UTF-8 bytes> + b":" + <the UTF-8 bytes>
    (seed is written as its decimal text, e.g. "42" or "-7")

A row that sets per-row settings (manifests/row_settings.py: width, height, steps, guidance_scale,
lambda_style, lambda_content) appends, for each non-null one in that order, field(name) + field(value)
(integers as decimal text, floats as Python's repr). A row without them (no such column, or null cells)
has exactly the message above, so its uid is the one it always had.

Each field is tagged and length-prefixed, so no two different rows share a message: None differs from
"", and no separator inside a prompt can shift a field boundary. The strings are used exactly as read
(no path or whitespace normalization). The uid is lowercase hex, hence dot-free: it is the WebDataset
`__key__`, the dedup key and the seed source.

generation_seed: the manifest seed when set, else the first 16 hex digits of the uid with the top bit
cleared (0 <= seed < 2**63), so the same row gets the same seed on any shard, batch or machine.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.row_settings import ROW_SETTING_COLUMNS, present_columns, uid_text

UID_PREFIX = b"stylegen-uid-v1"
UID_HEX_CHARS = 32
SEED_MASK = 2**63 - 1
_UID = re.compile(r"^[0-9a-f]{32}$")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_BATCH_ROWS = 1 << 18  # bounds the temporary message buffers to a few tens of MB


def _field(value) -> bytes:
    if value is None:
        return b"N"
    data = str(value).encode("utf-8")
    return b"S" + str(len(data)).encode("ascii") + b":" + data


tagged_field = _field  # the same encoding for other messages (manifests/reseed.py)


def uid_message(
    style: str, content: str | None, prompt: str, seed: int | None, settings: Mapping[str, Any] | None = None
) -> bytes:
    """`settings`: the row's per-row settings by column name (absent or None: not part of the uid)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    unknown = sorted(set(settings or {}) - set(ROW_SETTING_COLUMNS))
    if unknown:
        raise TypeError(f"unknown per-row settings {unknown}; expected some of {ROW_SETTING_COLUMNS}")
    message = UID_PREFIX + _field(style) + _field(content) + _field(prompt) + _field(seed)
    for name in ROW_SETTING_COLUMNS:
        if (settings or {}).get(name) is not None:
            message += _field(name) + _field(uid_text(name, settings[name]))
    return message


def compute_uid(
    style: str, content: str | None, prompt: str, seed: int | None, settings: Mapping[str, Any] | None = None
) -> str:
    return hashlib.sha256(uid_message(style, content, prompt, seed, settings)).hexdigest()[:UID_HEX_CHARS]


def compute_uids(table: pa.Table) -> pa.Array:
    """The uid of every row of a normalized table (columns style, content, prompt, seed and any per-row
    settings); equals
    `compute_uid` row by row. Messages are built with Arrow kernels; only the sha256 call is per row.
    The hex text is written batch by batch into one preallocated buffer (32 bytes a row, no copies)."""
    chars = np.empty((table.num_rows, 32), dtype=np.uint8)
    for start, digests in _batch_digests(table):
        chars[start : start + len(digests), 0::2] = _HEX[digests >> 4]
        chars[start : start + len(digests), 1::2] = _HEX[digests & 15]
    offsets = np.arange(0, 32 * (table.num_rows + 1), 32, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(), table.num_rows, [None, pa.py_buffer(offsets), pa.py_buffer(chars)]
    )


def uid_digests(table: pa.Table) -> np.ndarray:
    """The 16 uid bytes of every row, shape (rows, 16)."""
    digests = [d for _, d in _batch_digests(table)]
    return np.concatenate(digests) if digests else np.zeros((0, 16), np.uint8)


def _batch_digests(table: pa.Table):
    start = 0
    columns = ["style", "content", "prompt", "seed", *present_columns(table.column_names)]
    for batch in table.select(columns).to_batches(_BATCH_ROWS):
        yield start, _digest_batch(batch)
        start += batch.num_rows


def _encoded_field(column: pa.Array, to_text=None) -> pa.Array:
    """field() for every row. Manifests repeat styles and prompts a lot, so each distinct value is
    encoded once and spread with `take` (about 10x faster than encoding every row). `to_text` turns
    the distinct values into their text in Python (floats: repr, which Arrow's cast does not match)."""
    distinct = pc.dictionary_encode(column)
    text = distinct.dictionary
    if to_text is not None:
        text = pa.array([to_text(value) for value in text.to_pylist()], pa.string())
    text = text if pa.types.is_string(text.type) else pc.cast(text, pa.string())
    length = pc.cast(pc.binary_length(text), pa.string())
    encoded = pc.binary_join_element_wise("S", length, ":", text, "")
    return pc.fill_null(encoded.take(distinct.indices), "N")


def _setting_field(column: pa.Array, name: str) -> pa.Array:
    """field(name) + field(value) where the value is set, "" where it is null (not in the message)."""
    value = _encoded_field(column, lambda v: uid_text(name, v))
    return pc.if_else(pc.is_valid(column), pc.binary_join_element_wise(_field(name).decode(), value, ""), "")


def _digest_batch(batch: pa.RecordBatch) -> np.ndarray:
    pieces = [_encoded_field(batch.column(name)) for name in ("style", "content", "prompt", "seed")]
    pieces += [_setting_field(batch.column(name), name) for name in present_columns(batch.schema.names)]
    messages = pc.binary_join_element_wise(UID_PREFIX.decode(), *pieces, "")
    start = messages.offset
    bounds = np.frombuffer(messages.buffers()[1], dtype=np.int32)[start : start + len(messages) + 1].tolist()
    data = memoryview(messages.buffers()[2])
    sha256 = hashlib.sha256
    joined = b"".join([sha256(data[a:b]).digest() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, 32)[:, :16]


def generation_seed(uid: str, seed: int | None) -> int:
    """The seed the generator uses for this row (see the module docstring)."""
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MASK:
            raise ValueError(f"uid {uid}: seed must be an integer in [0, 2**63), got {seed!r}")
        return seed
    if not isinstance(uid, str) or not _UID.match(uid):
        raise ValueError(f"not a stylegen uid (32 lowercase hex digits): {uid!r}")
    return int(uid[:16], 16) & SEED_MASK


def derived_seeds(table: pa.Table) -> np.ndarray:
    """`generation_seed(uid, None)` for every row of a normalized table, as int64 (no hex round trip:
    the first 16 hex digits of the uid are the first 8 digest bytes, big-endian)."""
    first_bytes = np.ascontiguousarray(uid_digests(table)[:, :8]).view(">u8").ravel()
    return (first_bytes & np.uint64(SEED_MASK)).astype(np.int64)
