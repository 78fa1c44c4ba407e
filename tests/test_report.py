"""`stylegen report`: numbers equal to counts computed independently from the shard parquets, the run's
thresholds on the histograms, only inline data: images, the gallery's choice, throughput, S3, and a
real headless Chromium that renders the page with every image loaded."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from output_fixtures import build_output
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.dataset.select import Selection, select_output
from pipeline.report.build import write_report
from pipeline.report.charts import throughput_svg
from pipeline.report.data import throughput
from pipeline.storage import ShardMarker

pytest_plugins = ["s3_fixtures"]

CHROMIUM = Path("/usr/bin/chromium")
PER_STYLE = 6


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """A finished output with rejected/ tars, and its report.html written into it."""
    built = build_output(tmp_path_factory.mktemp("report"), keep_rejected=True)
    where = write_report(built.uri, per_style=PER_STYLE)
    return built, Path(where).read_text()


@pytest.fixture(scope="module")
def output_without_rejected(tmp_path_factory):
    built = build_output(tmp_path_factory.mktemp("report-norej"), keep_rejected=False)
    return built, Path(write_report(built.uri, per_style=PER_STYLE)).read_text()


def frame_of(uri: str) -> pd.DataFrame:
    root = Path(uri)
    committed = sorted(path.stem for path in (root / "_SUCCESS").glob("shard-*.json"))
    return pd.concat(
        [pd.read_parquet(root / "metadata" / f"{name}.parquet") for name in committed], ignore_index=True
    )


class Page(HTMLParser):
    """The report's images and gallery tiles, read back with the standard library's HTML parser."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[dict] = []
        self.tiles: list[dict] = []  # the style galleries' tiles
        self.styles: list[list[dict]] = []
        self.extremes: dict[tuple[str, str], list[dict]] = defaultdict(list)  # (score, best|worst) -> tiles
        self.tags: Counter = Counter()
        self._container: list[dict] | None = None
        self._score: str | None = None
        self._last: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] += 1
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "style" in classes:
            self.styles.append([])
            self._container = self.styles[-1]
        if tag == "div" and "extreme" in classes:
            self._score = attrs["data-score"]
        if tag == "div" and "end" in classes:
            self._container = self.extremes[(self._score, classes[1])]
        if tag == "div" and "tile" in classes:
            tile = {"uid": attrs["data-uid"], "status": classes[1], "images": [], "title": attrs.get("title")}
            self._container.append(tile)
            if self._container is not None and self.styles and self._container is self.styles[-1]:
                self.tiles.append(tile)
            self._last = tile
        if tag == "img":
            self.images.append(attrs)
            alt = attrs.get("alt", "")
            last = self._last
            if last and (alt.endswith(f"sample {last['uid']}") or alt == "content image"):
                last["images"].append(attrs)


def decode(uri: str) -> Image.Image:
    header, data = uri.split(",", 1)
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


# --- numbers ------------------------------------------------------------------------------------------


def test_counts_equal_an_independent_count_of_the_parquets(output):
    built, text = output
    frame = frame_of(built.uri)
    shown = {status: int(n) for status, n in re.findall(r'data-status="(\w+)">(\d+)<', text)}
    expected = frame["status"].value_counts().to_dict()
    assert shown == {
        "kept": expected.get("kept", 0),
        "rejected": expected.get("rejected", 0),
        "failed": expected.get("failed", 0),
        "rows": len(frame),
    }
    assert min(shown.values()) > 0  # the fixture has every status
    rules = {html.unescape(rule): int(n) for rule, n in re.findall(r'data-rule="([^"]*)">(\d+)<', text)}
    assert rules == frame.loc[frame["status"] == "rejected", "filter_rule"].value_counts().to_dict()
    assert len(rules) == 2
    assert f"{len(list(Path(built.uri, '_SUCCESS').iterdir()))} / {built.planned_shards}" in text


def test_failed_rows_are_listed_with_their_errors(output):
    built, text = output
    failed = frame_of(built.uri).query("status == 'failed'")
    table = html.unescape(text.split('id="failed-rows"', 1)[1].split("</table>", 1)[0])
    assert len(failed) >= 2
    for row in failed.itertuples():
        assert f"<code>{row.uid}</code>" in table
        assert row.reason in table
    assert any("file not found" in reason for reason in failed["reason"])
    assert any("InjectedFailure" in reason for reason in failed["reason"])


