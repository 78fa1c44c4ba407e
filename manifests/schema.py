"""The canonical manifest schema, and `normalize_table`, which brings any producer's table to it.

A normalized manifest has these columns, in this order, then the user's extra columns untouched:

    uid      string  (added by read_manifest: see manifests/uid.py)
    row      int64   original row number, counted from 0 in file order (header excluded), across all files
    prompt   string  required
    style    string  URI: local path, file:// or s3://; required
    content  string  URI, or null (composition mode when set); an empty string means null (CSV has no null)
    id       string  the user's own id, any scalar kept as text; null when absent
    seed     int64   null when absent (the generator then derives one from the uid)

then, only when the manifest has them, the per-row settings of manifests/row_settings.py (width, height,
steps as int64; guidance_scale, lambda_style, lambda_content as float64; null: the run's setting). A
manifest without them gets no such columns, so its normalized table is what it always was.

Type and schema problems raise `ManifestError` naming the file, column and rows. Problems with values
(an empty prompt, a bad URI, a duplicate uid) are left to manifests/validate.py, so one bad row can
fail that row instead of the whole run.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.row_settings import HEIGHT, INTEGER_COLUMNS, WIDTH, present_columns
from pipeline.errors import UserError

UID, ROW, PROMPT, STYLE, CONTENT, ID, SEED = "uid", "row", "prompt", "style", "content", "id", "seed"
SHARD_ID = "shard_id"  # added by the plan (manifests/plan.py)
# Added to the plan rows a quota reseeds (manifests/reseed.py): the planned row's uid, and the round.
ORIGIN_UID, QUOTA_ROUND = "origin_uid", "quota_round"
QUOTA_COLUMNS = (ORIGIN_UID, QUOTA_ROUND)
REQUIRED_COLUMNS = (PROMPT, STYLE)
USER_COLUMNS = (PROMPT, STYLE, CONTENT, ID, SEED)
CANONICAL_COLUMNS = (UID, ROW, *USER_COLUMNS)
RESERVED_COLUMNS = (UID, ROW, SHARD_ID, *QUOTA_COLUMNS)  # stylegen adds them: a manifest may not
TEXT_COLUMNS = (PROMPT, STYLE, CONTENT, ID)
COMPACT_TEXT = pa.dictionary(pa.int32(), pa.string())
CANONICAL_TYPES = {
    UID: pa.string(),
    ROW: pa.int64(),
    PROMPT: pa.string(),
    STYLE: pa.string(),
    CONTENT: pa.string(),
    ID: pa.string(),
    SEED: pa.int64(),
}
_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")
_INT64_MAX = 2**63 - 1


class ManifestError(UserError, ValueError):
    """A manifest problem; the message names the file, the column and the row(s) where known."""

    def __init__(self, message: str, *, column: str | None = None, rows: list[int] | None = None):
        super().__init__(message)
        self.column = column
        self.rows = list(rows or [])


def format_rows(rows, limit: int = 10, total: int | None = None) -> str:
    """'row 3' / 'rows 3, 7, 9' / 'rows 3, 7, ... (+12 more)'; `total` counts rows beyond those passed."""
    shown = [int(r) for r in rows[:limit]]
    total = len(rows) if total is None else total
    if total == 1:
        return f"row {shown[0]}"
    more = f", ... (+{total - len(shown)} more)" if total > len(shown) else ""
    return f"rows {', '.join(map(str, shown))}{more}"


def normalize_table(table: pa.Table, source: str, first_row: int = 0, compact: bool = False) -> pa.Table:
    """Canonical columns (less `uid`) first, extras after; `first_row` numbers rows across files.
    compact=True keeps prompt/style/content/id as dictionary<int32, string> (see read_manifest)."""
    table = _drop_pandas_index_columns(table)
    names = table.column_names
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ManifestError(f"{source}: duplicate column name(s) {duplicated}", column=duplicated[0])
    for name in RESERVED_COLUMNS:
        if name in names:
            raise ManifestError(f"{source}: column {name!r} is reserved by stylegen; rename it", column=name)
    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise ManifestError(
                f"{source}: missing required column {name!r} (found columns: {names})", column=name
            )

    rows = pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))
    columns = {ROW: rows}
    for name in USER_COLUMNS:
        if name not in names:
            columns[name] = pa.chunked_array([pa.nulls(table.num_rows, CANONICAL_TYPES[name])])
            continue
        column = table.column(name)
        if name == SEED:
            columns[name] = _to_integer(column, rows, source, SEED)
        else:
            columns[name] = _to_text(column, name, source, any_scalar=name == ID)
    columns[CONTENT] = _blank_to_null(columns[CONTENT])
    columns[ID] = _blank_to_null(columns[ID])
    for name in TEXT_COLUMNS:
        columns[name] = _compact(columns[name]) if compact else columns[name].cast(pa.string())
    settings = present_columns(names)
    if (WIDTH in settings) != (HEIGHT in settings):
        missing = HEIGHT if WIDTH in settings else WIDTH
        raise ManifestError(f"{source}: a size needs both columns: {missing!r} is missing", column=missing)
    for name in settings:
        convert = _to_integer if name in INTEGER_COLUMNS else _to_float
        columns[name] = convert(table.column(name), rows, source, name)
    for name in names:
        if name not in USER_COLUMNS and name not in settings:
            columns[name] = table.column(name)
    return pa.table(columns)


def _drop_pandas_index_columns(table: pa.Table) -> pa.Table:
    """pandas writes a non-range index as `__index_level_N__`; a *named* index is real data and stays."""
    return table.drop_columns([c for c in table.column_names if _PANDAS_INDEX.match(c)])


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        return _is_text(dtype.value_type)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def _to_text(column: pa.ChunkedArray, name: str, source: str, any_scalar: bool) -> pa.ChunkedArray:
    """Text as string, or still as dictionary<int32, string> when it was one (normalize_table casts it
    to plain string unless compact, so a dictionary read from Parquet is not expanded for nothing)."""
    dtype = column.type
    if pa.types.is_dictionary(dtype) and _is_text(dtype):
        return column.cast(COMPACT_TEXT)
    if _is_text(dtype) or pa.types.is_null(dtype):
        return column.cast(pa.string())
    if not any_scalar:
        raise ManifestError(f"{source}: column {name!r} must hold text, found type {dtype}", column=name)
    if pa.types.is_floating(dtype) and _all_integral(column):
        column = column.cast(pa.int64())  # pandas turns int ids with gaps into floats: 7.0 -> "7"
    if pa.types.is_nested(dtype) or pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        raise ManifestError(f"{source}: column {name!r} must hold scalars, found type {dtype}", column=name)
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ManifestError(f"{source}: column {name!r} ({dtype}) cannot be read as text: {error}") from None


def _compact(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column if pa.types.is_dictionary(column.type) else column.dictionary_encode().cast(COMPACT_TEXT)


def _blank_to_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """'' or whitespace -> null (CSV has no null); chunks without blanks are kept as they are."""
    return pa.chunked_array([_blank_chunk_to_null(chunk) for chunk in column.chunks], column.type)


def _blank_chunk_to_null(chunk: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(chunk.type):  # test the distinct values, then null their indices
        blank_values = pc.equal(pc.utf8_trim_whitespace(chunk.dictionary), "")
        if not pc.any(blank_values).as_py():
            return chunk
        blank = pc.fill_null(blank_values.take(chunk.indices), False)
        indices = pc.if_else(blank, pa.scalar(None, chunk.indices.type), chunk.indices)
        return pa.DictionaryArray.from_arrays(indices, chunk.dictionary)
    blank = pc.equal(pc.utf8_trim_whitespace(chunk), "")
    if not pc.any(blank).as_py():
        return chunk
    return pc.if_else(blank, pa.scalar(None, pa.string()), chunk)


def _all_integral(column: pa.ChunkedArray) -> bool:
    finite = pc.drop_null(column)
    return bool(pc.all(pc.equal(pc.floor(finite), finite)).as_py() is not False)


def _to_integer(column: pa.ChunkedArray, rows: pa.Array, source: str, name: str) -> pa.ChunkedArray:
    """int64 from integers, whole floats (pandas writes int columns with gaps as floats) or text."""
    dtype = column.type
    if pa.types.is_null(dtype):
        return column.cast(pa.int64())
    if pa.types.is_integer(dtype):
        if pa.types.is_uint64(dtype):
            too_big = pc.greater(column, pa.scalar(_INT64_MAX, pa.uint64()))
            _raise_bad_values(source, rows, too_big, column, name, "is larger than int64")
        return column.cast(pa.int64())
    if pa.types.is_floating(dtype):
        bad = pc.or_(pc.not_equal(pc.floor(column), column), pc.greater(pc.abs(column), float(_INT64_MAX)))
        _raise_bad_values(source, rows, pc.or_(bad, pc.is_nan(column)), column, name, "is not an integer")
        return column.cast(pa.int64())
    if _is_text(dtype):
        return _parse_text(column.cast(pa.string()), rows, source, name, _whole_number)
    raise ManifestError(f"{source}: column {name!r} must hold integers, found type {dtype}", column=name)


def _to_float(column: pa.ChunkedArray, rows: pa.Array, source: str, name: str) -> pa.ChunkedArray:
    """float64 from any number or from text; range checks are validation's (manifests/validate.py)."""
    dtype = column.type
    if pa.types.is_null(dtype) or pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return column.cast(pa.float64())
    if _is_text(dtype):
        return _parse_text(column.cast(pa.string()), rows, source, name, _decimal_number)
    raise ManifestError(f"{source}: column {name!r} must hold numbers, found type {dtype}", column=name)


