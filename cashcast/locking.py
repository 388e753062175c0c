"""One nightly run per workspace at a time: a second one waits (up to a timeout) or refuses."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cashcast.workspace import Workspace


class WorkspaceBusyError(RuntimeError):
    """Another run holds the workspace lock."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Wait for an exclusive OS lock on `path` and hold it for the block; the OS frees it if the holder dies."""
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


_HELD: set[Path] = set()  # workspace locks this process holds: taking one again inside is a no-op


@contextmanager
def workspace_lock(ws: Workspace, timeout: float = 0.0, poll: float = 0.5) -> Iterator[None]:
    """Hold an exclusive OS lock on the workspace; the OS frees it if the holder dies.

    Re-entrant within a process: the command line holds it across the whole nightly flow (two runs started
    together both passed a check made before Prefect's start-up, and the loser failed with a traceback), and
    the flow, which also runs on its own under `serve`, takes it again for itself. Re-entrant for the whole
    process, not per thread: only the nightly run takes it, once per process."""
    ws.ensure()
    if ws.lock_file in _HELD:
        yield
        return
    handle = open(ws.lock_file, "a+")  # noqa: SIM115 - held open for the whole run
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another run"
                    raise WorkspaceBusyError(
                        f"{ws.home}: workspace is busy ({holder}); refusing to run two nightly runs at once"
                    ) from None
                time.sleep(poll)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        _HELD.add(ws.lock_file)
        try:
            yield
        finally:
            _HELD.discard(ws.lock_file)
    finally:
        handle.close()
