"""Per-style galleries: the style's reference image beside a capped, deterministic set of its samples.

Choice (deterministic, cheap for big outputs): styles in URI order, at most `max_styles`; within a
style, samples in uid order (uids are hash digests, so this is an unbiased spread), up to `per_style`
tiles; a quarter of them (more if there are too few kept) are rejected samples when rejected/ tars
exist, otherwise the rejected are counted by rule. Only the chosen samples are read,
each shard tar once, streaming (reading stops after the last wanted member). Every image becomes a
small JPEG data: URI, so the page has no external assets.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.columns import SCORE_PREFIX
from pipeline.output.shard_tables import with_status
from pipeline.output.shard_tars import read_tar_samples
from pipeline.report.data import HAS_CONTENT, STATUSES, ReportData, rule_counts, rule_of, with_details
from pipeline.report.data import extremes as extremes_of

IMAGE_EXTENSIONS = ("png", "jpg", "webp")


@dataclass
class Tile:
    uid: str
    status: str  # kept | rejected
    shard_id: int
    prompt: str
    note: str  # "kept" or the rule that rejected it
    content_uri: str | None = None  # composition rows
    style: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # every finite score of the sample
    image: str | None = None  # data: URI
    content: str | None = None  # data: URI of the content image
    error: str | None = None

    @property
    def tar_key(self) -> str:
        from pipeline.storage.layout import rejected_key, tar_key

        return (tar_key if self.status == "kept" else rejected_key)(self.shard_id)


@dataclass
class StyleGallery:
    style: str
    counts: dict[str, int]
    composition_rows: int
    tiles: list[Tile] = field(default_factory=list)
    rejected_reasons: list[tuple[str, int]] = field(default_factory=list)  # when rejected images are absent
    reference: str | None = None
    reference_error: str | None = None


@dataclass
class ScoreExtremes:
    """The highest and lowest scored samples of one score, among those whose image the output keeps."""

    score: str
    best: list[Tile]
    worst: list[Tile]


@dataclass
class Galleries:
    styles: list[StyleGallery]
    hidden_styles: int  # styles left out (max_styles)
    extremes: list[ScoreExtremes] = field(default_factory=list)


def thumbnail(data: bytes, size: int) -> str:
    """Downscale encoded image bytes to fit `size` px and return a JPEG data: URI."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", (size, size))  # JPEG sources decode at reduced size directly
        image = opened.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def build_galleries(
    store,
    data: ReportData,
    *,
    per_style: int = 8,
    max_styles: int = 30,
    size: int = 128,
    extremes: int = 4,
    threads: int = 8,
) -> Galleries:
    """The galleries of the first `max_styles` styles, and the `extremes` best and worst samples of
    every score; all their images are read in one pass over the tars."""
    rows = data.rows
    if "style" not in rows.column_names or rows.num_rows == 0:
        return Galleries([], 0)
    styles = sorted(style for style in pc.unique(rows.column("style")).to_pylist() if style is not None)
    galleries = [
        _gallery(style, rows.filter(pc.equal(rows.column("style"), style)), data.rejected_tars, per_style)
        for style in styles[:max_styles]
    ]
    shown = _has_image(rows, data.rejected_tars)
    ends = []
    for score in data.scores:
        best, worst = extremes_of(rows, score.name, extremes, shown)
        ends.append(ScoreExtremes(score.name, [_tile(r) for r in best], [_tile(r) for r in worst]))
    tiles = [tile for gallery in galleries for tile in gallery.tiles]
    tiles += [tile for end in ends for tile in end.best + end.worst]
    _add_details(data, tiles)
    wanted: dict[str, list[str]] = defaultdict(list)  # tar key -> uids
    for tile in tiles:
        wanted[tile.tar_key].append(tile.uid)
    uris = sorted({gallery.style for gallery in galleries} | {t.content_uri for t in tiles if t.content_uri})

    with ThreadPoolExecutor(max_workers=threads) as pool:
        images: dict[str, bytes] = {}
        for found in pool.map(lambda key: _read(store, key, wanted[key]), wanted):
            images.update(found)
        loaded = dict(zip(uris, pool.map(lambda uri: _load_uri(uri, size), uris), strict=True))

    for gallery in galleries:
        gallery.reference, gallery.reference_error = loaded[gallery.style]
    for tile in tiles:
        if tile.image or tile.error:  # the same sample shown twice (a gallery and an extreme)
            continue
        if tile.uid not in images:
            tile.error = "missing from its tar"
        else:
            try:
                tile.image = thumbnail(images[tile.uid], size)
            except Exception as error:  # noqa: BLE001 - a bad sample must not break the report
                tile.error = f"cannot decode: {type(error).__name__}: {error}"
        if tile.content_uri:
            tile.content = loaded[tile.content_uri][0]
    return Galleries(galleries, max(0, len(styles) - max_styles), ends)