def test_histograms_show_every_score_with_the_run_thresholds(output):
    built, text = output
    frame = frame_of(built.uri)
    filters = built.run_record["config"]["scoring"]["filters"]
    expected = set()
    for rule in filters:  # independent: "0.05 <= dino_style < 0.9" -> (dino_style, 0.05), (dino_style, 0.9)
        score = re.search(r"[a-z_]+", rule).group()
        expected |= {(score, float(number)) for number in re.findall(r"-?\d+\.?\d*", rule)}
    lines = re.findall(r'<line class="threshold" data-score="(\w+)" data-value="([^"]+)"', text)
    assert {(score, float(value)) for score, value in lines} == expected
    readable = html.unescape(text)
    for label in ("clip_t >= 0.3", "dino_style >= 0.05", "dino_style < 0.9"):
        assert label in readable
    for score in ("clip_t", "clip_content", "dino_style"):
        chart = text.split(f'id="score-{score}"', 1)[1].split("</svg>", 1)[0]
        bins = re.findall(r"<title>[^<]*: (\d+) kept, (\d+) rejected</title>", chart)
        column = frame[f"score_{score}"]
        assert sum(int(k) for k, _ in bins) == int((column.notna() & (frame["status"] == "kept")).sum())
        assert sum(int(r) for _, r in bins) == int((column.notna() & (frame["status"] == "rejected")).sum())


def test_selection_report_draws_its_minimum(output, tmp_path):
    built, _ = output
    selected = tmp_path / "selected"
    select_output(built.uri, str(selected), Selection("clip_t", minimum=0.6))
    text = Path(write_report(str(selected))).read_text()
    assert re.search(r'data-score="clip_t" data-value="0.6"', text)
    assert "selected: clip_t &gt;= 0.6" in text
    assert built.uri in text  # "selected from"
    kept = int((frame_of(built.uri).query("status == 'kept'")["score_clip_t"] >= 0.6).sum())
    assert re.search(rf'data-status="kept">{kept}<', text)
    # Its shards were copied, not generated: no throughput or runs; a chart only for a score with values.
    assert "<h2>Throughput" not in text and 'id="runs"' not in text
    charts = re.findall(r'<div class="chart" id="score-(\w+)">', text)
    assert charts == scored_names(frame_of(str(selected))) and "csd_style" not in charts


def test_throughput_counts_images_per_minute_from_the_markers():
    def marker(shard: int, at: str, kept: int, rejected: int, failed: int) -> ShardMarker:
        summary = {"rows": kept + rejected + failed, "kept": kept, "rejected": rejected, "failed": failed}
        return ShardMarker(shard_id=shard, attempt_id="a", committed_at=at, files={}, summary=summary)

    markers = {
        0: marker(0, "2026-01-01T10:00:05+00:00", 3, 1, 2),
        1: marker(1, "2026-01-01T10:00:50+00:00", 2, 0, 0),
        2: marker(2, "2026-01-01T10:02:10+00:00", 5, 1, 0),
    }
    flow = throughput(markers, {"created": "2026-01-01T09:59:30+00:00"})
    start = datetime(2026, 1, 1, 9, 59, tzinfo=timezone.utc)
    assert flow.minutes == [(start + timedelta(minutes=m), n) for m, n in enumerate([0, 6, 0, 6])]
    assert flow.images == 12 and flow.seconds == 160
    assert flow.images_per_s == pytest.approx(12 / 160)
    svg = throughput_svg(flow)
    assert re.findall(r"<title>([^<]*)</title>", svg) == [
        "09:59 UTC: 0 images",
        "10:00 UTC: 6 images",
        "10:01 UTC: 0 images",
        "10:02 UTC: 6 images",
    ]


# --- images and galleries ------------------------------------------------------------------------------


def test_every_image_is_an_inline_data_uri_and_nothing_is_external(output):
    _, text = output
    page = Page(text)
    assert page.images and all(image["src"].startswith("data:image/jpeg;base64,") for image in page.images)
    assert page.tags["img"] == len(page.images) == text.count('src="data:image/jpeg;base64,')
    assert page.tags["script"] == page.tags["link"] == page.tags["iframe"] == 0
    assert "url(" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    for image in page.images:
        assert max(decode(image["src"]).size) <= 128


