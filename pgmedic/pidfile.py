"""postmaster.pid, read line by line as PostgreSQL (10 and later) writes it.

The file is the postmaster's own statement of who it is: pid, data directory, start time, port,
socket directory, listen address, shared memory key and (since 10) its status. pgmedic only ever
reads it; PostgreSQL removes a stale one itself, so pgmedic never deletes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PID_FILE_NAME = "postmaster.pid"
STATUSES = ("starting", "ready", "stopping", "standby")


@dataclass(frozen=True)
class PidFile:
    """The parsed content of postmaster.pid; fields missing from a short file are None."""

    pid: int
    data_directory: str | None = None
    start_time: int | None = None
    port: int | None = None
    socket_directory: str | None = None
    listen_address: str | None = None
    shmem_key: int | None = None
    shmem_id: int | None = None
    status: str | None = None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None and text.strip() else None
    except ValueError:
        return None


def parse_pid_file(text: str) -> PidFile | None:
    """Parse the text of postmaster.pid; None when the first line is not a pid (a file being written)."""
    lines = text.split("\n")
    pid = _int_or_none(lines[0] if lines else None)
    if pid is None or pid <= 0:
        return None

    def line(n: int) -> str | None:
        return lines[n].strip() if len(lines) > n else None

    shm = (line(6) or "").split()
    status = line(7)
    return PidFile(
        pid=pid,
        data_directory=line(1) or None,
        start_time=_int_or_none(line(2)),
        port=_int_or_none(line(3)),
        socket_directory=line(4) or None,
        listen_address=line(5) or None,
        shmem_key=_int_or_none(shm[0]) if shm else None,
        shmem_id=_int_or_none(shm[1]) if len(shm) > 1 else None,
        status=status if status in STATUSES else None,
    )


def read_pid_file(data_directory: str | os.PathLike[str]) -> PidFile | None:
    """Read DATA/postmaster.pid; None when there is none (or it cannot be parsed yet)."""
    try:
        text = (Path(data_directory) / PID_FILE_NAME).read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parse_pid_file(text)
