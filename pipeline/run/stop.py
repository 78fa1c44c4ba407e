"""Graceful stop of `stylegen run` on SIGTERM (Kubernetes eviction, spot reclaim) and SIGINT (Ctrl-C).

The first signal asks the run to stop: while shards are being scheduled the scheduler stops handing
them out and lets commits already in progress finish (`execution.drain_s`); before that (planning) the
run stops on the spot. Either way the log is flushed and uploaded and the command exits 143 (SIGTERM) /
130 (SIGINT) with one line saying what was committed. A second signal exits at once.

`ray.init` installs its own SIGTERM handlers in the driver (a Python one that exits, and a native one
that prints a `*** SIGTERM received` crash dump); `install()` is called again after Ray starts so ours
replace both.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from pipeline.errors import UserError

log = logging.getLogger("stylegen.driver")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(UserError):
    """The run stopped on a signal; a rerun of the same command resumes. `exit_code` is 128 + signal."""

    label = "stylegen"  # not an error: `stylegen: stopped by SIGTERM: ...`

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into a stop request (main thread only; elsewhere it
    does nothing and signals keep their usual meaning)."""

    def __init__(self):
        self.signal_name: str | None = None  # the first signal received
        self.exit_code = 0
        self.interruptible = True  # False while the scheduler drains on its own (it polls `requested`)
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def install(self) -> None:
        """(Re)install the handlers; call again after anything that installs its own (ray.init)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            sys.stderr.write(f"stylegen: second {name}: exiting now; rerun the same command to resume\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signal_name, self.exit_code = name, 128 + signum
        log.warning("%s received: stopping (no new shards; commits in progress may finish)", name)
        if self.interruptible:
            raise RunStopped(
                f"stopped by {name} before any shard ran; rerun the same command to resume", self.exit_code
            )