def test_galleries_mark_kept_and_rejected_and_show_references_and_content(output):
    built, text = output
    frame = frame_of(built.uri).set_index("uid")
    page = Page(text)
    styles = sorted(set(frame["style"]))
    assert len(page.styles) == len(styles)
    references = [image for image in page.images if image.get("alt") == "style reference"]
    assert len(references) == len(styles) - 1  # the fixture's missing style file has no reference
    assert "reference unavailable" in text and "missing.png: file not found" in text
    for tiles in page.styles:
        assert len(tiles) <= PER_STYLE
    statuses = Counter()
    for tile in page.tiles:
        row = frame.loc[tile["uid"]]
        assert tile["status"] == row["status"]
        statuses[tile["status"]] += 1
        alts = [image["alt"] for image in tile["images"]]
        assert alts[0] == f"{row['status']} sample {tile['uid']}"
        assert ("content image" in alts) == isinstance(row["content"], str)
    assert statuses["kept"] > 0 and statuses["rejected"] > 0
    assert any(isinstance(frame.loc[tile["uid"], "content"], str) for tile in page.tiles)


def test_gallery_thumbnail_is_the_sample_image_downscaled(output):
    built, text = output
    page = Page(text)
    tile = next(tile for tile in page.tiles if tile["status"] == "kept")
    frame = frame_of(built.uri).set_index("uid")
    shard = int(frame.loc[tile["uid"], "shard_id"])
    with tarfile.open(Path(built.uri) / "shards" / f"shard-{shard:06d}.tar") as tar:
        original = Image.open(io.BytesIO(tar.extractfile(f"{tile['uid']}.png").read())).convert("RGB")
    thumb = decode(tile["images"][0]["src"]).convert("RGB")
    assert thumb.size == original.size  # the fixture's 32 px images are not upscaled
    difference = sum(abs(a - b) for a, b in zip(thumb.tobytes(), original.tobytes(), strict=True))
    assert difference / len(original.tobytes()) < 12  # JPEG-close to the original pixels


def test_without_rejected_tars_the_rejected_are_counted_with_reasons(output_without_rejected):
    built, text = output_without_rejected
    frame = frame_of(built.uri)
    page = Page(text)
    assert {tile["status"] for tile in page.tiles} == {"kept"}
    for _, group in frame.groupby("style"):
        rejected = group[group["status"] == "rejected"]
        counts = f"{(group['status'] == 'kept').sum()} kept, {len(rejected)} rejected"
        assert counts in text
        if len(rejected):
            listed = ", ".join(
                f"{rule}: {n}"
                for rule, n in sorted(
                    rejected["filter_rule"].value_counts().items(), key=lambda i: (-i[1], i[0])
                )
            )
            assert f"rejected (images not kept): {html.escape(listed)}" in text


def test_report_is_deterministic_apart_from_its_date(output, tmp_path):
    built, text = output
    again = Path(write_report(built.uri, tmp_path / "again.html", per_style=PER_STYLE)).read_text()
    strip = lambda page: re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", page)  # noqa: E731
    assert strip(again) == strip(text)


