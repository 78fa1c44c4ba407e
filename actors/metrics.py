"""A run's live metrics through Ray's metrics API, so the Ray dashboard, Prometheus and Grafana show it.

The driver records them as results come back (never the actors: a lost or duplicate attempt must not be
counted), tagged with the run's output. Ray exports each as `ray_<name>` (counters with `_total`,
histograms with `_bucket` / `_sum` / `_count`) on the metrics port of the driver's node, which Ray's
Prometheus service discovery already scrapes. `infra/grafana-dashboard.json` charts them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pipeline.worker.result import ShardResult

log = logging.getLogger("stylegen.driver")


class MetricSpec(NamedTuple):
    name: str
    kind: str  # counter | gauge | histogram
    description: str


SECONDS_PER_IMAGE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]
COMMIT_SECONDS_BOUNDARIES = [0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]

METRICS = (
    MetricSpec("stylegen_images_generated", "counter", "Images the generator produced (kept + rejected)"),
    MetricSpec("stylegen_images_kept", "counter", "Rows kept after scoring and filtering"),
    MetricSpec("stylegen_images_rejected", "counter", "Rows rejected by the filters"),
    MetricSpec("stylegen_images_failed", "counter", "Rows that failed (bad input, generator/scorer error)"),
    MetricSpec("stylegen_shards_committed", "counter", "Shards committed (failed-shard records too)"),
    MetricSpec("stylegen_seconds_per_image", "histogram", "Generation seconds per image, per shard"),
    MetricSpec("stylegen_commit_seconds", "histogram", "Seconds to build and commit a shard's files"),
    MetricSpec("stylegen_actors_ready", "gauge", "Generator actors ready for work"),
    MetricSpec("stylegen_actors_pending", "gauge", "Actors waiting for a GPU, loading or restarting"),
)


def exported_names() -> set[str]:
    """Every series name Prometheus sees for METRICS (what a dashboard may query)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {f"ray_{spec.name}{suffix}" for spec in METRICS for suffix in suffixes[spec.kind]}


class RunMetrics:
    """The metrics of one run; call from the driver process after Ray is connected."""

    def __init__(self, output: str):
        self._tags = {"output": tag_value(output)}
        try:
            self._metrics = self._make()
        except Exception as error:  # metrics are for watching a run, never a reason for it to fail
            log.warning(
                "Ray metrics unavailable (%s: %s); the run goes on without them", type(error).__name__, error
            )
            self._metrics = {}

    def _make(self) -> dict:
        from ray.util.metrics import Counter, Gauge, Histogram

        made = {}
        for spec in METRICS:
            if spec.kind == "counter":
                made[spec.name] = Counter(spec.name, description=spec.description, tag_keys=("output",))
            elif spec.kind == "gauge":
                made[spec.name] = Gauge(spec.name, description=spec.description, tag_keys=("output",))
            else:
                boundaries = (
                    SECONDS_PER_IMAGE_BOUNDARIES
                    if spec.name == "stylegen_seconds_per_image"
                    else COMMIT_SECONDS_BOUNDARIES
                )
                made[spec.name] = Histogram(
                    spec.name, description=spec.description, boundaries=boundaries, tag_keys=("output",)
                )
        return made

    def _inc(self, name: str, value: float) -> None:
        if value > 0 and name in self._metrics:  # Ray refuses increments of 0
            self._record(self._metrics[name].inc, value)

    def _record(self, method, value: float) -> None:
        try:
            method(value, tags=self._tags)
        except Exception as error:  # metrics are for watching a run, never a reason for it to fail
            log.warning("a Ray metric was not recorded (%s: %s)", type(error).__name__, error)

    def shard_committed(self, result: ShardResult) -> None:
        """A result handed back by a GeneratorActor (pipeline.worker.result.ShardResult)."""
        self._inc("stylegen_images_generated", result.kept + result.rejected)
        self._inc("stylegen_images_kept", result.kept)
        self._inc("stylegen_images_rejected", result.rejected)
        self._inc("stylegen_images_failed", result.failed)
        self._inc("stylegen_shards_committed", 1)
        generated = result.kept + result.rejected
        if not self._metrics:
            return
        if generated and result.generate_s:
            self._record(self._metrics["stylegen_seconds_per_image"].observe, result.generate_s / generated)
        if result.commit_s:
            self._record(self._metrics["stylegen_commit_seconds"].observe, result.commit_s)

    def shard_failed(self, rows: int) -> None:
        """A shard that failed every attempt, recorded with all its rows failed."""
        self._inc("stylegen_images_failed", rows)
        self._inc("stylegen_shards_committed", 1)

    def actors(self, ready: int, pending: int) -> None:
        if not self._metrics:
            return
        self._record(self._metrics["stylegen_actors_ready"].set, ready)
        self._record(self._metrics["stylegen_actors_pending"].set, pending)


def tag_value(text: str) -> str:
    """`text` as a tag value every exporter takes: printable ASCII, anything else percent-encoded
    (an output path "ünïcødé 出力" made Ray's metric record raise UnicodeEncodeError)."""
    from urllib.parse import quote

    return quote(text, safe="/:@!$&'()*+,;=-._~ ")
