"""Make pgmedic the child subreaper of the servers it starts, and reap them at once when they die.

``pg_ctl start`` leaves the postmaster orphaned, so it is normally re-parented to init. When init
reaps slowly (1-2 s seen on some hosts) a killed postmaster stays a zombie, ``kill -0`` still
succeeds on it, and PostgreSQL refuses to start again until it is gone. As child subreaper
(PR_SET_CHILD_SUBREAPER, Linux 3.4+) the remediator adopts those orphans and reaps them itself,
within a fraction of a second. Only zombies that no ``subprocess`` call is waiting for are reaped,
so no command's exit status is ever stolen.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading

from . import procfs
from .runner import is_spawned

PR_SET_CHILD_SUBREAPER = 36
log = logging.getLogger(__name__)


def become_subreaper() -> bool:
    """Ask the kernel to re-parent our orphaned descendants to us; False where that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return True


def reap_adopted() -> int:
    """Reap every zombie child of ours that no subprocess call is waiting for; returns how many."""
    reaped = 0
    me = os.getpid()
    for pid in procfs.children(me):
        stat = procfs.read_stat(pid)
        if stat is None or not stat.is_zombie or stat.ppid != me or is_spawned(pid):
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
    return reaped


def start_reaper(stop: threading.Event, interval: float = 0.2) -> threading.Thread:
    """A daemon thread that reaps adopted zombies every INTERVAL seconds until STOP is set."""

    def loop() -> None:
        while not stop.wait(interval):
            try:
                reap_adopted()
            except Exception:  # never let the reaper die
                log.exception("reaper failed")

    thread = threading.Thread(target=loop, name="pgmedic-reaper", daemon=True)
    thread.start()
    return thread
