"""The report's HTML: one page, a little inline CSS, no script, every image an inline data: URI.

Count cells carry `data-status` / `data-rule` attributes so the numbers can be read back by tools."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from pipeline.report.buckets import bucket_table
from pipeline.report.charts import histogram_svg, throughput_svg
from pipeline.report.data import STATUSES, ReportData
from pipeline.report.gallery import Galleries, ScoreExtremes, StyleGallery, Tile
from pipeline.report.quota import quota_section

# What each score measures (the chart titles); a score not listed here is shown by its name.
SCORE_TITLES = {
    "clip_t": "CLIP-T: image-text cosine",
    "clip_content": "CLIP image cosine to the content image (composition rows)",
    "dino_style": "DINOv2 cosine to the style reference",
    "csd_style": "CSD style cosine to the style reference",
    "leakage": "content leaked from the style reference",
}

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; max-width: 1400px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; } th, td { padding: 3px 10px; text-align: left; }
tr:nth-child(even) { background: #f6f6f6; }
td.count { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; font-size: 13px; } .charts { display: flex; flex-wrap: wrap; gap: 16px; }
.chart { border: 1px solid #e0e0e0; padding: 6px; display: inline-block; }
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
.path { overflow-wrap: anywhere; } .chart h3 { margin: 2px 0 4px; font-size: 15px; }
.chart h3 .what { font-weight: normal; color: #555; font-size: 12px; }
.scores span { display: block; color: #333; font-variant-numeric: tabular-nums; }
.scores span.ranked { font-weight: 700; }
.ends { display: flex; gap: 24px; }
.end h4 { margin: 6px 0; } .extreme { margin: 12px 0; padding: 8px; border: 1px solid #e0e0e0; }
td.path { max-width: 420px; }
"""


def render(data: ReportData, galleries: Galleries) -> str:
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
        quota_section(data.latest_run, data.run),
        _style_table(data),
        bucket_table(data.buckets),
        _scores(data),
        _extremes(galleries.extremes),
        _timings(data),
        "" if data.is_selection else _throughput(data),
        _galleries(galleries.styles, galleries.hidden_styles, data),
        _failed(data),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part)