def _has_image(rows: pa.Table, rejected_tars: set[int]) -> np.ndarray:
    """Rows whose image is in a tar: kept ones, and rejected ones of shards with a rejected/ tar."""
    statuses = rows.column("status").to_numpy(zero_copy_only=False)
    shards = rows.column("shard_id").to_numpy(zero_copy_only=False)
    rejected_shown = (statuses == "rejected") & np.isin(shards, sorted(rejected_tars))
    return (statuses == "kept") | rejected_shown


def _gallery(style: str, members: pa.Table, rejected_tars: set[int], per_style: int) -> StyleGallery:
    """Up to `per_style` tiles: the first kept and (where their tars exist) rejected samples by uid."""
    rejected = with_status(members, "rejected")
    shard_ids = rejected.column("shard_id")
    showable = rejected.filter(pc.is_in(shard_ids, value_set=pa.array(sorted(rejected_tars), shard_ids.type)))
    kept = _first_by_uid(with_status(members, "kept"), per_style)
    shown = _first_by_uid(showable, per_style)
    rejected_slots = min(len(shown), max(1, per_style // 4))
    chosen = kept[: per_style - rejected_slots]
    chosen += shown[: per_style - len(chosen)]
    statuses = {
        item["values"]: item["counts"] for item in pc.value_counts(members.column("status")).to_pylist()
    }
    composition = pc.sum(members.column(HAS_CONTENT)).as_py() if HAS_CONTENT in members.column_names else 0
    gallery = StyleGallery(
        style=style,
        counts={status: statuses.get(status, 0) for status in STATUSES},
        composition_rows=composition or 0,
        tiles=[_tile(row) for row in chosen],
    )
    if rejected.num_rows and not showable.num_rows:
        gallery.rejected_reasons = rule_counts(rejected)
    return gallery


def _first_by_uid(rows: pa.Table, count: int) -> list[dict]:
    return rows.sort_by("uid").slice(0, count).to_pylist()


def _tile(row: dict) -> Tile:
    status = row["status"]
    note = "kept" if status == "kept" else rule_of(row.get("filter_rule"), row.get("reason"))
    scores = {
        name.removeprefix(SCORE_PREFIX): float(value)
        for name, value in row.items()
        if name.startswith(SCORE_PREFIX) and value is not None and math.isfinite(value)
    }
    return Tile(
        uid=row["uid"],
        status=status,
        shard_id=int(row["shard_id"]),
        prompt=row.get("prompt") or "",
        note=note,
        content_uri=row.get("content") or None,
        style=row.get("style"),
        scores=dict(sorted(scores.items())),
    )


def _add_details(data: ReportData, tiles: list[Tile]) -> None:
    """The tiles' prompts and content URIs, read from the tiles' shards only."""
    rows = with_details(data.source, [{"uid": tile.uid, "shard_id": tile.shard_id} for tile in tiles])
    for tile, row in zip(tiles, rows, strict=True):
        tile.prompt = row.get("prompt") or tile.prompt
        tile.content_uri = row.get("content") or tile.content_uri


def _read(store, key: str, uids: list[str]) -> dict[str, bytes]:
    """{uid: image bytes} of the wanted samples of one tar; a missing or damaged tar gives none."""
    try:
        samples = read_tar_samples(store, key, uids)
    except Exception:  # noqa: BLE001 - the tiles say "missing from its tar"
        return {}
    images = {}
    for uid, members in samples.items():
        for ext in IMAGE_EXTENSIONS:
            if ext in members:
                images[uid] = members[ext]
                break
    return images


def _load_uri(uri: str, size: int) -> tuple[str | None, str | None]:
    """(data: URI, None) for a style/content image, or (None, why not)."""
    from manifests.input_files import read_bytes

    try:
        return thumbnail(read_bytes(uri), size), None
    except Exception as error:  # noqa: BLE001 - shown in the report instead of the image
        return None, f"{type(error).__name__}: {error}"
