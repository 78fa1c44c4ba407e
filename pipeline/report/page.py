"""The report's HTML: one page, a little inline CSS, no script, every image an inline data: URI.

Count cells carry `data-status` / `data-rule` attributes so the numbers can be read back by tools."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from pipeline.report.charts import histogram_svg, throughput_svg
from pipeline.report.data import STATUSES, ReportData
from pipeline.report.gallery import StyleGallery, Tile

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; max-width: 1400px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; text-align: left; }
tr:nth-child(even) { background: #f6f6f6; }
td.count { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; font-size: 13px; } .charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart { border: 1px solid #e0e0e0; padding: 6px; }
.style { display: flex; gap: 16px; margin: 16px 0; padding: 12px; border: 1px solid #e0e0e0; }
.reference { flex: 0 0 150px; } .reference img { width: 140px; height: 140px; object-fit: contain;
  border: 3px solid #333; background: #eee; }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; align-content: flex-start; }
.tile { width: 132px; font-size: 11px; } .tile img.sample { width: 128px; height: 128px; object-fit: contain;
  border: 2px solid; background: #eee; image-rendering: pixelated; }
.tile.kept img.sample { border-color: #2e7d32; } .tile.rejected img.sample { border-color: #c62828; }
.tile.rejected { opacity: 0.85; } .tag { font-weight: 600; } .kept .tag { color: #2e7d32; }
.rejected .tag { color: #c62828; } .content img { width: 40px; height: 40px; vertical-align: middle;
  border: 1px solid #999; } .error { color: #c62828; } .prompt { color: #444; overflow-wrap: anywhere; }
"""


def render(data: ReportData, galleries: list[StyleGallery], hidden_styles: int) -> str:
    run = data.run
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>stylegen report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>stylegen report</h1>",
        f'<p class="meta">{escape(data.output)} &middot; generated '
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}</p>",
        "" if run else '<p class="error">run.json is missing: run settings and thresholds are unknown.</p>',
        _run_info(data),
        _counts(data),
        _scores(data),
        _throughput(data),
        _galleries(galleries, hidden_styles, data),
        _failed(data),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part)


