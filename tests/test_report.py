"""`stylegen report`: numbers equal to counts computed independently from the shard parquets, the run's
thresholds on the histograms, only inline data: images, the gallery's choice, throughput, S3, and a
real headless Chromium that renders the page with every image loaded."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import subprocess
import tarfile
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from output_fixtures import build_output
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.report import write_report
from pipeline.report.charts import throughput_svg
from pipeline.report.data import throughput
from pipeline.select import Selection, select_output
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
        self.tiles: list[dict] = []
        self.styles: list[list[dict]] = []
        self.tags: Counter = Counter()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] += 1
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "style" in classes:
            self.styles.append([])
        if tag == "div" and "tile" in classes:
            tile = {"uid": attrs["data-uid"], "status": classes[1], "images": []}
            self.tiles.append(tile)
            self.styles[-1].append(tile)
        if tag == "img":
            self.images.append(attrs)
            alt = attrs.get("alt", "")
            if self.tiles and (alt.endswith(f"sample {self.tiles[-1]['uid']}") or alt == "content image"):
                self.tiles[-1]["images"].append(attrs)


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
