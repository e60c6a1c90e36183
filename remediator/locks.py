"""One action at a time per instance, across threads and processes: an flock on STATE/locks/NAME.lock."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pgmedic.store import open_private


@contextmanager
def instance_lock(state_dir: str, name: str, timeout: float, poll: float = 0.1) -> Iterator[bool]:
    """Hold the instance's lock; yields False (not held) if another holder kept it past TIMEOUT."""
    directory = os.path.join(state_dir, "locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = open_private(os.path.join(directory, f"{name}.lock"), os.O_RDWR | os.O_CREAT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(poll)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