def test_cli_report_to_a_file_and_a_clear_error(output, tmp_path):
    built, _ = output
    runner = CliRunner()
    target = tmp_path / "out" / "r.html"
    result = runner.invoke(app, ["report", built.uri, "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(target) and target.read_text().startswith("<!DOCTYPE html>")
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert f"no stylegen output at {tmp_path / 'nothing'}" in result.output


@pytest.mark.slow
def test_report_on_s3_goes_into_the_output(s3_bucket, tmp_path):
    built = build_output(tmp_path, s3_bucket.uri("runs/one"), rows=12)
    where = write_report(built.uri)
    assert where == s3_bucket.uri("runs/one/report.html")
    text = s3_bucket.read("runs/one/report.html").decode()
    frame = pd.concat(
        pd.read_parquet(io.BytesIO(s3_bucket.read(key)))
        for key in s3_bucket.object_keys("runs/one/metadata/")
    )
    shown = {status: int(n) for status, n in re.findall(r'data-status="(\w+)">(\d+)<', text)}
    assert shown["kept"] == int((frame["status"] == "kept").sum()) and shown["rows"] == len(frame)
    page = Page(text)
    assert page.tiles and all(image["src"].startswith("data:image/jpeg") for image in page.images)


# --- a real browser -------------------------------------------------------------------------------------

IMAGE_PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = "images=" + images.length + " loaded=" + loaded;
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"
)
def test_headless_chromium_renders_the_report_with_every_image(output, tmp_path):
    built, text = output
    report = Path(built.uri) / "report.html"
    screenshot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,2000", report.as_uri())
    assert screenshot.exists(), result.stderr[-2000:]
    with Image.open(screenshot) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, charts and thumbnails, not a blank page
        white = max((count for count, colour in colours if colour == (255, 255, 255)), default=0)
        assert white < 0.97 * pixels.width * pixels.height

    # The page as the browser built it: the sections, the titled charts and the per-style table.
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()).stdout
    assert re.findall(r"<h2>([^<(]+)", dom)[:4] == ["Run", "Samples", "Styles at a glance", "Scores"]
    titles = re.findall(r'<div class="chart" id="score-(\w+)"><h3>(\w+) ', dom)
    assert titles and all(chart == title for chart, title in titles)
    assert len(re.findall(r"<tr data-style=", dom)) == len(set(frame_of(built.uri)["style"]))

    probed = tmp_path / "probe.html"  # a copy with a probe script; the report itself has no script
    probed.write_text(text.replace("</body>", IMAGE_PROBE + "</body>"))
    result = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'id="image-probe">images=(\d+) loaded=(\d+)<', result.stdout)
    assert found, result.stderr[-2000:]
    expected = Page(text).tags["img"]
    assert expected > 10
    assert (int(found.group(1)), int(found.group(2))) == (expected, expected)
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_style_counts_cover_every_row(output):
    built, text = output
    frame = frame_of(built.uri)
    per_style = defaultdict(Counter)
    for row in frame.itertuples():
        per_style[row.style][row.status] += 1
    for counts in per_style.values():
        line = f"{counts['kept']} kept, {counts['rejected']} rejected, {counts['failed']} failed"
        assert line in text


def test_report_of_a_run_with_nothing_committed_yet(tmp_path):
    built = build_output(tmp_path, commit_shards=[])
    text = Path(write_report(built.uri)).read_text()
    shown = {status: int(n) for status, n in re.findall(r'data-status="(\w+)">(\d+)<', text)}
    assert shown == {"kept": 0, "rejected": 0, "failed": 0, "rows": 0}
    assert f"0 / {built.planned_shards}" in text and "no committed shards yet" in text
    assert Page(text).tiles == []


# --- the questions after a run: per style, per score, per run, seconds per image -------------------------

GENERATED = ("kept", "rejected")


def scored_names(frame: pd.DataFrame) -> list[str]:
    """Scores some generated sample has (an all-null score column gets no chart and no column)."""
    generated = frame[frame["status"].isin(GENERATED)]
    return sorted(c[6:] for c in frame.columns if c.startswith("score_") and generated[c].notna().any())


def section(text: str, element_id: str) -> str:
    return text.split(f'id="{element_id}"', 1)[1].split("</table>", 1)[0]


def test_style_table_equals_an_independent_computation(output):
    built, text = output
    frame = frame_of(built.uri)
    names = scored_names(frame)
    rows = re.findall(r'<tr data-style="([^"]*)">(.*?)</tr>', section(text, "style-table"))
    assert [html.unescape(style) for style, _ in rows] == sorted(frame["style"].unique())
    for style, cells in rows:
        group = frame[frame["style"] == html.unescape(style)]
        generated = group[group["status"].isin(GENERATED)]
        counts = {k: int(v) for k, v in re.findall(r'data-field="(rows|kept|rejected|failed)">(\d+)<', cells)}
        assert counts == {
            "rows": len(group),
            **{status: int((group["status"] == status).sum()) for status in ("kept", "rejected", "failed")},
        }
        share = re.search(r'data-field="kept_share" data-value="([^"]*)"', cells).group(1)
        if len(generated):
            assert float(share) == pytest.approx((generated["status"] == "kept").mean())
        else:
            assert share == "None"
        means = dict(re.findall(r'data-score="(\w+)" data-value="([^"]*)"', cells))
        assert sorted(means) == names
        for name, shown in means.items():
            expected = generated[f"score_{name}"].dropna().mean()
            assert shown == "None" if pd.isna(expected) else float(shown) == pytest.approx(expected)
    assert "csd_style" not in names and "score_csd_style" in frame.columns  # the fixture has an empty one