def _rows(pairs: list[tuple[str, object]]) -> str:
    return "".join(f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>" for name, value in pairs)


def _run_info(data: ReportData) -> str:
    run = data.run
    config = run.get("config") or {}
    manifest = run.get("manifest") or {}
    plan = run.get("plan") or {}
    latest = data.latest_run or {}
    pairs: list[tuple[str, object]] = [
        ("shards committed / planned", f"{data.shards_committed} / {_or_unknown(data.shards_planned)}"),
        ("manifest", f"{manifest.get('uri', '?')} ({manifest.get('rows', '?')} rows)"),
        ("shard size", plan.get("shard_size", config.get("shard_size", "?"))),
    ]
    if latest:
        gpus = latest.get("gpus_per_actor")
        actors = f"{latest.get('actors', '?')} x {'?' if gpus is None else f'{float(gpus):g}'} GPU"
        pairs += [
            ("wall time (latest run)", f"{float(latest.get('elapsed_s', 0.0)):.1f} s"),
            ("actors x GPUs each (latest run)", actors),
        ]
    total = next((t for t in data.timings if t.name == "total"), None)
    if total is not None:
        pairs.append(("seconds per image", f"median {total.median:.3g} s, p95 {total.p95:.3g} s"))
    pairs += [
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
    return f'<h2>Run</h2><table id="run-info">{_rows(pairs)}</table>'


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
        what = SCORE_TITLES.get(score.name, "")
        charts.append(
            f'<div class="chart" id="score-{escape(score.name)}"><h3>{escape(score.name)} '
            f'<span class="what">{escape(what)}</span></h3>{histogram_svg(score)}'
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
    chart = f'<div class="chart"><h3>Images committed per minute</h3>{throughput_svg(flow)}</div>'
    return (
        f'<h2>Throughput</h2><p id="throughput">{text} (from run.json\'s start to the last commit '
        f"marker, pauses between runs included)</p>{_runs(data)}{chart}"
    )


def _runs(data: ReportData) -> str:
    """One row per run (an interrupted and resumed output has several), from its log and commits."""
    runs = [run for run in data.runs if run.shards]
    if not runs:
        return ""
    idle = len(data.runs) - len(runs)
    rows = []
    for number, run in enumerate(runs, 1):
        seconds, rate = run.seconds, run.images_per_s
        actors = "?" if run.actors is None else f"{run.actors} x {run.gpus_per_actor:g} GPU"
        rows.append(
            f'<tr data-run="{number}"><td>{run.started:%Y-%m-%d %H:%M:%S} UTC</td>'
            f'<td class="count" data-field="shards">{run.shards}</td>'
            f'<td class="count" data-field="images">{run.images}</td>'
            f'<td class="count">{"?" if seconds is None else f"{seconds:.1f} s"}</td>'
            f'<td class="count" data-field="images_per_s" data-value="{rate!r}">'
            f"{'?' if rate is None else f'{rate:.3g}'}</td><td>{escape(actors)}</td></tr>"
        )
    note = (
        f'<p class="meta">{idle} run(s) committed nothing (reruns of a finished output).</p>' if idle else ""
    )
    return (
        '<h3>Runs</h3><table id="runs"><tr><th>started</th><th>shards</th><th>images</th>'
        "<th>time</th><th>images/s</th><th>actors</th></tr>"
        + "".join(rows)
        + "</table>"
        + note
        + '<p class="meta">time: the driver\'s wall time for the latest run, else from its start to its '
        "last commit.</p>"
    )


def _style_table(data: ReportData, limit: int = 1000) -> str:
    """Per style: rows by status, the kept share of its generated rows, the mean of every score (the
    first `limit` styles by URI: a run of a million styles keeps a page a browser opens)."""
    if not data.styles:
        return ""
    names = [score.name for score in data.scores]  # the scores some sample has
    head = "".join(f"<th>mean {escape(name)}</th>" for name in names)
    rows = []
    for stats in data.styles[:limit]:
        share = stats.kept_share
        means = "".join(
            f'<td class="count" data-score="{escape(name)}" data-value="{value!r}">'
            f"{'-' if value is None else f'{value:.3f}'}</td>"
            for name, value in ((name, stats.score_means.get(name)) for name in names)
        )
        rows.append(
            f'<tr data-style="{escape(stats.style)}"><td class="path">{_path(stats.style)}</td>'
            f'<td class="count" data-field="rows">{stats.rows}</td>'
            + "".join(f'<td class="count" data-field="{s}">{stats.counts[s]}</td>' for s in STATUSES)
            + f'<td class="count" data-field="kept_share" data-value="{share!r}">'
            f"{'-' if share is None else f'{100 * share:.1f}%'}</td>{means}</tr>"
        )
    return (
        '<h2>Styles at a glance</h2><table id="style-table"><tr><th>style</th><th>rows</th><th>kept</th>'
        f"<th>rejected</th><th>failed</th><th>kept / generated</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
        + (
            f'<p class="meta">{len(data.styles) - limit} more styles not listed.</p>'
            if len(data.styles) > limit
            else ""
        )
    )


def _extremes(extremes: list[ScoreExtremes]) -> str:
    if not any(end.best or end.worst for end in extremes):
        return ""
    parts = ['<h2>Best and worst samples per score</h2><div id="extremes">']
    for end in extremes:
        columns = "".join(
            f'<div class="end {kind}"><h4>{label}</h4>'
            f'<div class="tiles">{"".join(_tile(tile, end.score) for tile in tiles)}</div></div>'
            for kind, label, tiles in (("best", "highest", end.best), ("worst", "lowest", end.worst))
        )
        parts.append(
            f'<div class="extreme" data-score="{escape(end.score)}"><h3>{escape(end.score)} '
            f'<span class="meta">{escape(SCORE_TITLES.get(end.score, ""))}</span></h3>'
            f'<div class="ends">{columns}</div></div>'
        )
    return "".join(parts) + "</div>"


def _timings(data: ReportData) -> str:
    """Seconds per image from the shard parquets' time_* columns (generated rows only)."""
    if not data.timings:
        return ""
    rows = "".join(
        f'<tr data-timing="{escape(t.name)}"><th>{escape(t.name)}</th>'
        f'<td class="count" data-field="median" data-value="{t.median!r}">{t.median:.3g} s</td>'
        f'<td class="count" data-field="p95" data-value="{t.p95!r}">{t.p95:.3g} s</td>'
        f'<td class="count">{t.images}</td></tr>'
        for t in data.timings
    )
    return (
        '<h2>Seconds per image</h2><table id="timings"><tr><th>step</th><th>median</th><th>p95</th>'
        f'<th>images</th></tr>{rows}</table><p class="meta">total: the steps summed per image.</p>'
    )


def _path(path: str) -> str:
    """A long path wraps after its slashes rather than mid-name."""
    return escape(path).replace("/", "/<wbr>")


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
        f'<div class="meta path">{_path(gallery.style)}</div>'
        f'<div class="meta">{counts}</div>{reasons}</div>'
        f'<div class="tiles">{tiles}</div></div>'
    )


def _tile(tile: Tile, ranked_by: str | None = None) -> str:
    scores = "".join(
        f'<span data-score="{escape(name)}" data-value="{value!r}"'
        f"{' class=ranked' if name == ranked_by else ''}>{escape(name)} {value:.3f}</span>"
        for name, value in tile.scores.items()
    )
    hover = "\n".join(
        [tile.uid, tile.prompt, tile.note, *(f"{name} = {value:.4f}" for name, value in tile.scores.items())]
    )
    if tile.image:
        image = f'<img class="sample" src="{tile.image}" alt="{tile.status} sample {tile.uid}">'
    else:
        image = f'<p class="error">{escape(tile.error or "no image")}</p>'
    content = ""
    if tile.content:
        content = f'<div class="content"><img src="{tile.content}" alt="content image"> content</div>'
    return (
        f'<div class="tile {tile.status}" data-uid="{tile.uid}" title="{escape(hover)}">{image}{content}'
        f'<div class="tag">{escape(tile.note)}</div><div class="scores">{scores}</div>'
        f'<div class="prompt">{escape(tile.prompt)}</div></div>'
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
