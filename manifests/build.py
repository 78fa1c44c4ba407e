"""Build a manifest from folders of images and a prompt list, streamed to Parquet in batches.

Inputs (`collect_images`): each argument is an image file, a folder (searched recursively; files with
an image extension are taken, anything else inside is listed as ignored), a glob pattern, or an
s3:// object or prefix. Order is deterministic: arguments in the order given, each one's files sorted by
path. Local paths are written absolute. A missing path, a file without an image extension, or a
folder/pattern without images is an error that lists every such input.

Pairings (rows come out in this order):
    cross   every style x content x prompt (style-major; no --contents: every style x prompt)
    zip     the i-th style with the i-th prompt (and i-th content); the lists must be the same length
    sample  N triples drawn without replacement from the cross product with numpy's PCG64(seed),
            written in cross order (the draw is stable for a given numpy version)
--repeats K writes each triple K times with seeds base + 0..K-1, where
base = generation_seed(compute_uid(style, content, prompt, seed=S), None) and S is --seed (default 0):
distinct triples get unrelated seeds, and another --seed gives another set. Without repeats the seed
column is null (the generator derives the seed from the uid).
--aspect-ratios R1,R2,... [--resolution N] adds `width` and `height` columns: each row's bucket comes
from its generation seed (manifests/buckets.py); without it the manifest has no size columns.

Rows are generated from index arithmetic over the three input lists, one batch at a time: a
3,000 x 3,400 cross product never exists as Python rows.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from manifests.buckets import assign_buckets
from manifests.read import FORMATS, filesystem_and_path, list_manifest_files, read_raw, write_whole_file
from manifests.schema import ManifestError, format_rows
from manifests.uid import SEED_MASK, derived_seeds
from manifests.uris import uri_scheme

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PAIRINGS = ("cross", "zip", "sample")
BATCH_ROWS = 1 << 18
BUILD_SCHEMA = pa.schema(
    [("style", pa.string()), ("content", pa.string()), ("prompt", pa.string()), ("seed", pa.int64())]
)
SIZE_FIELDS = [pa.field("width", pa.int64()), pa.field("height", pa.int64())]


@dataclass(frozen=True)
class ImageList:
    uris: list[str]
    ignored: list[str]  # non-image files found inside folders / matched by patterns


def collect_images(inputs: Sequence[str], what: str = "style") -> ImageList:
    uris, ignored, bad = [], [], []
    for item in inputs:
        if uri_scheme(item) == "s3":
            found, skipped, problem = _s3_images(item)
        else:
            found, skipped, problem = _local_images(item)
        uris += found
        ignored += skipped
        if problem:
            bad.append(f"{item}: {problem}")
    if bad:
        listing = "\n  ".join(bad)
        raise ManifestError(
            f"{len(bad)} bad {what} input(s) (supported: {', '.join(IMAGE_EXTENSIONS)}):\n  {listing}"
        )
    return ImageList(uris, ignored)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _split_images(paths: list[str]) -> tuple[list[str], list[str]]:
    return [p for p in paths if _is_image(p)], [p for p in paths if not _is_image(p)]


def _local_images(item: str) -> tuple[list[str], list[str], str | None]:
    path = Path(item).expanduser()
    if path.is_file():
        if not _is_image(path.name):
            return [], [], "not an image file (unsupported extension)"
        return [os.path.abspath(path)], [], None
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file() and not _hidden(f.relative_to(path))]
        found, skipped = _split_images(sorted(os.path.abspath(f) for f in files))
        return found, skipped, None if found else "folder holds no image files"
    if glob.has_magic(item):
        matches = sorted(os.path.abspath(m) for m in glob.glob(os.path.expanduser(item), recursive=True))
        found, skipped = _split_images([m for m in matches if os.path.isfile(m)])
        return found, skipped, None if found else "pattern matches no image files"
    return [], [], "no such file or folder"


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _s3_images(item: str) -> tuple[list[str], list[str], str | None]:
    filesystem, path = filesystem_and_path(item)
    info = filesystem.get_file_info(path)
    if info.type == pa_fs.FileType.File:
        return (
            ([item], [], None) if _is_image(path) else ([], [], "not an image file (unsupported extension)")
        )
    entries = filesystem.get_file_info(pa_fs.FileSelector(path, recursive=True, allow_not_found=True))
    keys = sorted(e.path for e in entries if e.type == pa_fs.FileType.File)
    found, skipped = _split_images(["s3://" + key for key in keys])
    return found, skipped, None if found else "no image objects under this prefix"


def read_prompts(path: str) -> list[str]:
    """A .txt file (one prompt per line; blank lines skipped, surrounding whitespace stripped), or a
    CSV/JSONL/Parquet file with a `prompt` column (values kept exactly)."""
    suffix = Path(path).suffix.lower()
    if suffix in FORMATS:
        [file] = list_manifest_files(path)
        table = read_raw(file)
        if "prompt" not in table.column_names:
            raise ManifestError(
                f"{path}: no 'prompt' column (found columns: {table.column_names})", column="prompt"
            )
        prompts = table.column("prompt").cast(pa.string()).to_pylist()
        empty = [row for row, p in enumerate(prompts) if p is None or not p.strip()]
        if empty:
            raise ManifestError(f"{path}: column 'prompt', {format_rows(empty)}: empty prompt", rows=empty)
    else:
        filesystem, local = filesystem_and_path(path)
        with filesystem.open_input_stream(local) as stream:
            text = stream.read().decode("utf-8")
        prompts = [line.strip() for line in text.split("\n") if line.strip()]
    if not prompts:
        raise ManifestError(f"{path}: no prompts")
    return prompts


def _refuse_duplicates(what: str, items: Sequence) -> None:
    repeated = [item for item, count in Counter(items).items() if count > 1]
    if repeated:
        shown = ", ".join(repr(r) for r in repeated[:5]) + (" ..." if len(repeated) > 5 else "")
        raise ManifestError(
            f"{len(repeated)} {what}(s) listed more than once (would give duplicate rows): {shown}"
        )


def iter_manifest_batches(
    styles: Sequence[str],
    prompts: Sequence[str],
    contents: Sequence[str] | None = None,
    pairing: str = "cross",
    samples: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    batch_rows: int = BATCH_ROWS,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The manifest rows, `batch_rows` at a time (see the module docstring for the pairings); `sizes`:
    the aspect-ratio buckets' (width, height), assigned from each row's seed."""
    triples = _triple_indices(len(styles), len(contents or []), len(prompts), pairing, samples, repeats, seed)
    _check_inputs(styles, prompts, contents, pairing)
    style_array, prompt_array = pa.array(styles, pa.string()), pa.array(prompts, pa.string())
    content_array = pa.array(contents, pa.string()) if contents else None
    per_batch = max(1, batch_rows // repeats)
    for start in range(0, len(triples.style), per_batch):
        part = slice(start, start + per_batch)
        size = len(triples.style[part])
        columns = {
            "style": style_array.take(triples.style[part]),
            "content": content_array.take(triples.content[part]) if contents else pa.nulls(size, pa.string()),
            "prompt": prompt_array.take(triples.prompt[part]),
        }
        batch = _with_repeats(columns, repeats, seed)
        yield _with_sizes(batch, sizes) if sizes else batch


@dataclass(frozen=True)
class _Triples:
    style: np.ndarray
    content: np.ndarray
    prompt: np.ndarray


def _triple_indices(n_styles, n_contents, n_prompts, pairing, samples, repeats, seed) -> _Triples:
    if pairing not in PAIRINGS:
        raise ManifestError(f"unknown pairing {pairing!r} (use {', '.join(PAIRINGS)})")
    if repeats < 1:
        raise ManifestError(f"--repeats must be >= 1, got {repeats}")
    if samples is not None and pairing != "sample":
        raise ManifestError(f"--samples only applies to --pairing sample, not {pairing}")
    if n_styles == 0 or n_prompts == 0:
        raise ManifestError(f"no inputs: {n_styles} style(s), {n_prompts} prompt(s)")
    if pairing == "zip":
        counts = [n_styles, n_prompts] + ([n_contents] if n_contents else [])
        if len(set(counts)) != 1:
            listed = f"{n_styles} styles, {n_prompts} prompts" + (
                f", {n_contents} contents" if n_contents else ""
            )
            raise ManifestError(f"zip pairing needs lists of the same length, got {listed}")
        index = np.arange(n_styles)
        return _Triples(index, index, index)
    per_style = max(n_contents, 1) * n_prompts
    total = n_styles * per_style
    if pairing == "cross":
        flat = np.arange(total, dtype=np.int64)
    else:
        if samples is None or not 0 < samples <= total:
            raise ManifestError(
                f"--pairing sample needs 0 < --samples <= {total} (the cross product), got {samples}"
            )
        flat = np.sort(np.random.Generator(np.random.PCG64(seed)).choice(total, size=samples, replace=False))
    return _Triples(flat // per_style, (flat // n_prompts) % max(n_contents, 1), flat % n_prompts)


def _check_inputs(styles, prompts, contents, pairing) -> None:
    if pairing == "zip":
        _refuse_duplicates(
            "(style, content, prompt) triple",
            list(zip(styles, contents or [None] * len(styles), prompts, strict=True)),
        )
        return
    _refuse_duplicates("style", styles)
    _refuse_duplicates("prompt", prompts)
    _refuse_duplicates("content", contents or [])


def _with_repeats(columns: dict[str, pa.Array], repeats: int, seed: int) -> pa.RecordBatch:
    size = len(columns["style"])
    if repeats == 1:
        return pa.RecordBatch.from_arrays(
            [*columns.values(), pa.nulls(size, pa.int64())], schema=BUILD_SCHEMA
        )
    seeded = pa.table({**columns, "seed": pa.array(np.full(size, seed, np.int64))})
    base = np.repeat(derived_seeds(seeded).astype(np.uint64), repeats)
    offsets = np.tile(np.arange(repeats, dtype=np.uint64), size)
    seeds = ((base + offsets) & np.uint64(SEED_MASK)).astype(np.int64)
    expanded = [array.take(np.repeat(np.arange(size), repeats)) for array in columns.values()]
    return pa.RecordBatch.from_arrays([*expanded, pa.array(seeds)], schema=BUILD_SCHEMA)


def _with_sizes(batch: pa.RecordBatch, sizes: Sequence[tuple[int, int]]) -> pa.RecordBatch:
    """Add width/height from each row's generation seed: its seed, else the one its uid (without a
    size) derives, which is what the generator would use without the size columns."""
    seed = batch.column("seed")  # a built manifest's seeds are all set (--repeats) or all null
    seeds = derived_seeds(pa.Table.from_batches([batch])) if seed.null_count else seed.to_numpy()
    widths, heights = assign_buckets(seeds, list(sizes))
    schema = pa.schema([*BUILD_SCHEMA, *SIZE_FIELDS])
    return pa.RecordBatch.from_arrays([*batch.columns, pa.array(widths), pa.array(heights)], schema=schema)


def write_manifest(batches: Iterator[pa.RecordBatch], out: str) -> int:
    """Stream batches into one Parquet file; returns the row count. The file appears at `out` (local or
    s3://) only when complete, so a failing build leaves nothing, not a truncated manifest."""
    rows = 0

    def write(target: str) -> None:
        nonlocal rows
        writer = None
        try:
            for batch in batches:
                if writer is None:
                    writer = pq.ParquetWriter(target, batch.schema, compression="zstd")
                writer.write_batch(batch)
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ManifestError(f"{out}: nothing to write (no rows)")

    write_whole_file(str(out), write)
    return rows


@dataclass(frozen=True)
class BuildResult:
    rows: int
    styles: int
    contents: int
    prompts: int
    ignored: list[str]  # non-image files skipped inside folders or patterns


def build_manifest(
    styles: Sequence[str],
    prompts_file: str,
    out: str,
    contents: Sequence[str] | None = None,
    pairing: str = "cross",
    samples: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> BuildResult:
    """`stylegen manifest build`: collect the inputs, then stream the rows to `out` (`sizes`: the
    aspect-ratio buckets, manifests/buckets.py)."""
    style_images = collect_images(styles, "style")
    content_images = collect_images(contents, "content") if contents else ImageList([], [])
    prompts = read_prompts(prompts_file)
    content_uris = content_images.uris or None
    batches = iter_manifest_batches(
        style_images.uris, prompts, content_uris, pairing, samples, repeats, seed, sizes=sizes
    )
    rows = write_manifest(batches, out)
    ignored = style_images.ignored + content_images.ignored
    return BuildResult(rows, len(style_images.uris), len(content_images.uris), len(prompts), ignored)