def test_seconds_per_image_are_numpy_percentiles_of_the_parquet_timings(output):
    built, text = output
    frame = frame_of(built.uri)
    generated = frame[frame["status"].isin(GENERATED)]
    columns = sorted(c for c in frame.columns if c.startswith("time_"))
    expected = {}
    for column in columns:
        values = generated[column].dropna().to_numpy()
        expected[column[5:]] = (np.median(values), np.percentile(values, 95))
    timed = generated[columns][generated[columns].notna().any(axis=1)]
    total = timed.fillna(0.0).sum(axis=1).to_numpy()
    expected["total"] = (np.median(total), np.percentile(total, 95))
    found = re.findall(
        r'<tr data-timing="(\w+)">.*?data-field="median" data-value="([^"]+)".*?'
        r'data-field="p95" data-value="([^"]+)"',
        section(text, "timings"),
    )
    shown = {name: (float(m), float(p)) for name, m, p in found}
    assert shown.keys() == expected.keys()
    for name, values in expected.items():
        assert shown[name] == pytest.approx(values, rel=1e-12)
    assert len(columns) == 2 and len(total) == len(generated) > 0
    median, p95 = expected["total"]
    assert f"median {median:.3g} s, p95 {p95:.3g} s" in section(text, "run-info")


def test_every_score_with_values_has_a_titled_chart_and_none_is_empty(output):
    built, text = output
    names = scored_names(frame_of(built.uri))
    charts = re.findall(r'<div class="chart" id="score-(\w+)"><h3>(\w+) <span class="what">([^<]*)<', text)
    assert [chart for chart, _, _ in charts] == names == ["clip_content", "clip_t", "dino_style"]
    assert all(chart == title and what for chart, title, what in charts)
    headings = re.findall(r"<h2>([^<(]+)", text)
    assert [h.strip() for h in headings] == [
        "Run", "Samples", "Styles at a glance", "Scores", "Best and worst samples per score",
        "Seconds per image", "Throughput", "Styles", "Failed rows",
    ]  # fmt: skip


def test_thumbnails_show_their_scores_in_caption_and_hover(output):
    built, text = output
    frame = frame_of(built.uri).set_index("uid")
    tiles = re.findall(
        r'<div class="tile \w+" data-uid="(\w+)" title="([^"]*)">.*?<div class="scores">(.*?)</div>', text
    )
    assert len(tiles) >= len(Page(text).tiles) > 0
    for uid, title, caption in tiles:
        row = frame.loc[uid]
        expected = {c[6:]: row[c] for c in frame.columns if c.startswith("score_") and pd.notna(row[c])}
        shown = dict(re.findall(r'data-score="(\w+)" data-value="([^"]+)"', caption))
        assert {k: float(v) for k, v in shown.items()} == pytest.approx(expected)
        hover = html.unescape(title).split("\n")
        assert hover[:2] == [uid, row["prompt"]]
        assert [line for line in hover if " = " in line] == [
            f"{k} = {v:.4f}" for k, v in sorted(expected.items())
        ]


def test_best_and_worst_samples_per_score(output):
    built, text = output
    frame = frame_of(built.uri)
    shown = frame["status"].isin(GENERATED)  # the fixture keeps rejected tars for every shard
    page = Page(text)
    for name in scored_names(frame):
        column = f"score_{name}"
        candidates = frame[shown & frame[column].notna()]
        best = candidates.sort_values([column, "uid"], ascending=[False, True])["uid"].head(4).tolist()
        worst = candidates.sort_values([column, "uid"], ascending=[True, True])["uid"].head(4).tolist()
        assert [tile["uid"] for tile in page.extremes[(name, "best")]] == best
        assert [tile["uid"] for tile in page.extremes[(name, "worst")]] == worst
        assert all(tile["images"] for tile in page.extremes[(name, "best")])


