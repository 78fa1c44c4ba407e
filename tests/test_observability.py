"""A run seen from outside: headless key=value progress lines, the run log uploaded during the run, Ray
metrics on the node's Prometheus endpoint equal to the run's counts, and the Grafana dashboard charting
only metrics we export."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console
from run_fixtures import build_manifest, fake_config

from actors.metrics import METRICS, exported_names
from pipeline.run.job import run_job
from pipeline.run.logs import PeriodicLogUpload
from pipeline.run.progress import close_run_log, open_run_log
from pipeline.storage import open_store

REPO = Path(__file__).resolve().parents[1]
SERIES = re.compile(r"^(ray_stylegen_\w+)\{([^}]*)\} ([0-9.e+-]+)$")


def dashboard_metrics() -> list[tuple[str, set[str]]]:
    """(panel title, the ray_stylegen_* series its queries use) for every panel of the dashboard."""
    dashboard = json.loads((REPO / "infra" / "grafana-dashboard.json").read_text())
    return [
        (
            panel["title"],
            {name for target in panel["targets"] for name in re.findall(r"ray_stylegen_\w+", target["expr"])},
        )
        for panel in dashboard["panels"]
    ]


def test_the_grafana_dashboard_charts_every_metric_and_only_exported_ones():
    panels = dashboard_metrics()
    exported = exported_names()
    for title, names in panels:
        assert names, f"panel {title!r} queries no stylegen metric"
        assert names <= exported, (
            f"panel {title!r} queries {sorted(names - exported)}, which stylegen never exports"
        )
    charted = {name for _, names in panels for name in names}
    for spec in METRICS:
        assert any(name.startswith(f"ray_{spec.name}") for name in charted), f"{spec.name} is on no panel"


def scrape(port: int, output: str) -> dict[str, float]:
    """This run's stylegen series on a node's metrics endpoint: name{le=...} -> value (summed over the
    other labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = SERIES.match(line)
        if not match or f'output="{output}"' not in match[2]:
            continue
        le = re.search(r'le="([^"]+)"', match[2])
        key = f"{match[1]}{{le={le[1]}}}" if le else match[1]
        values[key] = values.get(key, 0.0) + float(match[3])
    return values


@pytest.mark.slow
def test_headless_progress_lines_and_ray_metrics_match_the_run(ray_cluster, tmp_path):
    ray = ray_cluster
    manifest = build_manifest(tmp_path, rows=24)  # 4 shards; prompts "a horse #0", "#6", ... fail
    output = tmp_path / "out"
    config = fake_config(
        **{
            "generator.fake.latency_s": 0.1,
            "generator.fake.fail_prompts": ["a horse"],
            "execution.progress_interval_s": 0.5,
        }
    )
    stream = io.StringIO()
    console = Console(file=stream, width=80)  # not a terminal: key=value lines, never wrapped
    summary = run_job(str(manifest), str(output), config, actors=2, console=console)
    assert (summary.kept, summary.failed, summary.shards_committed) == (20, 4, 4)

    # progress lines: periodic and a last one, each parseable key=value
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("stylegen progress ")]
    assert len(lines) >= 2, stream.getvalue()
    fields = [dict(pair.split("=", 1) for pair in line.split()[2:]) for line in lines]
    keys = ["shards", "images", "images_per_s", "acceptance", "failed_rows", "actors_ready", "actors_pending"]
    assert all(list(f)[:7] == keys and {"elapsed_s", "eta_s"} <= set(f) for f in fields)
    last = fields[-1]
    assert (last["shards"], last["images"], last["failed_rows"], last["acceptance"], last["eta_s"]) == (
        "4/4",
        "24/24",
        "4",
        "1.000",
        "0",
    )
    assert float(last["images_per_s"]) > 0 and "2" in {f["actors_ready"] for f in fields}

    # the metrics on the driver node's Prometheus endpoint equal the run's counts (Ray exports them
    # periodically, every second on the tests' Ray: poll until they arrive)
    driver_node = ray.get_runtime_context().get_node_id()
    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["NodeID"] == driver_node)
    expected = {
        "ray_stylegen_images_generated_total": 20.0,
        "ray_stylegen_images_kept_total": 20.0,
        "ray_stylegen_images_failed_total": 4.0,
        "ray_stylegen_shards_committed_total": 4.0,
        "ray_stylegen_seconds_per_image_count": 4.0,
        "ray_stylegen_commit_seconds_count": 4.0,
        "ray_stylegen_actors_ready": 0.0,  # the pool is gone once the run ended
        "ray_stylegen_actors_pending": 0.0,
    }
    deadline = time.monotonic() + 60
    while True:
        values = scrape(port, str(output))
        if all(values.get(name) == value for name, value in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {name: values.get(name) for name in expected} == expected
    assert "ray_stylegen_images_rejected_total" not in values  # nothing rejected: never incremented
    assert values["ray_stylegen_seconds_per_image_bucket{le=+Inf}"] == 4.0
    # everything the run exported is a documented metric (the dashboard test checks its queries against these)
    assert {re.sub(r"\{le=.*\}", "", name) for name in values} <= exported_names()


def test_the_run_log_is_uploaded_while_the_run_goes_on(tmp_path):
    store = open_store(tmp_path / "store")
    path = tmp_path / "run.log"
    handler = open_run_log(path)
    uploads = PeriodicLogUpload(store, "logs/run.log", path, handler, interval_s=0.05)
    try:
        with uploads:
            logging.getLogger("stylegen.driver").info("first line")
            deadline = time.monotonic() + 10
            while b"first line" not in (
                store.get_bytes("logs/run.log") if store.exists("logs/run.log") else b""
            ):
                assert time.monotonic() < deadline, "the log never reached the store"
                time.sleep(0.02)
            logging.getLogger("stylegen.driver").info("second line")
            while b"second line" not in store.get_bytes("logs/run.log"):
                assert time.monotonic() < deadline, "the log was uploaded only once"
                time.sleep(0.02)
    finally:
        close_run_log(handler)
    assert store.get_bytes("logs/run.log") == path.read_bytes()
