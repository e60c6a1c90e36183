"""Per-instance memory across scrapes: process types and CPU time that must never run backwards.

A CPU counter summed over live processes would drop every time a backend exits. The tracker keys
each process by (pid, start time) — a pid alone is reused — and when one disappears moves its last
seen CPU time into a retired total, so pg_process_cpu_seconds_total only ever grows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pgmedic import procfs
from pgmedic.titles import classify_title

Key = tuple[int, int]  # (pid, start ticks): one process for its whole life


@dataclass(frozen=True)
class ProcSample:
    pid: int
    backend_type: str
    stat: procfs.ProcStat
    memory: procfs.ProcMemory | None


class ProcessTracker:
    def __init__(self, max_handles: int = 4096) -> None:
        self._types: dict[Key, str] = {}
        self._cpu: dict[Key, tuple[str, float, float]] = {}
        self.retired: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._handles: dict[int, procfs.ProcHandle] = {}  # by pid; each bound to one process
        self.max_handles = max_handles  # beyond it (descriptor limit), fall back to open/read/close

    def walk(self, postmaster_pid: int | None, exclude: int | None = None) -> list[ProcSample]:
        """Read the postmaster and its children from /proc (stat, statm; cmdline only for new processes).

        EXCLUDE is the exporter's own backend: monitoring must not count itself as a client.
        """
        samples: list[ProcSample] = []
        seen: set[int] = set()
        if postmaster_pid is not None:
            pids = [postmaster_pid, *procfs.children(postmaster_pid)]
            for pid in pids:
                if pid == exclude:
                    continue
                sample = self._sample(pid, "postmaster" if pid == postmaster_pid else None)
                if sample is not None:
                    samples.append(sample)
                    seen.add(pid)
        for pid in [p for p in self._handles if p not in seen]:
            self._handles.pop(pid).close()
        self._account(samples)
        return samples

    def _read(self, pid: int) -> tuple[procfs.ProcStat, procfs.ProcMemory | None] | None:
        handle = self._handles.get(pid)
        if handle is not None:
            got = handle.read()
            if got is not None:
                return got
            handle.close()  # that process is gone; the pid may already name a new one
            del self._handles[pid]
        if len(self._handles) < self.max_handles:
            try:
                handle = procfs.ProcHandle(pid)
            except OSError:
                return None
            got = handle.read()
            if got is None:
                handle.close()
                return None
            self._handles[pid] = handle
            return got
        stat = procfs.read_stat(pid)
        return (stat, procfs.read_memory(pid)) if stat is not None else None

    def _sample(self, pid: int, kind: str | None) -> ProcSample | None:
        got = self._read(pid)
        if got is None or got[0].is_zombie:
            return None
        stat, memory = got
        key = (pid, stat.start_ticks)
        kind = kind or self._types.get(key)
        if kind is None:
            title = procfs.read_cmdline(pid)
            kind = classify_title(title) if title else None
            if kind is None:  # a fresh fork that has not set its title yet
                return None
            self._types[key] = kind
        return ProcSample(pid, kind, stat, memory)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _account(self, samples: list[ProcSample]) -> None:
        live: dict[Key, tuple[str, float, float]] = {
            (s.pid, s.stat.start_ticks): (s.backend_type, s.stat.utime_seconds, s.stat.stime_seconds) for s in samples
        }
        for key, (kind, user, system) in self._cpu.items():
            if key not in live:
                self.retired[(kind, "user")] += user
                self.retired[(kind, "system")] += system
                self._types.pop(key, None)
        self._cpu = live

    def cpu_totals(self) -> dict[tuple[str, str], float]:
        totals = defaultdict(float, self.retired)
        for kind, user, system in self._cpu.values():
            totals[(kind, "user")] += user
            totals[(kind, "system")] += system
        return totals
