"""The run log of a remote output (s3://) reaches the store every `interval_s` seconds while the run
goes on, not only at its end: a week-long job stays readable, and a driver lost to a node failure still
leaves its log behind. The driver uploads the final version itself after `stop()`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger("stylegen.driver")


class PeriodicLogUpload:
    def __init__(self, store, key: str, path: Path, handler: logging.Handler, interval_s: float):
        self._store, self._key, self._path, self._handler = store, key, path, handler
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name="stylegen-log-upload", daemon=True)

    def __enter__(self) -> PeriodicLogUpload:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.upload_once()

    def upload_once(self) -> None:
        try:
            self._handler.flush()
            self._store.put_file(self._key, self._path)
        except Exception as error:  # a failed upload is retried next time; it never stops the run
            if not self._warned:
                self._warned = True
                log.warning(
                    "the run log could not be uploaded (will retry): %s: %s", type(error).__name__, error
                )

    def stop(self) -> None:
        """No more periodic uploads (waits for one in progress, so it cannot overwrite the final one)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
