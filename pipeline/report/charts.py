"""Inline SVG charts: a stacked histogram per score (kept / rejected) with the filter thresholds drawn
as labelled vertical lines, and the images-committed-per-minute bar chart. Plain SVG, no script."""

from __future__ import annotations

from html import escape

import numpy as np

from pipeline.report.data import ScoreValues, Throughput

KEPT, REJECTED, THRESHOLD, AXIS = "#2e7d32", "#c62828", "#1565c0", "#555"
WIDTH, HEIGHT = 400, 200
LEFT, RIGHT, TOP, BOTTOM = 40, 12, 34, 30


def _svg(body: list[str], label: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", colour: str = AXIS, size: int = 10) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{colour}" text-anchor="{anchor}" '
        f'font-family="sans-serif">{escape(text)}</text>'
    )


def histogram_edges(score: ScoreValues, bins: int = 20) -> np.ndarray:
    """Bin edges covering every value and every threshold (so each threshold line is on the chart)."""
    points = np.concatenate([score.kept, score.rejected, [t.value for t in score.thresholds]])
    if points.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(points.min()), float(points.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def histogram_svg(score: ScoreValues, bins: int = 20) -> str:
    edges = histogram_edges(score, bins)
    kept, _ = np.histogram(score.kept, bins=edges)
    rejected, _ = np.histogram(score.rejected, bins=edges)
    peak = int(max(1, (kept + rejected).max()))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    low, high = float(edges[0]), float(edges[-1])

    def x_of(value: float) -> float:
        return LEFT + (value - low) / (high - low) * plot_w

    def y_of(count: float) -> float:
        return TOP + plot_h - count / peak * plot_h

    body = []
    for i in range(bins):
        x0, x1 = x_of(edges[i]), x_of(edges[i + 1])
        if not kept[i] + rejected[i]:
            continue
        tip = f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {kept[i]} kept, {rejected[i]} rejected"
        body.append(f"<g><title>{escape(tip)}</title>")  # one hover tip per bin
        for colour, bottom, count in ((KEPT, 0, kept[i]), (REJECTED, kept[i], rejected[i])):
            if count:
                y_top, y_bottom = y_of(bottom + count), y_of(bottom)
                body.append(
                    f'<rect x="{x0:.1f}" y="{y_top:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                    f'height="{y_bottom - y_top:.1f}" fill="{colour}"/>'
                )
        body.append("</g>")
    base = TOP + plot_h
    body.append(f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}" stroke="{AXIS}"/>')
    body.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="{AXIS}"/>')
    body.append(_text(LEFT - 4, TOP + 8, str(peak), "end"))
    body.append(_text(LEFT - 4, base, "0", "end"))
    for value, anchor in ((low, "start"), ((low + high) / 2, "middle"), (high, "end")):
        body.append(_text(x_of(value), base + 14, f"{value:.3g}", anchor))
    for index, threshold in enumerate(score.thresholds):
        x = x_of(threshold.value)
        body.append(
            f'<line class="threshold" data-score="{escape(threshold.score)}" '
            f'data-value="{threshold.value!r}" '
            f'x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{base}" stroke="{THRESHOLD}" '
            f'stroke-width="1.5" stroke-dasharray="4 3"/>'
        )
        anchor = "start" if x < LEFT + plot_w / 2 else "end"
        shift = 3 if anchor == "start" else -3
        body.append(_text(x + shift, TOP - 6 - 11 * (index % 2), threshold.label, anchor, THRESHOLD))
    count = score.kept.size + score.rejected.size
    body.append(_text(WIDTH - RIGHT, base + 26, f"{score.name}: {count} scored samples", "end"))
    return _svg(body, f"histogram of {score.name}")


def throughput_svg(throughput: Throughput) -> str:
    """Images committed per minute as bars, with the first and last minute labelled (UTC)."""
    minutes = throughput.minutes
    if not minutes:
        return _svg([_text(LEFT, HEIGHT / 2, "no committed shards yet")], "throughput")
    peak = max(1, max(images for _, images in minutes))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = min(plot_w / len(minutes), 40.0)  # a short run keeps thin bars
    base = TOP + plot_h
    body = []
    for index, (start, images) in enumerate(minutes):
        height = images / peak * plot_h
        tip = f"{start:%H:%M} UTC: {images} images"
        body.append(
            f'<rect x="{LEFT + index * step:.1f}" y="{base - height:.1f}" width="{max(step - 1, 1):.1f}" '
            f'height="{height:.1f}" fill="{THRESHOLD}"><title>{escape(tip)}</title></rect>'
        )
    body.append(f'<line x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}" stroke="{AXIS}"/>')
    body.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="{AXIS}"/>')
    body.append(_text(LEFT - 4, TOP + 8, str(peak), "end"))
    body.append(_text(LEFT - 4, base, "0", "end"))
    body.append(_text(LEFT, base + 14, f"{minutes[0][0]:%H:%M}"))
    if len(minutes) > 1:
        body.append(_text(LEFT + plot_w, base + 14, f"{minutes[-1][0]:%H:%M} UTC", "end"))
    body.append(_text(LEFT, TOP - 12, "images committed per minute"))
    return _svg(body, "images committed per minute")
