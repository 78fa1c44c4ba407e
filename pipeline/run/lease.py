"""One writer per output: a driver holds a lease on its output while it writes.

The lease is `_lease.json` under the output, created only if absent (the commit point's own primitive:
`If-None-Match: *` on S3, an exclusive create in a folder) and naming its holder (host, pid, a random
token) and since when. A background thread renews it every `ttl_s / 3` seconds after checking it is
still ours; a lease not renewed for `ttl_s` (a killed driver's) lapses and the next driver takes it
over, at once when the holder ran on the same machine and its process is gone. A second driver on a
held output is told in one line who holds it and since when, and exits (or waits, `--wait-for-lease`).
The lease is deleted when the driver ends.

Taking over a lapsed lease deletes it and creates a new one; two drivers taking over the same lapsed
lease at the same moment can both believe they won until the next renewal check, when the loser finds
another holder and stops (`lost`). `stylegen select` and `dedup` hold the lease of their new output (the
CLI passes it to pipeline.dataset.subset). Readers (status, report, select's source) never need it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from pipeline.errors import UserError
from pipeline.storage.layout import LEASE_KEY
from pipeline.storage.objects import ObjectNotFound

log = logging.getLogger("stylegen.driver")


class LeaseHeld(UserError):
    """Another driver holds the output's lease; the message names it and since when."""

    exit_code = 2


class OutputLease:
    def __init__(self, store, ttl_s: float, *, wait_s: float = 0.0, poll_s: float = 2.0):
        self.store, self.ttl_s, self.wait_s, self.poll_s = store, ttl_s, wait_s, poll_s
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.lost = threading.Event()  # set when a renewal finds another holder: stop writing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.since = ""

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease, waiting up to `wait_s` for a held one; LeaseHeld when it stays held."""
        deadline = time.monotonic() + self.wait_s
        while True:
            self.since = _now()
            if self.store.create_if_absent(LEASE_KEY, self._record(self.since)):
                break
            current = self._read()
            if current is None:
                continue  # released between our create and our read: try again at once
            if self._lapsed(current):
                log.warning("lease: taking over the lapsed lease of %s", _who(current))
                self.store.delete([LEASE_KEY])
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"{self.store.uri} is being written by another driver ({_who(current)}, since "
                    f"{(current or {}).get('since', '?')}, renewed {(current or {}).get('renewed', '?')}); "
                    f"wait for it to finish (--wait-for-lease), or stop it; a killed driver's lease lapses "
                    f"{self.ttl_s:g} s after its last renewal"
                )
            time.sleep(self.poll_s)
        log.info("lease: holding %s as %s", self.store.url(LEASE_KEY), _who(self.holder))
        self._thread = threading.Thread(target=self._renew_loop, name="stylegen-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if self._is_ours(self._read()):
                self.store.delete([LEASE_KEY])
        except Exception as error:  # noqa: BLE001 - a lease left behind lapses by itself
            log.warning(
                "lease: not released (%s: %s); it lapses in %g s", type(error).__name__, error, self.ttl_s
            )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                current = self._read()
                if not self._is_ours(current):
                    log.error("lease: %s now holds the output; this driver stops writing", _who(current))
                    self.lost.set()
                    return
                self.store.put_bytes(LEASE_KEY, self._record(self.since))
            except Exception as error:  # noqa: BLE001 - a passing storage fault: try again next turn
                log.warning("lease: renewal failed (%s: %s)", type(error).__name__, error)

    def _record(self, since: str) -> bytes:
        return json.dumps({**self.holder, "since": since, "renewed": _now(), "ttl_s": self.ttl_s}).encode()

    def _read(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.store.get_bytes(LEASE_KEY))
        except ObjectNotFound:
            return None
        except ValueError:  # not ours to read: treat as held, with no renewal time (it lapses by mtime)
            return {}
        return value if isinstance(value, dict) else {}

    def _is_ours(self, current: dict[str, Any] | None) -> bool:
        return current is not None and current.get("token") == self.holder["token"]

    def _lapsed(self, current: dict[str, Any]) -> bool:
        if current.get("host") == self.holder["host"] and not _alive(current.get("pid")):
            return True  # its driver ran on this machine and is gone (killed): no need to wait
        try:
            renewed = datetime.fromisoformat(str(current.get("renewed")))
        except ValueError:
            info = self.store.head(LEASE_KEY)  # an unreadable lease: its age decides
            renewed = info.modified if info is not None else datetime.now(timezone.utc)
        ttl = float(current.get("ttl_s") or self.ttl_s)
        return (datetime.now(timezone.utc) - renewed).total_seconds() > ttl


def _alive(pid: Any) -> bool:
    """Whether process `pid` exists on this machine (a pid we may not signal exists too)."""
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: only its renewal time can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _who(record: dict[str, Any] | None) -> str:
    if not record:
        return "an unknown driver"
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
