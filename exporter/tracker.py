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
    def __init__(self) -> None:
        self._types: dict[Key, str] = {}
        self._cpu: dict[Key, tuple[str, float, float]] = {}
        self.retired: defaultdict[tuple[str, str], float] = defaultdict(float)

    def walk(self, postmaster_pid: int | None) -> list[ProcSample]:
        """Read the postmaster and its children from /proc (stat, status; cmdline only for new processes)."""
        samples: list[ProcSample] = []
        if postmaster_pid is not None:
            pm = procfs.read_stat(postmaster_pid)
            if pm is not None:
                samples.append(ProcSample(pm.pid, "postmaster", pm, procfs.read_memory(pm.pid)))
                for pid in procfs.children(postmaster_pid):
                    sample = self._child(pid)
                    if sample is not None:
                        samples.append(sample)
        self._account(samples)
        return samples

    def _child(self, pid: int) -> ProcSample | None:
        stat = procfs.read_stat(pid)
        if stat is None or stat.is_zombie:
            return None
        key = (pid, stat.start_ticks)
        kind = self._types.get(key)
        if kind is None:
            title = procfs.read_cmdline(pid)
            kind = classify_title(title) if title else None
            if kind is None:  # a fresh fork that has not set its title yet
                return None
            self._types[key] = kind
        return ProcSample(pid, kind, stat, procfs.read_memory(pid))

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
