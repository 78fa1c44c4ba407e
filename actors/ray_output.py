"""Ray's own output goes to the run log; the console shows only what stylegen means to say.

Ray writes to this process's file descriptors 1 and 2 from places stylegen cannot configure one by one:
its Python loggers (the token-authentication notice of every `ray.init`), the errors its listener thread
relays from the cluster (`(raylet) Task ... failed`, with colour codes even when piped), and its C++ core
worker (a GCS connection's retries). While Ray runs, both descriptors point at the run log; a rich
Console writing to the terminal keeps it through a copy of the original descriptor.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

STANDARD_FDS = (1, 2)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


@contextlib.contextmanager
def ray_output_to(log_path: Path, console: Console) -> Iterator[None]:
    """Send fds 1 and 2 to `log_path` (appending) for the duration; `console` keeps its terminal."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in STANDARD_FDS}
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    original_file = console._file  # None means "follow sys.stdout/sys.stderr"; restored as it was
    own_fd = _fileno(console.file)
    replacement = None
    if own_fd in saved:  # a console on fd 1 or 2 (a terminal or a pipe) writes to a copy of it
        replacement = os.fdopen(os.dup(saved[own_fd]), "w", buffering=1, encoding="utf-8", errors="replace")
        console.file = replacement
    try:
        for fd in STANDARD_FDS:
            os.dup2(log_fd, fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd in STANDARD_FDS:
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        os.close(log_fd)
        if replacement is not None:
            console.file = original_file
            replacement.close()