def _rows(pairs: list[tuple[str, object]]) -> str:
    return "".join(f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>" for name, value in pairs)


def _run_info(data: ReportData) -> str:
    run = data.run
    config = run.get("config") or {}
    pairs: list[tuple[str, object]] = [
        ("shards committed / planned", f"{data.shards_committed} / {_or_unknown(data.shards_planned)}"),
        ("run format", run.get("format", "?")),
        ("created", run.get("created", "?")),
        ("preset", config.get("preset", "?")),
        ("filters", " and ".join((config.get("scoring") or {}).get("filters") or []) or "none"),
        ("config fingerprint", str(run.get("config_fingerprint", "?"))[:16]),
    ]
    selection = run.get("selection")
    if selection:
        source = run.get("source") or {}
        rule = (
            f"top {selection['top']:g}" if selection.get("top") is not None else f">= {selection.get('min')}"
        )
        per = f" per {selection['per']}" if selection.get("per") else ""
        pairs.insert(1, ("selected from", source.get("output", "?")))
        pairs.insert(2, ("selection", f"{selection.get('by')} {rule}{per}"))
    versions = run.get("versions") or {}
    if versions:
        pairs.append(("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))))
    return f"<h2>Run</h2><table>{_rows(pairs)}</table>"


def _or_unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _counts(data: ReportData) -> str:
    total = sum(data.status_counts.values())
    statuses = "".join(
        f'<tr><th>{status}</th><td class="count" data-status="{status}">{data.status_counts[status]}</td>'
        f"<td>{_share(data.status_counts[status], total)}</td></tr>"
        for status in STATUSES
    )
    statuses += f'<tr><th>rows</th><td class="count" data-status="rows">{total}</td><td></td></tr>'
    html = f'<h2>Samples</h2><table id="status-counts">{statuses}</table>'
    if data.rule_counts:
        rejected = data.status_counts["rejected"]
        rules = "".join(
            f"<tr><td><code>{escape(rule)}</code></td>"
            f'<td class="count" data-rule="{escape(rule)}">{count}</td>'
            f"<td>{_share(count, rejected)} of rejected</td></tr>"
            for rule, count in data.rule_counts
        )
        html += f'<h3>Rejected by rule (first failing rule)</h3><table id="rule-counts">{rules}</table>'
    return html


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else ""


def _scores(data: ReportData) -> str:
    if not data.scores:
        return "<h2>Scores</h2><p>No scores in this output.</p>"
    charts = []
    for score in data.scores:
        limits = ", ".join(t.label for t in score.thresholds) or "no threshold"
        charts.append(
            f'<div class="chart" id="score-{escape(score.name)}">{histogram_svg(score)}'
            f'<div class="meta">thresholds: {escape(limits)}</div></div>'
        )
    legend = (
        '<p class="meta"><span style="color:#2e7d32">&#9632; kept</span> '
        '<span style="color:#c62828">&#9632; rejected</span> '
        '<span style="color:#1565c0">&#9478; filter threshold</span></p>'
    )
    return f'<h2>Scores</h2>{legend}<div class="charts">{"".join(charts)}</div>'


def _throughput(data: ReportData) -> str:
    flow = data.throughput
    rate = flow.images_per_s
    if rate is None:
        text = f"{flow.images} images; too few commit times to measure a rate"
    else:
        text = f"{flow.images} images in {flow.seconds:.0f} s: <b>{rate:.3g} images/s</b> overall"
    return (
        f'<h2>Throughput</h2><p id="throughput">{text} (from run.json\'s start to the last commit '
        f'marker)</p><div class="chart">{throughput_svg(flow)}</div>'
    )


def _galleries(galleries: list[StyleGallery], hidden: int, data: ReportData) -> str:
    if not galleries:
        return ""
    note = "Rejected samples are shown where rejected/ tars exist; otherwise their count and reasons."
    sections = [f'<h2>Styles</h2><p class="meta">{note}</p>']
    for gallery in galleries:
        sections.append(_gallery(gallery))
    if hidden:
        sections.append(f"<p>{hidden} more styles not shown.</p>")
    return "\n".join(sections)


def _gallery(gallery: StyleGallery) -> str:
    if gallery.reference:
        reference = f'<img src="{gallery.reference}" alt="style reference">'
    else:
        reference = f'<p class="error">reference unavailable: {escape(gallery.reference_error or "?")}</p>'
    counts = ", ".join(f"{n} {status}" for status, n in gallery.counts.items())
    if gallery.composition_rows:
        counts += f"; {gallery.composition_rows} composition rows"
    reasons = ""
    if gallery.rejected_reasons:
        listed = ", ".join(f"{escape(rule)}: {n}" for rule, n in gallery.rejected_reasons)
        reasons = f'<div class="meta">rejected (images not kept): {listed}</div>'
    tiles = "".join(_tile(tile) for tile in gallery.tiles) or "<p>no generated samples</p>"
    return (
        f'<div class="style"><div class="reference">{reference}'
        f'<div class="meta prompt">{escape(gallery.style)}</div>'
        f'<div class="meta">{counts}</div>{reasons}</div>'
        f'<div class="tiles">{tiles}</div></div>'
    )


def _tile(tile: Tile) -> str:
    if tile.image:
        image = f'<img class="sample" src="{tile.image}" alt="{tile.status} sample {tile.uid}">'
    else:
        image = f'<p class="error">{escape(tile.error or "no image")}</p>'
    content = ""
    if tile.content:
        content = f'<div class="content"><img src="{tile.content}" alt="content image"> content</div>'
    return (
        f'<div class="tile {tile.status}" data-uid="{tile.uid}">{image}{content}'
        f'<div class="tag">{escape(tile.note)}</div><div class="prompt">{escape(tile.prompt)}</div></div>'
    )


def _failed(data: ReportData) -> str:
    total = data.status_counts["failed"]
    if not total:
        return "<h2>Failed rows</h2><p>None.</p>"
    rows = "".join(
        f"<tr><td><code>{escape(str(row.get('uid')))}</code></td><td>{row.get('shard_id')}</td>"
        f'<td class="prompt">{escape(str(row.get("prompt", "")))}</td>'
        f'<td class="error">{escape(str(row.get("reason")))}</td></tr>'
        for row in data.failed_rows
    )
    shown = f"first {len(data.failed_rows)} of {total}" if len(data.failed_rows) < total else f"all {total}"
    return (
        f'<h2>Failed rows ({shown})</h2><table id="failed-rows"><tr><th>uid</th><th>shard</th>'
        f"<th>prompt</th><th>error</th></tr>{rows}</table>"
    )
