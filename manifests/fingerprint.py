"""A content fingerprint of a table: sha256 hex that changes when any cell, column name or type changes,
and does not depend on how the table is chunked, on column order, or on the machine.

Layout (version 1): sha256 over b"stylegen-table-v1", then for each column sorted by name:
    name, type (Arrow's text form; a dictionary column counts as its value type, so a compact table
    and its plain form agree), and three sub-digests fed row by row in order:
      validity   one byte per row (1 valid, 0 null)
      lengths    int64 little-endian byte length per row (0 for null), for string/binary columns
      values     the value bytes: UTF-8 for text, little-endian fixed width for numbers/booleans/dates/times
                 (0 for null), canonical JSON per row for anything else (lists, structs, decimals, ...)
Each sub-digest is a running sha256, so feeding the rows chunk by chunk gives the same result as one chunk.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FINGERPRINT_VERSION = b"stylegen-table-v1"
_SLICE_ROWS = 1 << 20


def table_fingerprint(table: pa.Table) -> str:
    return TableHasher().update(table).hexdigest()


class TableHasher:
    """The fingerprint of a table fed in row batches (the same as of their concatenation): every batch
    must have the columns and types of the first."""

    def __init__(self):
        self.types: dict[str, pa.DataType] | None = None
        self.digests: dict[str, tuple] = {}

    def update(self, table: pa.Table) -> TableHasher:
        types = {name: _value_type(table.column(name).type) for name in table.column_names}
        if self.types is None:
            self.types = types
            self.digests = {name: (hashlib.sha256(), hashlib.sha256(), hashlib.sha256()) for name in types}
        elif types != self.types:
            raise ValueError(f"a batch has other columns or types than the first: {types} != {self.types}")
        for name, digests in self.digests.items():
            _feed_column(table.column(name), *digests)
        return self

    def hexdigest(self) -> str:
        outer = hashlib.sha256(FINGERPRINT_VERSION)
        for name in sorted(self.types or {}):
            outer.update(_frame(name.encode()) + _frame(str(self.types[name]).encode()))
            outer.update(b"".join(digest.digest() for digest in self.digests[name]))
        return outer.hexdigest()


def _value_type(dtype: pa.DataType) -> pa.DataType:
    return dtype.value_type if pa.types.is_dictionary(dtype) else dtype


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def _feed_column(column: pa.ChunkedArray, validity, lengths, values) -> None:
    for chunk in column.chunks:
        for start in range(0, len(chunk), _SLICE_ROWS):  # slices bound the temporary buffers
            piece = chunk.slice(start, _SLICE_ROWS)
            validity.update(pc.is_valid(piece).to_numpy(zero_copy_only=False).astype(np.uint8).tobytes())
            _feed_values(piece, lengths, values)


def _feed_values(chunk: pa.Array, lengths, values) -> None:
    dtype = chunk.type
    if pa.types.is_dictionary(dtype):
        chunk, dtype = chunk.dictionary_decode(), dtype.value_type
    if pa.types.is_string(dtype) or pa.types.is_binary(dtype) or pa.types.is_large_string(dtype):
        empty = "" if not pa.types.is_binary(dtype) else b""
        filled = pc.fill_null(chunk, empty)  # no nulls left, so the data buffer is exactly the values
        lengths.update(pc.binary_length(filled).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        offset_type = np.int64 if pa.types.is_large_string(dtype) else np.int32
        offsets = np.frombuffer(filled.buffers()[1], dtype=offset_type)
        start, end = offsets[filled.offset], offsets[filled.offset + len(filled)]
        if end > start:
            values.update(memoryview(filled.buffers()[2])[start:end])
    elif pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype):
        zero = False if pa.types.is_boolean(dtype) else 0
        array = pc.fill_null(chunk, zero).to_numpy(zero_copy_only=False)
        values.update(array.astype(array.dtype.newbyteorder("<")).tobytes())
    elif pa.types.is_temporal(dtype) and dtype.bit_width in (32, 64):
        raw = chunk.view(pa.int32() if dtype.bit_width == 32 else pa.int64())
        values.update(pc.fill_null(raw, 0).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
    else:
        for value in chunk.to_pylist():
            values.update(json.dumps(value, sort_keys=True, default=str).encode() + b"\n")
