"""Children of the postmaster by type, their CPU and their memory, read from /proc."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pgmedic.titles import COMMON_BACKEND_TYPES
from pgmedic.workers import NAMES as WORKERS

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "processes"
MEMORY_KINDS = ("anon", "shared", "swap")


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ctx.require_identity()
    # The walk overlaps the SQL visit's connect; the scrape's own fresh backend is left out afterwards.
    walked = ctx.tracker.walk(ctx.postmaster.pid if ctx.postmaster else None)
    procs = ctx.processes = ctx.tracker.disown(walked, ctx.own_backends())
    # One pass over every process (a thousand backends is the hot path): per type, count, memory, CPU.
    per_type: dict[str, list[Any]] = {}
    largest = 0
    for p in procs:
        kind = p.backend_type or "unknown"
        row = per_type.get(kind)
        if row is None:
            row = per_type[kind] = [0, 0, 0, 0, 0.0, 0.0]
        row[0] += 1
        row[1] += p.anon
        row[2] += p.shared
        row[3] += p.swap
        row[4] += p.user_seconds
        row[5] += p.system_seconds
        if p.anon > largest and p.backend_type == "client_backend":
            largest = p.anon

    children = {kind: row[0] for kind, row in per_type.items() if kind != "postmaster"}
    for kind in sorted({*COMMON_BACKEND_TYPES, *WORKERS} | set(children)):
        out.add("pg_processes", ctx.with_labels(backend_type=kind), children.get(kind, 0))
    out.add("pg_client_connections", ctx.labels, children.get("client_backend", 0))

    # Counters: processes that exited live on in the tracker's retired totals, so these never decrease.
    cpu = defaultdict(float, ctx.tracker.retired)
    for kind, row in per_type.items():
        cpu[(kind, "user")] += row[4]
        cpu[(kind, "system")] += row[5]
    for (kind, mode), seconds in sorted(cpu.items()):
        out.add("pg_process_cpu_seconds_total", ctx.with_labels(backend_type=kind, mode=mode), seconds)

    for kind, row in sorted(per_type.items()):
        for what, value in zip(MEMORY_KINDS, row[1:4], strict=True):
            out.add("pg_process_memory_bytes", ctx.with_labels(backend_type=kind, kind=what), value)
    out.add("pg_backend_memory_anon_max_bytes", ctx.labels, largest)
