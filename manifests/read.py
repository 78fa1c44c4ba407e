"""Read a manifest from Parquet, CSV or JSONL: one file, a folder, or an s3:// object or prefix.

A folder (or prefix) is read as every manifest file under it, recursively, in sorted path order, skipping
names that start with "." or "_" (Spark/Hadoop markers). s3:// goes through pyarrow's S3FileSystem,
which honours AWS_ENDPOINT_URL and the usual AWS_* variables. The result is normalized
(manifests/schema.py) and gets its `uid` column (manifests/uid.py).

CSV is read with every canonical column as text (so a prompt "1984" stays text) and quoted newlines
allowed; extra CSV columns get Arrow's type inference. JSONL is parsed line by line with Python's json
module (it is meant for hand-made lists) so a bad line is reported by its line number.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from manifests.schema import ID, SEED, TEXT_COLUMNS, USER_COLUMNS, ManifestError, normalize_table
from manifests.uid import compute_uids
from manifests.uris import local_path, split_s3, uri_scheme

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".csv": "csv"}
FORMATS |= {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class ManifestFile:
    uri: str  # what messages show
    filesystem: pa_fs.FileSystem
    path: str
    format: str


def read_manifest(uri: str, *, compact: bool = False) -> pa.Table:
    """The normalized manifest (uid, row, prompt, style, content, id, seed, extras...).

    compact=True keeps prompt/style/content/id as dictionary<int32, string>: the same values in a
    fraction of the memory when styles and prompts repeat (a 10M-row cross product: ~0.6 GB instead
    of ~1.5 GB). make_plan and table_fingerprint accept both forms alike; validation and most Arrow
    string kernels need the default plain form."""
    tables, next_row = [], 0
    for file in list_manifest_files(uri):
        raw = read_raw(file, dictionary_text=compact)
        table = normalize_table(raw, source=file.uri, first_row=next_row, compact=compact)
        tables.append(table)
        next_row += table.num_rows
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ManifestError(f"{uri}: the files disagree on a column type: {error}") from None
    if table.num_rows == 0:
        raise ManifestError(f"{uri}: the manifest has no rows")
    return table.add_column(0, "uid", compute_uids(table))


def filesystem_and_path(uri: str) -> tuple[pa_fs.FileSystem, str]:
    if uri_scheme(uri) == "s3":
        # Keys are raw (spaces, unicode), so only the bucket goes through URI parsing.
        bucket, key = split_s3(uri)
        filesystem, _ = pa_fs.FileSystem.from_uri(f"s3://{bucket}")
        return filesystem, f"{bucket}/{key}".rstrip("/")
    if uri_scheme(uri) not in ("", "file"):
        raise ManifestError(f"{uri}: unsupported URI scheme (use a local path, file:// or s3://)")
    return pa_fs.LocalFileSystem(), str(local_path(uri).absolute())


def write_whole_file(uri: str, write: Callable[[str], None]) -> None:
    """Have `write(path)` fill a local file, then make it appear at `uri` (local or s3://) only once
    complete: renamed into place beside the target, or uploaded after it is finished. pyarrow's S3
    output streams publish what was written so far when closed after an error (arrow#40502), so
    nothing is ever streamed to the final name."""
    filesystem, path = filesystem_and_path(uri)
    if isinstance(filesystem, pa_fs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        staging = str(Path(path).with_name(f".{Path(path).name}.{uuid.uuid4().hex}.tmp"))
        try:
            write(staging)
            os.replace(staging, path)
        finally:
            Path(staging).unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="stylegen-") as folder:
        staging = str(Path(folder) / "file")
        write(staging)
        pa_fs.copy_files(staging, path, destination_filesystem=filesystem)


def list_manifest_files(uri: str) -> list[ManifestFile]:
    filesystem, path = filesystem_and_path(uri)
    info = filesystem.get_file_info(path)
    if info.type == pa_fs.FileType.NotFound:
        raise ManifestError(f"{uri}: manifest not found")
    if info.type == pa_fs.FileType.File:
        return [ManifestFile(uri, filesystem, path, _format_of(uri, path))]
    found = filesystem.get_file_info(pa_fs.FileSelector(path, recursive=True))
    files = []
    for entry in sorted(found, key=lambda e: e.path):
        relative = entry.path[len(path) :].lstrip("/")
        hidden = any(part.startswith((".", "_")) for part in relative.split("/"))
        if entry.type == pa_fs.FileType.File and not hidden and _suffix(entry.path) in FORMATS:
            display = uri.rstrip("/") + "/" + relative
            files.append(ManifestFile(display, filesystem, entry.path, FORMATS[_suffix(entry.path)]))
    if not files:
        raise ManifestError(f"{uri}: no manifest files (*.parquet, *.csv, *.jsonl) in this folder")
    return files


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _format_of(uri: str, path: str) -> str:
    if _suffix(path) not in FORMATS:
        raise ManifestError(
            f"{uri}: unknown manifest format {_suffix(path)!r} (use .parquet, .csv or .jsonl)"
        )
    return FORMATS[_suffix(path)]


def read_raw(file: ManifestFile, dictionary_text: bool = False) -> pa.Table:
    """The file's table as stored, before normalization; dictionary_text reads Parquet text columns
    without expanding their dictionary pages."""
    try:
        if file.format == "parquet":
            dictionary = None
            if dictionary_text:
                schema = pq.read_schema(file.path, filesystem=file.filesystem)
                dictionary = [f.name for f in schema if f.name in TEXT_COLUMNS and pa.types.is_string(f.type)]
            return pq.read_table(file.path, filesystem=file.filesystem, read_dictionary=dictionary)
        with file.filesystem.open_input_stream(file.path) as stream:
            data = stream.read()
        return read_csv_bytes(data, file.uri) if file.format == "csv" else read_jsonl_bytes(data, file.uri)
    except ManifestError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{file.uri}: cannot read as {file.format}: {error}") from None


def read_csv_bytes(data: bytes, source: str) -> pa.Table:
    text_columns = {name: pa.string() for name in USER_COLUMNS}
    return pa_csv.read_csv(
        io.BytesIO(data),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(column_types=text_columns, strings_can_be_null=False),
    )


def read_jsonl_bytes(data: bytes, source: str) -> pa.Table:
    records = []
    # Split on b"\n" only: str.splitlines would also split inside strings holding U+2028 and friends.
    for line_number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ManifestError(f"{source}: line {line_number} is not valid JSON: {error}") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{source}: line {line_number} is not a JSON object")
        records.append(record)
    names = list(dict.fromkeys(key for record in records for key in record))
    return pa.table({name: _json_column(name, [r.get(name) for r in records], source) for name in names})


def _json_column(name: str, values: list, source: str) -> pa.Array:
    if name in (ID, SEED):  # any scalar id; seeds may be written as numbers or as text
        values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        return pa.array(values, pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        kinds = {}
        for row, value in enumerate(values):
            kinds.setdefault(type(value).__name__, row)
        seen = ", ".join(f"{kind} (row {row})" for kind, row in kinds.items() if kind != "NoneType")
        raise ManifestError(f"{source}: column {name!r} mixes value types: {seen}", column=name) from None


def iter_manifest(uri: str, batch_rows: int):
    """The normalized manifest (as read_manifest gives it, plain text) in tables of at most `batch_rows`
    rows, in row order: Parquet files are read a batch at a time, CSV and JSONL (hand-made, small) whole."""
    next_row = 0
    for file in list_manifest_files(uri):
        if file.format == "parquet":
            try:
                parquet = pq.ParquetFile(file.path, filesystem=file.filesystem)
                raws = (pa.Table.from_batches([batch]) for batch in parquet.iter_batches(batch_rows))
            except (pa.ArrowException, OSError) as error:
                raise ManifestError(f"{file.uri}: cannot read as parquet: {error}") from None
        else:
            whole = read_raw(file)
            raws = (whole.slice(start, batch_rows) for start in range(0, max(whole.num_rows, 1), batch_rows))
        for raw in raws:
            table = normalize_table(raw, source=file.uri, first_row=next_row)
            next_row += table.num_rows
            if table.num_rows:
                yield table.add_column(0, "uid", compute_uids(table))
    if next_row == 0:
        raise ManifestError(f"{uri}: the manifest has no rows")


def manifest_rows(uri: str) -> int | None:
    """The manifest's row count from its Parquet footers; None when a file is CSV or JSONL."""
    rows = 0
    for file in list_manifest_files(uri):
        if file.format != "parquet":
            return None
        rows += pq.read_metadata(file.path, filesystem=file.filesystem).num_rows
    return rows
