"""Small, fast readers of /proc.

The exporter walks every child of every postmaster on each scrape; with a thousand backends psutil's
object-per-process layer costs several times more than reading the three files we need directly, so
this module reads /proc itself. Every reader returns None for a process that vanished meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import time
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


def _read(path: str, size: int = 4096) -> bytes | None:
    """One small /proc file with raw os calls (several times cheaper than open() for thousands of files)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # vanished, or not ours to read
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(slots=True)
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
    """/proc/PID/stat, parsed; None when the process is gone."""
    data = _read(f"{PROC}/{pid}/stat")
    return parse_stat(pid, data) if data else None


def parse_stat(pid: int, data: bytes) -> ProcStat | None:
    """Parse stat's text (the command name may hold spaces and parentheses, so split after the last ')')."""
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
    data = _read(f"{PROC}/{pid}/cmdline")
    if data is None:
        return None
    return data.replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass(slots=True)
class ProcMemory:
    """Resident memory split as the kernel accounts it, in bytes."""

    anon: int  # private anonymous memory: what this process alone costs
    shared: int  # file-backed and shared memory (shared_buffers pages are counted in every backend)
    swap: int


@cache
def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


_swap_checked = [0.0, False]
SWAP_CHECK_SECONDS = 60.0


def host_has_swap() -> bool:
    """Whether any swap is configured (re-read once a minute); without swap VmSwap is 0 for every process."""
    now = time.monotonic()
    if now - _swap_checked[0] > SWAP_CHECK_SECONDS:
        data = _read(f"{PROC}/swaps") or b""
        _swap_checked[:] = [now, len(data.strip().split(b"\n")) > 1]
    return bool(_swap_checked[1])


def read_memory(pid: int) -> ProcMemory | None:
    """Anon and shared resident memory from /proc/PID/statm; swap from /proc/PID/status only if the host swaps.

    statm's resident = anon + file + shmem pages and its shared = file + shmem pages, exactly the
    kernel's RssAnon and RssFile+RssShmem, at half the cost of parsing status (and no smaps walk,
    which costs seconds on big hosts).
    """
    data = _read(f"{PROC}/{pid}/statm", 256)
    return parse_statm(pid, data) if data else None


def parse_statm(pid: int, data: bytes) -> ProcMemory:
    fields = data.split()
    page = page_size()
    resident, shared = int(fields[1]) * page, int(fields[2]) * page
    return ProcMemory(anon=resident - shared, shared=shared, swap=read_swap(pid) if host_has_swap() else 0)


def read_swap(pid: int) -> int:
    """VmSwap of PID in bytes (0 when gone)."""
    status = _read(f"{PROC}/{pid}/status", 8192) or b""
    start = status.find(b"VmSwap:")
    return int(status[start + 7 :].split(None, 1)[0]) * 1024 if start >= 0 else 0


class ProcHandle:
    """Open /proc/PID/stat and /proc/PID/statm once and re-read them with pread at every scrape.

    Re-reading an open procfs file regenerates it without the path lookup of a fresh open: half the
    cost for thousands of backends. The descriptors stay bound to that one process: once it exits
    they fail with ESRCH, so a reused pid is never mistaken for the old process.
    """

    __slots__ = ("pid", "stat_fd", "statm_fd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stat_fd = os.open(f"{PROC}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.statm_fd = os.open(f"{PROC}/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.stat_fd)
            raise

    def read(self) -> tuple[ProcStat, ProcMemory] | None:
        """Fresh stat and memory; None once the process is gone (then close the handle)."""
        try:
            stat_data = os.pread(self.stat_fd, 4096, 0)
            statm_data = os.pread(self.statm_fd, 256, 0)
        except OSError:
            return None
        stat = parse_stat(self.pid, stat_data) if stat_data else None
        if stat is None or not statm_data:
            return None
        return stat, parse_statm(self.pid, statm_data)

    def close(self) -> None:
        for fd in (self.stat_fd, self.statm_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


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
