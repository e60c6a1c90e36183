"""Small, fast readers of /proc.

The exporter walks every child of every postmaster on each scrape; with a thousand backends psutil's
object-per-process layer costs several times more than reading the three files we need directly, so
this module reads /proc itself. Every reader returns None for a process that vanished meanwhile.
"""

from __future__ import annotations

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


def read_file(path: str, size: int = 4096) -> bytes | None:
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
    utime_ticks: int  # clock ticks (SC_CLK_TCK a second): integers, so sums of them never drift
    stime_ticks: int
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
    data = read_file(f"{PROC}/{pid}/stat")
    return parse_stat(pid, data) if data else None


def parse_stat(pid: int, data: bytes) -> ProcStat | None:
    """Parse stat's text (the command name may hold spaces and parentheses, so split after the last ')')."""
    rest = data[data.rfind(b")") + 2 :].split()
    if len(rest) < 20:
        return None
    return ProcStat(
        pid=pid,
        state=rest[0].decode(),
        ppid=int(rest[1]),
        utime_ticks=int(rest[11]),
        stime_ticks=int(rest[12]),
        start_ticks=int(rest[19]),
    )


def read_cmdline(pid: int) -> str | None:
    """The process title: PostgreSQL overwrites argv, padding with NULs or spaces, which we trim."""
    data = read_file(f"{PROC}/{pid}/cmdline")
    if data is None:
        return None
    return data.replace(b"\0", b" ").decode(errors="replace").strip()


@cache
def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


_swap_checked = [0.0, False]
SWAP_CHECK_SECONDS = 60.0


def host_has_swap() -> bool:
    """Whether any swap is configured (re-read once a minute); without swap VmSwap is 0 for every process."""
    now = time.monotonic()
    if now - _swap_checked[0] > SWAP_CHECK_SECONDS:
        data = read_file(f"{PROC}/swaps") or b""
        _swap_checked[:] = [now, len(data.strip().split(b"\n")) > 1]
    return bool(_swap_checked[1])


def parse_statm(data: bytes) -> tuple[int, int] | None:
    """(anon, shared) resident bytes from /proc/PID/statm; None for a process without memory (a zombie).

    statm's resident = anon + file + shmem pages and its shared = file + shmem pages, exactly the
    kernel's RssAnon and RssFile+RssShmem, at a fraction of the cost of parsing status (and no smaps
    walk, which costs seconds on big hosts). shared_buffers pages count in every backend's "shared".
    """
    fields = data.split()
    if len(fields) < 3 or fields[0] == b"0":
        return None
    page = page_size()
    resident, shared = int(fields[1]) * page, int(fields[2]) * page
    return resident - shared, shared


def read_swap(pid: int) -> int:
    """VmSwap of PID in bytes (0 when gone)."""
    status = read_file(f"{PROC}/{pid}/status", 8192) or b""
    start = status.find(b"VmSwap:")
    return int(status[start + 7 :].split(None, 1)[0]) * 1024 if start >= 0 else 0


def children(pid: int) -> list[int]:
    """Direct children of PID: /proc/PID/task/*/children when the kernel has it, else a scan of /proc."""
    try:
        out: list[int] = []
        for tid in os.listdir(f"{PROC}/{pid}/task"):
            out.extend(map(int, _read_all(f"{PROC}/{pid}/task/{tid}/children").split()))
        return out
    except FileNotFoundError:
        if not os.path.exists(f"{PROC}/{pid}"):
            return []
    except (ProcessLookupError, PermissionError):
        return []
    return [p for p in _all_pids() if (st := read_stat(p)) is not None and st.ppid == pid]


def _read_all(path: str) -> bytes:
    """A whole /proc file of unknown size in raw reads (a thousand children print about 6 KB); OSError if
    it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def read_link(pid: int, name: str) -> str | None:
    """readlink /proc/PID/{exe,cwd}; None when gone or not permitted (another user's process)."""
    try:
        return os.readlink(f"{PROC}/{pid}/{name}")
    except OSError:
        return None


def owner_uid(pid: int) -> int | None:
    """The effective uid of PID (the owner of /proc/PID), readable for any process; None when gone."""
    try:
        return os.stat(f"{PROC}/{pid}").st_uid
    except OSError:
        return None


def pids_in_directory(path: str) -> list[int]:
    """Every process whose working directory is PATH (realpath): a data directory's postgres processes."""
    target = os.path.realpath(path)
    out = []
    for pid in _all_pids():
        cwd = read_link(pid, "cwd")
        if cwd is not None and os.path.realpath(cwd.removesuffix(" (deleted)")) == target:
            out.append(pid)
    return out
