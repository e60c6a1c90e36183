"""Children of the postmaster by type, their CPU and their memory, read from /proc."""

from __future__ import annotations

from collections import Counter, defaultdict

from pgmedic.titles import COMMON_BACKEND_TYPES

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "processes"
MEMORY_KINDS = ("anon", "shared", "swap")


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    samples = ctx.tracker.walk(ctx.postmaster.pid if ctx.postmaster else None, exclude=ctx.own_backend)
    ctx.processes = samples
    children = [s for s in samples if s.backend_type != "postmaster"]
    counts = Counter(s.backend_type for s in children)
    for kind in sorted(set(COMMON_BACKEND_TYPES) | set(counts)):
        out.add("pg_processes", ctx.with_labels(backend_type=kind), counts.get(kind, 0))
    out.add("pg_client_connections", ctx.labels, counts.get("client_backend", 0))

    for (kind, mode), seconds in sorted(ctx.tracker.cpu_totals().items()):
        out.add("pg_process_cpu_seconds_total", ctx.with_labels(backend_type=kind, mode=mode), seconds)

    memory: defaultdict[tuple[str, str], int] = defaultdict(int)
    largest = 0
    for s in samples:
        if s.memory is None:
            continue
        memory[(s.backend_type, "anon")] += s.memory.anon
        memory[(s.backend_type, "shared")] += s.memory.shared
        memory[(s.backend_type, "swap")] += s.memory.swap
        if s.backend_type == "client_backend":
            largest = max(largest, s.memory.anon)
    for (kind, what), value in sorted(memory.items()):
        out.add("pg_process_memory_bytes", ctx.with_labels(backend_type=kind, kind=what), value)
    out.add("pg_backend_memory_anon_max_bytes", ctx.labels, largest)