def test_an_interrupted_and_resumed_output_shows_each_run(tmp_path):
    """Two runs (an interrupt between them) and a rerun that found nothing to do: each run its own
    shards, images, time and actors, from the log names, the commit markers and the latest summary."""
    from pipeline.storage.layout import marker_key

    built = build_output(tmp_path, rows=24, shard_size=5)  # 5 shards
    store = built.store
    first, second = ("2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00")
    commits = {0: "2026-01-01T10:00:30+00:00", 1: "2026-01-01T10:01:00+00:00"}
    commits |= {
        2: "2026-01-01T11:00:20+00:00",
        3: "2026-01-01T11:00:30+00:00",
        4: "2026-01-01T11:00:40+00:00",
    }
    images = {}
    for shard, when in commits.items():
        marker = json.loads(store.get_bytes(marker_key(shard)))
        marker["committed_at"] = when
        store.put_bytes(marker_key(shard), json.dumps(marker).encode())
        images[shard] = marker["summary"]["kept"] + marker["summary"]["rejected"]
    pool = "2026-01-01 10:00:05,000 INFO stylegen.driver: pool: 2 actors x 1 GPU (cluster GPUs: 2)\n"
    store.put_bytes("logs/run-20260101T100000000000Z.log", pool.encode())
    store.put_bytes(
        "logs/run-20260101T110000000000Z.log", b"(its pool line is not read: summary.json has it)\n"
    )
    store.put_bytes("logs/run-20260101T120000000000Z.log", b"nothing to do\n")
    latest = {"log_uri": store.url("logs/run-20260101T110000000000Z.log"), "elapsed_s": 55.0, "actors": 3,
              "gpus_per_actor": 0.5}  # fmt: skip
    store.put_bytes("summary.json", json.dumps(latest).encode())

    text = Path(write_report(built.uri)).read_text()
    rows = re.findall(r'<tr data-run="(\d)"><td>([^<]+)</td>(.*?)</tr>', section(text, "runs"))
    assert [(number, started) for number, started, _ in rows] == [
        ("1", f"{first[:10]} {first[11:19]} UTC"),
        ("2", f"{second[:10]} {second[11:19]} UTC"),
    ]
    expected = [
        (2, images[0] + images[1], 60.0, "2 x 1 GPU"),  # from its start to its last commit
        (3, images[2] + images[3] + images[4], 55.0, "3 x 0.5 GPU"),  # the summary's wall time
    ]
    for (_, _, cells), (shards, count, seconds, actors) in zip(rows, expected, strict=True):
        assert re.search(rf'data-field="shards">{shards}<', cells)
        assert re.search(rf'data-field="images">{count}<', cells)
        rate = float(re.search(r'data-field="images_per_s" data-value="([^"]+)"', cells).group(1))
        assert rate == pytest.approx(count / seconds) and f"{seconds:.1f} s" in cells and actors in cells
    assert "1 run(s) committed nothing" in text


def test_each_run_shows_the_pool_run_json_records_for_it_not_its_log_line(tmp_path):
    """Every run records its pool in run.json's `runs`: the report reads it there, also for runs before
    the latest and whatever their logs say (the first log's stale line, the second's none)."""
    from pipeline.storage.layout import marker_key

    built = build_output(tmp_path, rows=24, shard_size=5)  # 5 shards
    store = built.store
    commits = {shard: "2026-01-01T10:00:30+00:00" for shard in (0, 1)}
    commits |= {shard: "2026-01-01T11:00:30+00:00" for shard in (2, 3, 4)}
    for shard, when in commits.items():
        marker = json.loads(store.get_bytes(marker_key(shard)))
        marker["committed_at"] = when
        store.put_bytes(marker_key(shard), json.dumps(marker).encode())
    first, second = "logs/run-20260101T100000000000Z.log", "logs/run-20260101T110000000000Z.log"
    stale = "2026-01-01 10:00:05,000 INFO stylegen.driver: pool: 2 actors x 1 GPU (cluster GPUs: 2)\n"
    store.put_bytes(first, stale.encode())
    store.put_bytes(second, b"a log without a pool line\n")
    record = json.loads(store.get_bytes("run.json"))
    record["runs"] = [
        {"log": first, "actors": 4, "gpus_per_actor": 0.25},
        {"log": second, "actors": 3, "gpus_per_actor": 0.5},
    ]
    store.put_bytes("run.json", json.dumps(record).encode())
    assert not store.exists("summary.json")  # no summary: each run's pool comes from run.json alone

    text = Path(write_report(built.uri)).read_text()
    rows = re.findall(r'<tr data-run="(\d)"><td>[^<]+</td>(.*?)</tr>', section(text, "runs"))
    assert [number for number, _ in rows] == ["1", "2"]
    assert "4 x 0.25 GPU" in rows[0][1] and "2 x 1 GPU" not in rows[0][1]
    assert "3 x 0.5 GPU" in rows[1][1]


def test_style_table_is_capped_with_a_count_of_the_rest(output):
    from pipeline.report.data import gather
    from pipeline.report.page import _style_table

    built, _ = output
    data = gather(built.store)
    styles = sorted(frame_of(built.uri)["style"].unique())
    table = _style_table(data, limit=2)
    assert [html.unescape(s) for s in re.findall(r'<tr data-style="([^"]*)">', table)] == styles[:2]
    assert f"{len(styles) - 2} more styles not listed." in table
