"""Small, fast readers of /proc.

The exporter walks every child of every postmaster on each scrape; with a thousand backends psutil's
object-per-process layer costs several times more than reading the three files we need directly, so
this module reads /proc itself. Every reader returns None for a process that vanished meanwhile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

PROC = "/proc"


@cache
def clock_ticks() -> int:
    """Kernel clock ticks per second (USER_HZ), the unit of the times in /proc/PID/stat."""
    return os.sysconf("SC_CLK_TCK")


@cache
def boot_time() -> float:
    """Unix time of the boot, from the btime line of /proc/stat."""
    with open(f"{PROC}/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime line")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that pgmedic uses."""

    pid: int
    state: str  # R, S, D, T (stopped), t, Z (zombie), X, I
    ppid: int
    utime_seconds: float
    stime_seconds: float
    start_ticks: int  # since boot; with the pid it identifies one process for its whole life

    @property
    def start_time(self) -> float:
        """Unix time the process started."""
        return boot_time() + self.start_ticks / clock_ticks()

    @property
    def is_zombie(self) -> bool:
        return self.state in ("Z", "X")

    @property
    def is_stopped(self) -> bool:
        return self.state in ("T", "t")


def read_stat(pid: int) -> ProcStat | None:
    """Parse /proc/PID/stat (the command name may hold spaces and parentheses, so split after the last ')')."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    if len(rest) < 20:
        return None
    ticks = clock_ticks()
    return ProcStat(
        pid=pid,
        state=rest[0].decode(),
        ppid=int(rest[1]),
        utime_seconds=int(rest[11]) / ticks,
        stime_seconds=int(rest[12]) / ticks,
        start_ticks=int(rest[19]),
    )


def read_cmdline(pid: int) -> str | None:
    """The process title: PostgreSQL overwrites argv, padding with NULs or spaces, which we trim."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return data.replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass(frozen=True)
class ProcMemory:
    """Resident memory split as the kernel accounts it, in bytes."""

    anon: int  # private anonymous memory: what this process alone costs
    shared: int  # file-backed and shared memory (shared_buffers pages are counted in every backend)
    swap: int


def read_memory(pid: int) -> ProcMemory | None:
    """RssAnon, RssFile+RssShmem and VmSwap from /proc/PID/status (no smaps walk: that costs seconds)."""
    try:
        with open(f"{PROC}/{pid}/status", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    values: dict[bytes, int] = {}
    for line in data.split(b"\n"):
        if line.startswith((b"RssAnon:", b"RssFile:", b"RssShmem:", b"VmSwap:")):
            key, _, rest = line.partition(b":")
            values[key] = int(rest.split()[0]) * 1024
    return ProcMemory(
        anon=values.get(b"RssAnon", 0),
        shared=values.get(b"RssFile", 0) + values.get(b"RssShmem", 0),
        swap=values.get(b"VmSwap", 0),
    )


def children(pid: int) -> list[int]:
    """Direct children of PID: /proc/PID/task/*/children when the kernel has it, else a scan of /proc."""
    try:
        out: list[int] = []
        for tid in os.listdir(f"{PROC}/{pid}/task"):
            with open(f"{PROC}/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        return out
    except FileNotFoundError:
        if not os.path.exists(f"{PROC}/{pid}"):
            return []
    except (ProcessLookupError, PermissionError):
        return []
    return [p for p in _all_pids() if (st := read_stat(p)) is not None and st.ppid == pid]


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def read_link(pid: int, name: str) -> str | None:
    """readlink /proc/PID/{exe,cwd}; None when gone or not permitted (another user's process)."""
    try:
        return os.readlink(f"{PROC}/{pid}/{name}")
    except OSError:
        return None
