"""Validate a manifest and return a structured report that other stages can reuse.

Each `Problem` names its kind, severity, column, affected rows and reason. Problems are grouped by the
offending value: a missing style file used by 3,400 rows is one problem with 3,400 rows; a duplicate
uid is one problem listing all its rows. Kinds:

    schema            error    the file cannot be read as a manifest (missing column, wrong type, ...)
    missing-value     error    prompt or style is null
    empty-value       error    prompt or style is empty or whitespace
    unsupported-uri   error    style/content is not a local path, file:// or s3://bucket/key
    bad-seed          error    seed is negative
    duplicate-uid     error    rows with the same style, content, prompt, seed and per-row settings
    bad-size          error    width/height that cannot be generated exactly (manifests/row_settings.py)
    bad-setting       error    a per-row RB-Modulation setting out of its range (steps, guidance_scale, ...)
    prompt-too-long   warning  more CLIP tokens than the text encoder takes (it will be truncated)
    missing-file      error    (--check-files) the style/content file does not exist
    unreadable-file   error    (--check-files) it exists but does not decode as an image
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from manifests.file_check import check_image_uris
from manifests.read import read_manifest
from manifests.row_settings import HEIGHT, SETTING_COLUMNS, WIDTH, setting_problem, size_problem
from manifests.schema import CONTENT, PROMPT, ROW, SEED, STYLE, UID, ManifestError, format_rows
from manifests.uris import uri_problem

ERROR, WARNING = "error", "warning"
SCHEMA, MISSING_VALUE, EMPTY_VALUE = "schema", "missing-value", "empty-value"
UNSUPPORTED_URI, BAD_SEED, DUPLICATE_UID = "unsupported-uri", "bad-seed", "duplicate-uid"
PROMPT_TOO_LONG = "prompt-too-long"
BAD_SIZE, BAD_SETTING = "bad-size", "bad-setting"
MAX_ROWS_PER_PROBLEM = 1000  # rows kept per problem; row_count has the total


@dataclass(frozen=True)
class Problem:
    severity: str
    kind: str
    column: str | None
    rows: tuple[int, ...]  # the first MAX_ROWS_PER_PROBLEM affected rows, ascending
    row_count: int
    reason: str

    def message(self) -> str:
        where = [f"column {self.column!r}"] if self.column else []
        if self.rows:
            where.append(format_rows(self.rows, total=self.row_count))
        return ", ".join(where) + (": " if where else "") + self.reason


@dataclass
class ValidationReport:
    source: str
    num_rows: int
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def by_kind(self) -> dict[str, list[Problem]]:
        grouped: dict[str, list[Problem]] = {}
        for problem in self.problems:
            grouped.setdefault(problem.kind, []).append(problem)
        return grouped

    def raise_for_errors(self) -> None:
        if self.errors:
            lines = [f"{self.source}: {len(self.errors)} error(s) in the manifest"]
            lines += [f"  [{p.kind}] {p.message()}" for p in self.errors[:20]]
            raise ManifestError("\n".join(lines))


def validate_manifest(uri: str, **options) -> ValidationReport:
    """Read and validate; a manifest that cannot be read at all is one `schema` problem."""
    try:
        table = read_manifest(uri)
    except ManifestError as error:
        rows = tuple(error.rows[:MAX_ROWS_PER_PROBLEM])
        problem = Problem(ERROR, SCHEMA, error.column, rows, len(error.rows), str(error))
        return ValidationReport(uri, 0, [problem])
    return validate_table(table, source=uri, **options)


def validate_table(
    table: pa.Table,
    source: str = "manifest",
    *,
    check_files: bool = False,
    check_prompt_length: bool = True,
    tokenizer_dir: Path | None = None,
    workers: int = 16,
) -> ValidationReport:
    """Every check on a normalized manifest (the output of read_manifest)."""
    report = ValidationReport(source, table.num_rows)
    rows = table.column(ROW).to_numpy()
    add = report.problems.extend
    add(_text_problems(table, PROMPT, rows))
    add(_text_problems(table, STYLE, rows, also=uri_problem))
    add(_value_problems(table.column(CONTENT), CONTENT, rows, _bad_uri_reasons(table.column(CONTENT))))
    add(_seed_problems(table, rows))
    add(row_setting_problems(table))
    add(_duplicate_problems(table))
    if check_prompt_length:
        add(_prompt_length_problems(table, rows, tokenizer_dir, report.notes))
    if check_files:
        add(_file_problems(table, rows, workers))
    return report


def _problem(severity, kind, column, rows: np.ndarray, reason) -> Problem:
    rows = np.sort(rows)
    return Problem(severity, kind, column, tuple(rows[:MAX_ROWS_PER_PROBLEM].tolist()), len(rows), reason)


def _rows_per_value(column: pa.ChunkedArray, rows: np.ndarray, values: list) -> list[np.ndarray]:
    """For each value, the row numbers where the column holds it (None matches nulls)."""
    if not values:
        return []
    value_set = pa.array(values, column.type)
    positions = np.flatnonzero(pc.is_in(column, value_set=value_set).to_numpy(zero_copy_only=False))
    codes = pc.index_in(column.take(positions), value_set=value_set).to_numpy(zero_copy_only=False)
    by_code = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_code], np.arange(len(values) + 1))
    return [rows[positions[by_code[a:b]]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _value_problems(column, name, rows, reasons: dict) -> list[Problem]:
    """reasons: {value: (severity, kind, reason)} for the distinct values that are a problem."""
    grouped = _rows_per_value(column, rows, list(reasons))
    found = [
        _problem(*reason[:2], name, value_rows, reason[2])
        for reason, value_rows in zip(reasons.values(), grouped, strict=True)
    ]
    return [p for p in found if p.row_count]


def _text_problems(table, name, rows, also: Callable[[str], str | None] | None = None) -> list[Problem]:
    column = table.column(name)
    reasons = {}
    for value in pc.unique(column).to_pylist():
        if value is None:
            reasons[value] = (ERROR, MISSING_VALUE, f"{name} is missing (null)")
        elif not value.strip():
            reasons[value] = (ERROR, EMPTY_VALUE, f"{name} is empty ({value!r})")
        elif also and (why := also(value)):
            reasons[value] = (ERROR, UNSUPPORTED_URI, f"{value!r}: {why}")
    return _value_problems(column, name, rows, reasons)


def _bad_uri_reasons(column) -> dict:
    reasons = {}
    for value in pc.unique(column).to_pylist():
        if value is not None and (why := uri_problem(value)):
            reasons[value] = (ERROR, UNSUPPORTED_URI, f"{value!r}: {why}")
    return reasons


def _seed_problems(table, rows) -> list[Problem]:
    negative = pc.fill_null(pc.less(table.column(SEED), 0), False).to_numpy(zero_copy_only=False)
    if not negative.any():
        return []
    return [_problem(ERROR, BAD_SEED, SEED, rows[negative], "seed must be >= 0 (it seeds the generator)")]


def row_setting_problems(table: pa.Table) -> list[Problem]:
    """Sizes and per-row settings that cannot be generated as asked (none without those columns); each
    distinct bad value (or width x height) is one problem with its rows. make_plan refuses them too."""
    rows = table.column(ROW).to_numpy()
    problems = []
    if WIDTH in table.column_names:
        sizes = pa.table({WIDTH: table.column(WIDTH), HEIGHT: table.column(HEIGHT), ROW: table.column(ROW)})
        grouped = sizes.group_by([WIDTH, HEIGHT], use_threads=False).aggregate([(ROW, "list")])
        for width, height, size_rows in zip(*(grouped.column(i).to_pylist() for i in range(3)), strict=True):
            if why := size_problem(width, height):
                shown = f"{width} x {height}: " if width is not None or height is not None else ""
                problems.append(_problem(ERROR, BAD_SIZE, WIDTH, np.asarray(size_rows), shown + why))
    for name in SETTING_COLUMNS:
        if name in table.column_names:
            column = table.column(name)
            reasons = {
                value: (ERROR, BAD_SETTING, why)
                for value in pc.unique(column).to_pylist()
                if value is not None and (why := setting_problem(name, value))
            }
            problems += _value_problems(column, name, rows, reasons)
    return problems


def duplicate_uid_groups(table: pa.Table, order: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """[(uid, row numbers)] for every uid held by more than one row. `order` may be any sort of the
    table in which equal uids are adjacent (make_plan passes its own to avoid sorting twice)."""
    if order is None:
        order = pc.sort_indices(table, sort_keys=[(UID, "ascending"), (ROW, "ascending")])
    order = np.asarray(order, dtype=np.int64)
    uids = table.column(UID)
    uids = uids.chunk(0) if uids.num_chunks == 1 else uids.combine_chunks()
    same = np.zeros(max(len(order) - 1, 0), dtype=bool)  # same[i]: sorted rows i and i+1 share a uid
    step = 1 << 20  # compared a slice at a time, so the sorted uids never exist in full
    for start in range(0, len(same), step):
        window = uids.take(order[start : start + step + 1])
        equal = pc.equal(window.slice(1), window.slice(0, len(window) - 1))
        same[start : start + len(window) - 1] = equal.to_numpy(zero_copy_only=False)
    if not same.any():
        return []
    starts = np.flatnonzero(np.concatenate([[True], ~same]))  # where each run of equal uids begins
    sizes = np.diff(np.append(starts, len(order)))
    rows = table.column(ROW).to_numpy()
    groups = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
        positions = order[start : start + size]
        groups.append((uids[int(positions[0])].as_py(), rows[positions]))
    return groups


def _duplicate_problems(table) -> list[Problem]:
    reason = "uid {} is shared by these rows (same style, content, prompt and seed)"
    return [
        _problem(ERROR, DUPLICATE_UID, UID, rows, reason.format(uid))
        for uid, rows in duplicate_uid_groups(table)
    ]


def _prompt_length_problems(table, rows, tokenizer_dir, notes: list[str]) -> list[Problem]:
    from manifests.tokens import TINY_TOKENIZER_NOTE, load_clip_tokenizer, token_counts, token_limit

    column = table.column(PROMPT)
    prompts = [p for p in pc.unique(column).to_pylist() if p is not None and p.strip()]
    tokenizer = load_clip_tokenizer(tokenizer_dir)
    limit = token_limit(tokenizer)
    reasons = {}
    for prompt, count in zip(prompts, token_counts(tokenizer, prompts), strict=True):
        if count > limit:
            why = f"{count} tokens, the text encoder takes {limit}: the prompt will be truncated"
            reasons[prompt] = (WARNING, PROMPT_TOO_LONG, why)
    if reasons:  # which tokenizer counted matters only for the prompts it flags
        notes.append(
            TINY_TOKENIZER_NOTE
            if tokenizer_dir is None
            else f"token counts use the tokenizer in {tokenizer_dir}"
        )
    return _value_problems(column, PROMPT, rows, reasons)


def _file_problems(table, rows, workers) -> list[Problem]:
    """Each distinct file is checked once, even when it is both a style and a content."""
    columns = {name: table.column(name) for name in (STYLE, CONTENT)}
    uris = {u for column in columns.values() for u in pc.unique(column).to_pylist()}
    failures = check_image_uris([u for u in uris if u and u.strip() and uri_problem(u) is None], workers)
    problems = []
    for name, column in columns.items():
        used = set(pc.unique(column).to_pylist())
        reasons = {u: (ERROR, kind, f"{u!r}: {why}") for u, (kind, why) in failures.items() if u in used}
        problems += _value_problems(column, name, rows, reasons)
    return problems
