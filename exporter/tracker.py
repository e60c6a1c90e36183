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
        "system_seconds",
        "user_seconds",
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
            self.user_seconds, self.system_seconds = stat.utime_seconds, stat.stime_seconds
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
        self.user_seconds, self.system_seconds = stat.utime_seconds, stat.stime_seconds
        self.update(procfs.read_file(f"{procfs.PROC}/{self.pid}/statm"), self.sched)

    def update(self, statm: bytes | None, sched: bytes) -> None:
        """Take fresh statm and schedstat text: re-read stat if the process ran, re-parse statm if it changed."""
        if sched != self.sched or self.sched_fd is None:
            if self.stat_fd is not None:
                stat = procfs.parse_stat(self.pid, _pread(self.stat_fd))
                if stat is None:
                    raise ProcessGone(self.pid)
                self.user_seconds, self.system_seconds = stat.utime_seconds, stat.stime_seconds
            self.sched = sched
        if statm != self.statm:
            memory = procfs.parse_statm(statm or b"")
            if memory is None:  # gone, or a zombie: no memory map left
                raise ProcessGone(self.pid)
            self.anon, self.shared = memory
            self.statm = statm

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
    def __init__(self, max_handles: int = 4096) -> None:
        self._procs: dict[int, TrackedProcess] = {}  # by pid; each bound to one process
        self.retired: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.max_handles = max_handles  # beyond it (descriptor limit), files are opened by path each time
        # Client backend pids that may have run since the previous SQL scan, from the latest SQL visit;
        # None: unknown (no visit answered), every process is read.
        self.hint: set[int] | None = None
        self._clients: set[int] = set()  # pids of the tracked client backends, the exporter's own left out
        self._turns: list[set[int]] = [set() for _ in range(IDLE_REREAD)]  # _clients by pid % IDLE_REREAD
        # The exporter's latest own backends: one that exits after its scrape may be first seen by the next.
        self._own_pids: deque[int] = deque(maxlen=8)
        self._walks = 0
        self.children = ChildSet(open_events())  # the postmaster's children, from fork and exit events

    def walk(self, postmaster_pid: int | None) -> tuple[list[TrackedProcess], list[TrackedProcess]]:
        """The postmaster and its live children, freshly read, and which of them the walk skipped
        (client backends idle at the previous scan: see the module's docstring and ``catch_up``);
        processes that exited are retired.

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
        live: list[TrackedProcess] = []
        reads = 0
        for pid in listed - skip if skip else pids:
            proc = get(pid)
            if proc is not None:
                reads += 1
                if not reads % YIELD_EVERY:
                    os.sched_yield()  # let the SQL thread take the GIL: see YIELD_EVERY
                try:
                    proc.refresh(memory=pid in due)
                except (OSError, ProcessGone):
                    self._retire(pid)
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
                if proc.backend_type == CLIENT and not proc.own:
                    self._clients.add(pid)
                    self._turns[pid % IDLE_REREAD].add(pid)
            if proc.backend_type is not None and not proc.own:  # untyped: a fresh fork without its title yet
                live.append(proc)
        skipped = list(map(procs.__getitem__, skip))  # never the exporter's own: they are not in _clients
        live += skipped
        if swapping:  # VmSwap changes while a process sleeps: read it every scrape, only on hosts that swap
            for proc in live:
                proc.swap = procfs.read_swap(proc.pid)
        if len(procs) > len(pids) or len(live) < len(pids):  # else every tracked process was listed and live
            for pid in procs.keys() - set(pids):
                self._retire(pid)
        return live, skipped

    def catch_up(
        self, live: list[TrackedProcess], skipped: list[TrackedProcess], busy: set[int] | None
    ) -> list[TrackedProcess]:
        """LIVE, after reading the SKIPPED backends that BUSY (this scrape's SQL visit) says may have run
        since the previous scan, or all of them when BUSY is None; those found gone are retired."""
        if busy is not None and len(busy) < len(skipped):
            skipped = [proc for pid in busy if (proc := self._procs.get(pid)) is not None and proc in skipped]
        gone: set[int] = set()
        for proc in skipped if busy is None else [p for p in skipped if p.pid in busy]:
            if self._procs.get(proc.pid) is not proc:  # retired meanwhile (an overlapping scrape's walk)
                gone.add(id(proc))
                continue
            try:
                proc.refresh(memory=True)
            except (OSError, ProcessGone):
                self._retire(proc.pid)
                gone.add(id(proc))
        return [p for p in live if id(p) not in gone] if gone else live

    def disown(self, live: list[TrackedProcess], pids: list[int]) -> list[TrackedProcess]:
        """LIVE without the exporter's own backends PIDS, which are never reported nor accounted."""
        self._own_pids.extend(pid for pid in pids if pid not in self._own_pids)
        own = [proc for pid in pids if (proc := self._procs.get(pid)) is not None and not proc.own]
        for proc in own:
            proc.own = True
            self._clients.discard(proc.pid)
            self._turns[proc.pid % IDLE_REREAD].discard(proc.pid)
            if proc in live:
                live.remove(proc)
        return live

    def _retire(self, pid: int) -> None:
        proc = self._procs.pop(pid)
        self.children.forget(pid)
        self._clients.discard(pid)
        self._turns[pid % IDLE_REREAD].discard(pid)
        proc.close()
        if proc.backend_type is not None and not proc.own:
            self.retired[(proc.backend_type, "user")] += proc.user_seconds
            self.retired[(proc.backend_type, "system")] += proc.system_seconds

    def close(self) -> None:
        self.children.close()
        for proc in self._procs.values():
            proc.close()
        self._procs.clear()
        self._clients.clear()
        for turn in self._turns:
            turn.clear()


def _classify(pid: int) -> str | None:
    title = procfs.read_cmdline(pid)
    return classify_title(title) if title else None