def _whole_number(text: str) -> int | None:
    """'3' or '3.0' (pandas writes int columns with gaps as floats) within int64, else None."""
    if re.fullmatch(r"[+-]?\d+(\.0*)?", text) and -(2**63) <= int(text.split(".")[0]) <= _INT64_MAX:
        return int(text.split(".")[0])
    return None


def _decimal_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_text(column: pa.ChunkedArray, rows: pa.Array, source: str, name: str, parse) -> pa.ChunkedArray:
    """CSV/JSONL numbers arrive as text: '' is null, anything else must parse (each distinct value once)."""
    stripped = pc.utf8_trim_whitespace(column)
    parsed = {}
    for text in pc.unique(stripped).to_pylist():
        if text is None or text == "":
            parsed[text] = None
        elif (value := parse(text)) is not None:
            parsed[text] = value
    bad = pc.invert(pc.is_in(stripped, pa.array(list(parsed), pa.string())))
    kind = "a whole number in int64" if parse is _whole_number else "a number"
    _raise_bad_values(source, rows, pc.fill_null(bad, False), column, name, f"is not {kind}")
    lookup = pc.index_in(stripped, pa.array(list(parsed), pa.string()))
    target = pa.int64() if parse is _whole_number else pa.float64()
    return pa.array(list(parsed.values()), target).take(lookup)


def _raise_bad_values(source, rows, bad_mask, column, name, why) -> None:
    bad_mask = pc.fill_null(bad_mask, False)
    if not pc.any(bad_mask).as_py():
        return
    bad_rows = pc.filter(rows, bad_mask).to_pylist()
    examples = ", ".join(repr(v) for v in pc.filter(column, bad_mask).to_pylist()[:3])
    raise ManifestError(
        f"{source}: column {name!r}, {format_rows(bad_rows)}: value {why} (e.g. {examples})",
        column=name,
        rows=bad_rows,
    )
