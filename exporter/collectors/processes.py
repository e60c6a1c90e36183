"""Children of the postmaster by type, their CPU and their memory, read from /proc.

In two steps: ``prepare`` walks /proc while the scrape's SQL visit is on its way, skipping client
backends that were idle at the previous scan; ``collect`` runs once the visit answered (or gave up),
reads the skipped backends it names as possibly busy (all of them without an answer), and reports.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import groupby
from operator import attrgetter
from typing import Any

from pgmedic.titles import COMMON_BACKEND_TYPES
from pgmedic.workers import NAMES as WORKERS

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..tracker import CLIENT

NAME = "processes"
MEMORY_KINDS = ("anon", "shared", "swap")
_TYPE = attrgetter("backend_type")
_ANON = attrgetter("anon")
_FIELDS = tuple(map(attrgetter, ("anon", "shared", "swap", "user_seconds", "system_seconds")))


def prepare(ctx: ScrapeContext) -> None:
    """The walk, overlapping the SQL visit (the scraper runs it in the OS phase, under the tracker's lock)."""
    ctx.require_identity()
    ctx.walked = ctx.tracker.walk(ctx.postmaster.pid if ctx.postmaster else None)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    if ctx.walked is None:  # prepare failed: the same reason again, counted here
        prepare(ctx)
        assert ctx.walked is not None
    live = ctx.tracker.catch_up(*ctx.walked, ctx.sql.busy)
    # The scrape's own fresh backend and its statistics session are left out.
    procs = ctx.processes = ctx.tracker.disown(live, ctx.own_backends())
    # A thousand backends is the hot path: grouped by type with a sort, then summed field by field
    # (sort, map and sum loop in C; a Python loop over every process costs three times as much).
    per_type: dict[str, list[Any]] = {}
    largest = 0
    ctx.by_type = {}
    for kind, group in groupby(sorted(procs, key=_TYPE), key=_TYPE):
        members = ctx.by_type[kind] = list(group)
        per_type[kind] = [len(members), *(sum(map(field, members)) for field in _FIELDS)]
        if kind == CLIENT:
            largest = max(map(_ANON, members))

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
