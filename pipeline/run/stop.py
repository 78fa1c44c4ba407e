"""Graceful stop of `stylegen run` on SIGTERM (Kubernetes eviction, spot reclaim) and SIGINT (Ctrl-C).

The first signal asks the run to stop: while shards are being scheduled the scheduler stops handing
them out and lets commits already in progress finish (`execution.drain_s`); before that (planning) the
run stops on the spot. Either way the log is flushed and uploaded and the command exits 143 (SIGTERM) /
130 (SIGINT) with one line saying what was committed. A second signal exits at once.

`ray.init` installs its own SIGTERM handlers in the driver (Python ones that exit mid-start with status
15 or 1, and a native one that prints a `*** SIGTERM received` crash dump). While Ray starts, `kept()`
keeps ours in place (Python's are not installed) and a signal only asks, so Ray is never left half
started; `install()` afterwards replaces the native one, and the run stops as soon as Ray is up.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Keep our handlers (and the stop request, not an exception) while something that installs its
        own SIGTERM / SIGINT handlers runs (ray.init): its calls to signal.signal for them are ignored."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original, interruptible = signal.signal, self.interruptible

        def keep_ours(signum, handler):
            return signal.getsignal(signum) if signum in SIGNALS else original(signum, handler)

        signal.signal, self.interruptible = keep_ours, False
        try:
            yield
        finally:
            signal.signal, self.interruptible = original, interruptible
            self.install()  # over any handler installed without signal.signal (Ray's native one)

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
