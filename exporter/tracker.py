"""Per-instance memory across scrapes: every child of the postmaster, its type, CPU time and memory.

Each live process is tracked by a ``TrackedProcess`` bound to that one process: its /proc files stay
open and are re-read with pread (half the cost of opening them again), and once the process exits
they fail with ESRCH, so a reused pid is never mistaken for the old process. When a process goes,
its last CPU time moves into a retired total, so pg_process_cpu_seconds_total never runs backwards.

Reading /proc/PID/stat costs the kernel four times more than /proc/PID/schedstat, and most backends
of a busy server sit idle between two scrapes. So stat (for user/system time) is re-read only when
schedstat shows the process has run since the last scrape; otherwise its times cannot have changed.
Memory (statm) is re-read then too, and at least every MEMORY_REFRESH scrapes: a sleeping process
allocates nothing, though the kernel may reclaim some of its pages meanwhile.

A thousand idle clients would still cost a thousand reads per scrape, and after an idle gap each read
costs several times what it does back to back (the exporter's CPU then grew with the client count, where
postgres_exporter's does not). So each SQL visit names the client backends that may have run since
its previous scan (pg_stat_activity: not idle, or idle only since then). The walk, which runs while the
visit is on its way, reads the client backends the previous visit named (the likely busy ones) and
those whose MEMORY_REFRESH turn came, and skips the others; ``catch_up`` then reads the skipped ones
this scrape's visit names, before anything is reported. Every other process of the postmaster is read
every scrape, and when the visit names none (SQL down, a state this role may not see) every skipped
backend is read too: the outage view never depends on SQL, and no CPU second shows late.

Which processes are the postmaster's children comes from the kernel's fork and exit events between
listings of /proc/PID/task/PID/children (pgmedic.procevents), since the listing itself visits every
child; a process first seen through an event is taken only if its parent is that postmaster.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict, deque
from operator import attrgetter

from pgmedic import procfs
from pgmedic.procevents import ChildSet, open_events
from pgmedic.titles import classify_title

FDS_PER_PROCESS = 3  # stat, statm, schedstat
# The walk holds the GIL between its preads, and the scrape's SQL thread, woken by the server's answer,
# would wait for most of the walk (a waiting thread forces the GIL over only after
# sys.getswitchinterval(), 5 ms). sched_yield() every YIELD_EVERY processes lets it in at once:
# measured with 1000 backends, the SQL visit then ends as early as with no walk at all.
YIELD_EVERY = 32
SMALL_READ = 256  # statm and schedstat are under 100 bytes; a small buffer stays in Python's fast allocator
MEMORY_REFRESH = 8  # scrapes an idle process's statm may go unread (spread over processes by pid)
CLIENT = "client_backend"  # the only type the SQL hint speaks for
_ANON = attrgetter("anon")
# Scrapes a client backend the scans keep calling idle goes unread: then its turn comes (by pid), for
# what runs without a change of state (a LISTEN notification, a cache invalidation catch-up) and what
# the kernel reclaims. Every read costs about 8 µs of kernel time: a thousand idle clients cost 16 a scrape.
IDLE_REREAD = 64


class ProcessGone(Exception):
    """The tracked process exited (or became a zombie): retire it."""


class TrackedProcess:
    """One child of the postmaster for its whole life: identity, type, and its latest times and memory."""

    __slots__ = (
        "anon",
        "backend_type",
        "idle_scrapes",
        "own",
        "pid",
        "sched",
        "sched_fd",
        "shared",
        "start_ticks",
        "stat_fd",
        "statm",
        "statm_fd",
        "swap",
        "system_ticks",
        "user_ticks",
    )

    def __init__(self, pid: int, keep_open: bool, parent: int | None = None) -> None:
        """Open and read the process's files; raises ProcessGone if it is already gone (or, PARENT given,
        is not that process's child: a pid from fork events may have been reused since)."""
        self.pid = pid
        self.backend_type: str | None = None
        self.own = False  # the exporter's own SQL backend: tracked, but never reported or accounted
        self.idle_scrapes = pid % MEMORY_REFRESH  # staggered: processes re-read statm in different scrapes
        self.stat_fd: int | None = None
        self.statm_fd: int | None = None
        self.sched_fd: int | None = None
        self.sched = b""
        self.statm: bytes | None = b""
        self.anon = self.shared = self.swap = 0
        try:
            if keep_open:
                self._open()
                assert self.stat_fd is not None
                stat = procfs.parse_stat(pid, _pread(self.stat_fd))
            else:
                stat = procfs.read_stat(pid)
            if stat is None or stat.is_zombie or (parent is not None and stat.ppid != parent):
                raise ProcessGone(pid)
            self.start_ticks = stat.start_ticks
            self.user_ticks, self.system_ticks = stat.utime_ticks, stat.stime_ticks
            if self.sched_fd is not None:
                self.sched = _pread(self.sched_fd)  # stat was just read: no need to read it again below
            self.update(
                procfs.read_file(f"{procfs.PROC}/{pid}/statm") if self.statm_fd is None else _pread(self.statm_fd),
                self.sched,
            )
        except BaseException:  # every path out of here without a tracked process closes what was opened
            self.close()
            raise

    def _open(self) -> None:
        """Descriptors of stat, statm and (when the kernel has it) schedstat; ProcessGone if pid is gone."""
        base = f"{procfs.PROC}/{self.pid}/"
        try:
            self.stat_fd = os.open(base + "stat", os.O_RDONLY | os.O_CLOEXEC)
            self.statm_fd = os.open(base + "statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.close()
            raise ProcessGone(self.pid) from None
        with contextlib.suppress(OSError):  # a kernel without CONFIG_SCHED_INFO: stat is then read every time
            self.sched_fd = os.open(base + "schedstat", os.O_RDONLY | os.O_CLOEXEC)

    @property
    def start_time(self) -> float:
        return procfs.boot_time() + self.start_ticks / procfs.clock_ticks()

    def refresh(self, memory: bool = False) -> None:
        """Read what may have changed since the last scrape (MEMORY: statm whether it ran or not);
        ProcessGone (or OSError) once it exited."""
        if self.sched_fd is not None:
            sched = os.pread(self.sched_fd, SMALL_READ, 0)
            self.idle_scrapes += 1
            if sched != self.sched or self.idle_scrapes >= MEMORY_REFRESH or memory:
                self.idle_scrapes = 0
                statm = os.pread(self.statm_fd, SMALL_READ, 0)  # type: ignore[arg-type]  # sched_fd set implies statm_fd set
                if sched != self.sched or statm != self.statm:
                    self.update(statm, sched)
        elif self.statm_fd is not None:
            self.update(os.pread(self.statm_fd, SMALL_READ, 0), b"")
        else:
            self.refresh_by_path()

    def refresh_by_path(self) -> None:
        """Without descriptors to spare: read by path, and check it is still the same process."""
        stat = procfs.read_stat(self.pid)
        if stat is None or stat.is_zombie or stat.start_ticks != self.start_ticks:
            raise ProcessGone(self.pid)
        self.user_ticks, self.system_ticks = stat.utime_ticks, stat.stime_ticks
        self.update(procfs.read_file(f"{procfs.PROC}/{self.pid}/statm"), self.sched)

    def update(self, statm: bytes | None, sched: bytes) -> None:
        """Take fresh statm and schedstat text: re-read stat if the process ran, re-parse statm if it changed."""
        if sched != self.sched or self.sched_fd is None:
            if self.stat_fd is not None:
                stat = procfs.parse_stat(self.pid, _pread(self.stat_fd))
                if stat is None:
                    raise ProcessGone(self.pid)
                self.user_ticks, self.system_ticks = stat.utime_ticks, stat.stime_ticks
            self.sched = sched
        if statm != self.statm:
            memory = procfs.parse_statm(statm or b"")
            if memory is None:  # gone, or a zombie: no memory map left
                raise ProcessGone(self.pid)
            self.anon, self.shared = memory
            self.statm = statm

    def values(self) -> tuple[int, int, int, int, int]:
        """What the tracker sums by type (see ProcessTracker.totals): anon, shared, swap, user and system ticks."""
        return self.anon, self.shared, self.swap, self.user_ticks, self.system_ticks

    def close(self) -> None:
        for fd in (self.stat_fd, self.statm_fd, self.sched_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.stat_fd = self.statm_fd = self.sched_fd = None


def _pread(fd: int) -> bytes:
    try:
        return os.pread(fd, 4096, 0)
    except OSError:  # ESRCH: the process behind this descriptor has exited
        raise ProcessGone from None


class ProcessTracker:
    """Every process of one postmaster across scrapes, and their sums by backend type.

    The sums (``totals``) are kept as processes change rather than added up each scrape: a scrape then
    touches only the processes it read, not all thousand objects of the idle clients (after an idle gap
    each object is a cold memory access, and summing them cost more than reading /proc for the busy
    ones). Every value is an integer (bytes, clock ticks), so adding and taking away never drifts, and
    a CPU counter (totals plus ``retired``) never runs backwards. A process counts once it has a type
    and is not the exporter's own; its values count as last read.
    """

    def __init__(self, max_handles: int = 4096) -> None:
        self._procs: dict[int, TrackedProcess] = {}  # by pid; each bound to one process
        # Backend type -> [processes, anon, shared, swap, user ticks, system ticks] of those counted.
        self.totals: dict[str, list[int]] = {}
        # CPU ticks of processes that exited, by (backend type, "user" or "system").
        self.retired: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.max_handles = max_handles  # beyond it (descriptor limit), files are opened by path each time
        # Client backend pids that may have run since the previous SQL scan, from the latest SQL visit;
        # None: unknown (no visit answered), every process is read.
        self.hint: set[int] | None = None
        self._clients: set[int] = set()  # pids of the tracked client backends, the exporter's own left out
        self._turns: list[set[int]] = [set() for _ in range(IDLE_REREAD)]  # _clients by pid % IDLE_REREAD
        # The exporter's latest own backends: one that exits after its scrape may be first seen by the next.
        self._own_pids: deque[int] = deque(maxlen=8)
        self._walks = 0
        self._largest: TrackedProcess | None = None  # the client with the most anonymous memory, if known
        self.children = ChildSet(open_events())  # the postmaster's children, from fork and exit events

    def walk(self, postmaster_pid: int | None) -> tuple[list[TrackedProcess], set[int]]:
        """The postmaster and its counted processes other than client backends, freshly read, and the
        pids of the client backends the walk skipped (idle at the previous scan: see the module's
        docstring and ``catch_up``); processes that exited are retired, and the sums follow every value
        read.

        The loop is the scrape's hot path (once per backend): nothing read for a skipped backend; one
        pread and one byte comparison for a process that slept since the last scrape; for one that ran
        (or is due a memory refresh) statm too, and parsing only of what changed.
        """
        procs = self._procs
        pids = [postmaster_pid, *self.children.of(postmaster_pid)] if postmaster_pid is not None else []
        swapping, get, hint = procfs.host_has_swap(), procs.get, self.hint
        self._walks += 1
        skip: set[int] = set()
        due: set[int] = set()
        listed = set(pids)
        if hint is not None and self._clients:  # set algebra in C: the per-pid loop below is Python
            skip = (self._clients & listed) - hint
            due = skip & self._turns[self._walks % IDLE_REREAD]
            skip -= due
        others: list[TrackedProcess] = []
        reads = 0
        for pid in listed - skip if skip else pids:
            proc = get(pid)
            if proc is not None:
                reads += 1
                if not reads % YIELD_EVERY:
                    os.sched_yield()  # let the SQL thread take the GIL: see YIELD_EVERY
                if not self._refresh(proc, pid in due):
                    proc = None
            if proc is None:
                try:
                    proc = procs[pid] = TrackedProcess(
                        pid, len(procs) < self.max_handles, None if pid == postmaster_pid else postmaster_pid
                    )
                except ProcessGone:
                    self.children.forget(pid)
                    continue
                proc.own = pid in self._own_pids
            if proc.backend_type is None:
                proc.backend_type = "postmaster" if pid == postmaster_pid else _classify(pid)
                if proc.backend_type is not None and not proc.own:  # untyped: a fresh fork without its title yet
                    self._count(proc, 1)
                    if proc.backend_type == CLIENT:
                        self._clients.add(pid)
                        self._turns[pid % IDLE_REREAD].add(pid)
            if proc.backend_type is not None and proc.backend_type != CLIENT and not proc.own:
                others.append(proc)
        for pid in procs.keys() - listed:  # exited
            self._retire(pid)
        if swapping:  # VmSwap changes while a process sleeps: read it every scrape, only on hosts that swap
            for proc in [p for p in procs.values() if p.backend_type is not None and not p.own]:
                before = proc.values()
                proc.swap = procfs.read_swap(proc.pid)
                self._shift(proc, before)
        return others, skip  # the skipped are never the exporter's own: those are not in _clients

    def catch_up(self, skipped: set[int], busy: set[int] | None) -> None:
        """Read the SKIPPED backends (pids) that BUSY (this scrape's SQL visit) says may have run since
        the previous scan, or all of them when BUSY is None; those found gone are retired."""
        for pid in skipped if busy is None else skipped & busy:
            proc = self._procs.get(pid)
            if proc is not None:  # else retired meanwhile (an overlapping scrape's walk)
                self._refresh(proc, True)

    def disown(self, pids: list[int]) -> None:
        """The exporter's own backends PIDS are neither reported nor counted."""
        self._own_pids.extend(pid for pid in pids if pid not in self._own_pids)
        for pid in pids:
            proc = self._procs.get(pid)
            if proc is not None and not proc.own:
                if proc.backend_type is not None:
                    self._count(proc, -1)
                proc.own = True
                self._clients.discard(pid)
                self._turns[pid % IDLE_REREAD].discard(pid)

    def largest_client_anon(self) -> int:
        """The most anonymous memory of one client backend (0 without clients). The holder is kept: all
        clients are looked at only when it shrank or went."""
        if self._largest is None or self._procs.get(self._largest.pid) is not self._largest:
            clients = [self._procs[pid] for pid in self._clients]
            self._largest = max(clients, key=_ANON) if clients else None
        return self._largest.anon if self._largest is not None else 0

    def _refresh(self, proc: TrackedProcess, memory: bool) -> bool:
        """Re-read PROC and move the sums with it; False (and retired) once it has exited."""
        before = proc.values()
        try:
            proc.refresh(memory=memory)
            return True
        except (OSError, ProcessGone):
            self._shift(proc, before)  # what it read before failing, so the retirement takes it all out
            self._retire(proc.pid)
            return False
        finally:
            if self._procs.get(proc.pid) is proc:
                self._shift(proc, before)

    def _shift(self, proc: TrackedProcess, before: tuple[int, ...]) -> None:
        """PROC's values changed from BEFORE: the sums of its type follow (if it counts)."""
        after = proc.values()
        if after == before or proc.backend_type is None or proc.own:
            return
        row = self.totals[proc.backend_type]
        for i, (old, new) in enumerate(zip(before, after, strict=True), start=1):
            row[i] += new - old
        if proc.backend_type == CLIENT and self._largest is not None:
            if proc.anon > self._largest.anon:
                self._largest = proc
            elif proc is self._largest and proc.anon < before[0]:
                self._largest = None  # it shrank: look at all of them next time

    def _count(self, proc: TrackedProcess, sign: int) -> None:
        """Add PROC to the sums of its type (SIGN 1) or take it out (-1)."""
        row = self.totals.setdefault(proc.backend_type or "", [0] * 6)
        row[0] += sign
        for i, value in enumerate(proc.values(), start=1):
            row[i] += sign * value
        if proc.backend_type == CLIENT and self._largest is not None:
            if sign > 0 and proc.anon > self._largest.anon:
                self._largest = proc
            elif sign < 0 and proc is self._largest:
                self._largest = None

    def _retire(self, pid: int) -> None:
        proc = self._procs.pop(pid)
        self.children.forget(pid)
        self._clients.discard(pid)
        self._turns[pid % IDLE_REREAD].discard(pid)
        proc.close()
        if proc.backend_type is not None and not proc.own:
            self._count(proc, -1)
            self.retired[(proc.backend_type, "user")] += proc.user_ticks
            self.retired[(proc.backend_type, "system")] += proc.system_ticks

    def close(self) -> None:
        self.children.close()
        for proc in self._procs.values():
            proc.close()
        self._procs.clear()
        self._clients.clear()
        self.totals.clear()
        self._largest = None
        for turn in self._turns:
            turn.clear()


def _classify(pid: int) -> str | None:
    title = procfs.read_cmdline(pid)
    return classify_title(title) if title else None
