"""What the user sees during and after a run: one live bar, a final table, and a per-run log file.

The bar shows shards and images done, images/s, the acceptance rate (kept / scored) and the ETA. It is
drawn only on a terminal; elsewhere (CI, a subprocess) the log file and the final table carry the story.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from manifests.cli_format import make_console

if TYPE_CHECKING:
    from pipeline.driver import RunSummary

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
    ):
        self.console = console or make_console(stderr=True)
        self.total_shards, self.total_images = total_shards, total_images
        self.done_shards, self.committed_images = done_shards, done_images
        self.kept, self.rejected, self.failed_rows = kept, rejected, 0
        self.in_flight: dict[int, int] = {}  # shard id -> images done, for shards not yet committed
        self.shown_images = done_images
        self.started = time.monotonic()
        live = self.console.is_terminal if live is None else live
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
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._refresh()
        self._bar.stop()

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
        ("actors x GPUs each", f"{summary.actors} x {summary.gpus_per_actor:g}"),
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
