"""Signals that cannot hit the wrong process: each goes through a pidfd taken when the target was verified.

A pid names a process only until that process exits and is reaped; a pid read from a file or /proc and
signalled later may by then belong to someone else. A pidfd (``pidfd_open``, Linux 5.3+) names one
process for its whole life: a signal sent through it after the process exited fails with ESRCH instead
of reaching the pid's next owner. Every signal pgmedic sends is logged here with pid, data directory and
reason, and returned as a line for the action's steps (which the remediator journals).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from dataclasses import dataclass

from . import procfs

log = logging.getLogger("pgmedic.signals")
SIGNAL_STEP = "signal "  # how a step line that records a signal begins (already logged when sent)


@dataclass
class ProcessHandle:
    """A pidfd on one process whose identity was checked while the pidfd was open."""

    pid: int
    fd: int
    role: str  # "postmaster" or the child's backend type, for the log line
    data_directory: str

    def exited(self) -> bool:
        """True once the process has exited (it may still be an unreaped zombie)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(0))

    def wait_exit(self, timeout: float) -> bool:
        """Wait, bounded, until the process exits; True if it did."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def send(self, sig: signal.Signals, reason: str) -> str:
        """Send SIG through the pidfd; log it and return one line saying what happened."""
        line = f"{SIGNAL_STEP}{sig.name} to {self.role} {self.pid} of {self.data_directory} ({reason})"
        try:
            signal.pidfd_send_signal(self.fd, sig)
        except ProcessLookupError:
            line += ": already exited"
        log.warning("%s", line)
        return line

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def open_handle(
    pid: int, start_ticks: int, role: str, data_directory: str, ppid: int | None = None
) -> ProcessHandle | None:
    """A pidfd on PID, only if PID is still the process that started at START_TICKS (and child of PPID).

    The pidfd is opened first and the process checked afterwards: if the pidfd's process is still alive
    once /proc has been read, what was read belongs to it, so a pid reused before the open is caught.
    """
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    handle = ProcessHandle(pid, fd, role, data_directory)
    stat = procfs.read_stat(pid)
    if stat is None or stat.start_ticks != start_ticks or (ppid is not None and stat.ppid != ppid) or handle.exited():
        handle.close()
        return None
    return handle


def wait_all_exited(handles: list[ProcessHandle], timeout: float) -> bool:
    """Wait, bounded, until every handle's process has exited."""
    deadline = time.monotonic() + timeout
    return all(handle.wait_exit(max(0.0, deadline - time.monotonic())) for handle in handles)
