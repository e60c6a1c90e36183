"""Where an instance keeps its files, and how full those filesystems are: read from the OS, so it
answers while the server is down or refuses connections (a full pg_wal is exactly when SQL cannot).

The data directory, the real location of pg_wal (often a symlink to a filesystem of its own) and of
every tablespace (pg_tblspc/OID symlinks); the WAL PostgreSQL keeps in pg_wal and the segments still
waiting for archive_command (archive_status/*.ready).
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass

# A WAL segment file name: timeline, log and segment, 8 hex digits each.
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


class Holds(enum.StrEnum):
    """What a filesystem holds for the instance (the ``holds`` label)."""

    DATA = "data"
    WAL = "wal"
    TABLESPACE = "tablespace"


@dataclass(frozen=True)
class Place:
    holds: Holds
    path: str  # symlinks resolved: the directory that really receives the writes


@dataclass(frozen=True)
class Usage:
    """One filesystem as statvfs(3) sees it; avail is what an unprivileged writer (PostgreSQL) may still use."""

    size_bytes: int
    avail_bytes: int
    files: int
    files_free: int


@dataclass(frozen=True)
class WalFiles:
    size_bytes: int  # every regular file in pg_wal (segments, .history, .partial), as pg_ls_waldir() counts
    segments: int
    ready_for_archive: int  # archive_status/*.ready: segments archive_command has not yet taken


def places(data_directory: str) -> list[Place]:
    """The data directory, pg_wal's real location and each tablespace's, in that order."""
    found = [Place(Holds.DATA, os.path.realpath(data_directory))]
    found.append(Place(Holds.WAL, os.path.realpath(os.path.join(data_directory, "pg_wal"))))
    tablespaces = os.path.join(data_directory, "pg_tblspc")
    try:
        links = sorted(entry.name for entry in os.scandir(tablespaces))
    except FileNotFoundError:
        links = []
    found += [Place(Holds.TABLESPACE, os.path.realpath(os.path.join(tablespaces, name))) for name in links]
    return found


def usage(path: str) -> Usage:
    st = os.statvfs(path)
    return Usage(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files, st.f_favail)


def wal_files(data_directory: str) -> WalFiles:
    """Sizes from one directory scan: a few dozen entries normally, a few thousand when archiving is stuck."""
    wal = os.path.join(data_directory, "pg_wal")
    size = segments = 0
    with os.scandir(wal) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                size += entry.stat(follow_symlinks=False).st_size
                segments += bool(_SEGMENT.match(entry.name))
    with os.scandir(os.path.join(wal, "archive_status")) as entries:
        ready = sum(1 for entry in entries if entry.name.endswith(".ready"))
    return WalFiles(size, segments, ready)
