"""What the user sees during and after a run: one live bar, a final table, and a per-run log file.

The bar shows shards and images done, images/s, the acceptance rate (kept / scored) and the ETA. It is
drawn only on a terminal. Elsewhere (a RayJob's logs, `ray job submit`, nohup, CI) one plain
`key=value` line is printed every `interval_s` seconds and at the end, for people and log parsers alike:

    stylegen progress shards=3/20 images=18/120 images_per_s=2.41 acceptance=0.950 failed_rows=0
        actors_ready=2 actors_pending=2 elapsed_s=30 eta_s=42
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from manifests.cli_format import make_console

if TYPE_CHECKING:
    from pipeline.run.summary import RunSummary

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ImagesPerSecond(ProgressColumn):
    """Images finished by this run per wall second (rows committed by earlier runs excluded)."""

    def render(self, task) -> Text:
        fresh = task.completed - task.fields.get("resumed", 0)
        elapsed = task.elapsed or 0.0
        rate = fresh / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.2f} img/s", style="cyan")


class RunProgress:
    """Tracks shard/image counts for the live bar and the log; safe to use with the bar disabled."""

    def __init__(
        self,
        total_shards: int,
        total_images: int,
        *,
        done_shards: int = 0,
        done_images: int = 0,
        kept: int = 0,
        rejected: int = 0,
        console: Console | None = None,
        live: bool | None = None,
        interval_s: float = 30.0,
    ):
        self.console = console or make_console(stderr=True)
        self.total_shards, self.total_images = total_shards, total_images
        self.done_shards, self.committed_images = done_shards, done_images
        self.resumed_images = done_images
        self.kept, self.rejected, self.failed_rows = kept, rejected, 0
        self.in_flight: dict[int, int] = {}  # shard id -> images done, for shards not yet committed
        self.shown_images = done_images
        self.actors_ready = self.actors_pending = 0
        self.started = time.monotonic()
        live = self.console.is_terminal if live is None else live
        # Headless: a line every interval_s from a timer thread (the scheduler loop may block a while).
        self._lines = None if live else _Ticker(interval_s, self.print_line)
        self._bar = Progress(
            TextColumn("[bold]stylegen run"),
            BarColumn(),
            TextColumn("shards {task.fields[shards]}"),
            TextColumn("images {task.completed:.0f}/{task.total:.0f}"),
            _ImagesPerSecond(),
            TextColumn("kept {task.fields[acceptance]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not live,
            transient=False,
            # Ray's writes to sys.stdout/stderr go to the run log (actors/ray_output.py), not the bar.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._bar.add_task(
            "run", total=max(total_images, 1), completed=done_images, resumed=done_images, **self._fields()
        )

    def __enter__(self) -> RunProgress:
        self._bar.start()
        if self._lines is not None:
            self._lines.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._refresh()
        self._bar.stop()
        if self._lines is not None and self._lines.stop():
            self.print_line()  # the last line, once

    def add_shards(self, shards: int, images: int) -> None:
        """The run planned more shards while running (a quota's reseeding)."""
        self.total_shards += shards
        self.total_images += images
        self._bar.update(self._task, total=max(self.total_images, 1))

    def actors(self, ready: int, pending: int) -> None:
        self.actors_ready, self.actors_pending = ready, pending

    def line(self) -> str:
        """The headless progress line: `stylegen progress key=value ...`."""
        elapsed = time.monotonic() - self.started
        done = self.shown_images
        fresh = max(done - self.resumed_images, 0)
        rate = fresh / elapsed if elapsed > 0 else 0.0
        scored = self.kept + self.rejected
        remaining = self.total_images - done
        eta = "0" if remaining <= 0 else (f"{remaining / rate:.0f}" if rate > 0 else "unknown")
        fields = {
            "shards": f"{self.done_shards}/{self.total_shards}",
            "images": f"{done}/{self.total_images}",
            "images_per_s": f"{rate:.2f}",
            "acceptance": f"{self.kept / scored:.3f}" if scored else "unknown",
            "failed_rows": self.failed_rows,
            "actors_ready": self.actors_ready,
            "actors_pending": self.actors_pending,
            "elapsed_s": f"{elapsed:.0f}",
            "eta_s": eta,
        }
        return "stylegen progress " + " ".join(f"{key}={value}" for key, value in fields.items())

    def print_line(self) -> None:
        self.console.print(self.line(), markup=False, highlight=False, soft_wrap=True)

    def _fields(self) -> dict:
        scored = self.kept + self.rejected
        acceptance = f"{100 * self.kept / scored:.0f}%" if scored else "-"
        return {"shards": f"{self.done_shards}/{self.total_shards}", "acceptance": acceptance}

    def _refresh(self) -> None:
        # Never backwards: a retried shard starts again from 0, and the bar waits until it catches up.
        done = min(self.committed_images + sum(self.in_flight.values()), self.total_images)
        self.shown_images = max(self.shown_images, done)
        self._bar.update(self._task, completed=self.shown_images, **self._fields())

    def shard_done(self, shard_id: int, rows: int, kept: int, rejected: int, failed: int) -> None:
        self.in_flight.pop(shard_id, None)  # counted once: committed now, no longer in flight
        self.done_shards += 1
        self.committed_images += rows
        self.kept, self.rejected, self.failed_rows = (
            self.kept + kept,
            self.rejected + rejected,
            self.failed_rows + failed,
        )
        self._refresh()

    def images_in_flight(self, by_shard: dict[int, int]) -> None:
        self.in_flight = dict(by_shard)
        self._refresh()


class _Ticker:
    """Calls `tick` every `interval_s` seconds on a daemon thread until stopped."""

    def __init__(self, interval_s: float, tick):
        self._interval_s, self._tick = interval_s, tick
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stylegen-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self._tick()

    def stop(self) -> bool:
        """Stop ticking; True the first time (so the caller prints the final line once)."""
        if self._stopped.is_set():
            return False
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        return True


def summary_table(summary: RunSummary) -> Table:
    table = Table(title=f"stylegen run: {summary.output}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right", overflow="fold")  # a long path folds, never cut
    scored = summary.kept + summary.rejected
    rows = [
        ("shards planned", f"{summary.shards_planned}"),
        ("shards committed before this run", f"{summary.shards_resumed}"),
        ("shards committed by this run", f"{summary.shards_committed}"),
        ("shards failed every attempt", f"{summary.shards_failed}"),
        ("rows planned", f"{summary.rows}"),
        ("kept", f"{summary.kept}"),
        ("rejected", f"{summary.rejected}"),
        ("failed", f"{summary.failed}"),
        ("acceptance (kept / scored)", f"{100 * summary.kept / scored:.1f}%" if scored else "-"),
        ("images generated by this run", f"{summary.images_this_run}"),
        ("wall time", f"{summary.elapsed_s:.1f} s"),
        ("images/s", f"{summary.images_per_s:.2f}"),
        (
            "actors requested / peak ready / ready at the end",
            f"{summary.actors} / {summary.actors_peak} / {summary.actors_final}",
        ),
        ("GPUs per actor", f"{summary.gpus_per_actor:g}"),
        ("log", summary.log_uri or "-"),
        ("report", summary.report_uri or "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def open_run_log(path: Path) -> logging.Handler:
    """Send the `stylegen` loggers (driver, pool, worker) to `path` for the rest of the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger("stylegen")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def close_run_log(handler: logging.Handler) -> None:
    logging.getLogger("stylegen").removeHandler(handler)
    handler.close()
