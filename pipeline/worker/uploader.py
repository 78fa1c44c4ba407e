"""The worker's background uploads: a bounded queue of finished shards and the one thread that builds
and commits them, so the next shard generates while this one uploads, and a slow store makes
generation wait (the queue is full) instead of piling finished shards up in memory."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Uploader:
    """Runs submitted tasks one at a time, in order, on its own thread."""

    def __init__(self, max_queued: int):
        self._tasks: queue.Queue = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._loop, name="shard-uploader", daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], Any]) -> Future:
        """Queue `task`; blocks while the queue is full (backpressure). The future holds its result or
        the error it raised (handed to whoever waits for the shard)."""
        future: Future = Future()
        self._tasks.put((task, future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            task, future = item
            try:
                future.set_result(task())
            except BaseException as error:  # handed to the shard's caller
                future.set_exception(error)

    def close(self, timeout: float = 60) -> None:
        """Finish the queued tasks (waiting up to `timeout` seconds), then stop the thread."""
        self._tasks.put(None)
        self._thread.join(timeout=timeout)
