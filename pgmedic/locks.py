"""One action at a time per instance, across threads and processes: an flock on STATE/locks/NAME.lock.

The remediator's workers and the CLI's start and stop take it, so an administrator's `pgmedic stop`
and a remediation never act on one instance at the same time, and the fast path can tell a postmaster
that died during someone's action from one that crashed.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .store import open_private


@contextmanager
def instance_lock(state_dir: str, name: str, timeout: float, poll: float = 0.1) -> Iterator[bool]:
    """Hold the instance's lock; yields False (not held) if another holder kept it past TIMEOUT."""
    fd = _open(state_dir, name)
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


def _open(state_dir: str, name: str) -> int:
    from .journal import ensure_state_dir  # the state directory's rules are the journal's

    ensure_state_dir(state_dir)
    directory = os.path.join(state_dir, "locks")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return open_private(os.path.join(directory, f"{name}.lock"), os.O_RDWR | os.O_CREAT)


def held_elsewhere(state_dir: str, name: str) -> bool:
    """Whether someone (another thread or process) holds the instance's lock right now."""
    fd = _open(state_dir, name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
