"""Children of the postmaster by type, their CPU and their memory, read from /proc.

In two steps: ``prepare`` walks /proc while the scrape's SQL visit is on its way, skipping client
backends that were idle at the previous scan; ``collect`` runs once the visit answered (or gave up),
reads the skipped backends it names as possibly busy (all of them without an answer), and reports the
tracker's sums by type, which follow every value read (see exporter/tracker.py): a thousand idle
clients are not added up again each scrape.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import groupby
from operator import attrgetter

from pgmedic import procfs
from pgmedic.titles import COMMON_BACKEND_TYPES
from pgmedic.workers import NAMES as WORKERS

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..tracker import CLIENT

NAME = "processes"
MEMORY_KINDS = ("anon", "shared", "swap")
_TYPE = attrgetter("backend_type")


def prepare(ctx: ScrapeContext) -> None:
    """The walk, overlapping the SQL visit (the scraper runs it in the OS phase, under the tracker's lock)."""
    ctx.require_identity()
    ctx.walked = ctx.tracker.walk(ctx.postmaster.pid if ctx.postmaster else None)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    if ctx.walked is None:  # prepare failed: the same reason again, counted here
        prepare(ctx)
        assert ctx.walked is not None
    others, skipped = ctx.walked
    tracker = ctx.tracker
    tracker.catch_up(skipped, ctx.sql.busy)
    tracker.disown(ctx.own_backends())  # the scrape's own fresh backend and its statistics session
    ctx.by_type = {kind: list(group) for kind, group in groupby(sorted(others, key=_TYPE), key=_TYPE)}
    per_type = {kind: row for kind, row in tracker.totals.items() if row[0] > 0}

    children = {kind: row[0] for kind, row in per_type.items() if kind != "postmaster"}
    for kind in sorted({*COMMON_BACKEND_TYPES, *WORKERS} | set(children)):
        out.add("pg_processes", ctx.with_labels(backend_type=kind), children.get(kind, 0))
    out.add("pg_client_connections", ctx.labels, children.get(CLIENT, 0))

    # Counters: processes that exited live on in the tracker's retired totals, so these never decrease.
    ticks = defaultdict(int, tracker.retired)
    for kind, row in per_type.items():
        ticks[(kind, "user")] += row[4]
        ticks[(kind, "system")] += row[5]
    per_second = procfs.clock_ticks()
    for (kind, mode), count in sorted(ticks.items()):
        out.add("pg_process_cpu_seconds_total", ctx.with_labels(backend_type=kind, mode=mode), count / per_second)

    for kind, row in sorted(per_type.items()):
        for what, value in zip(MEMORY_KINDS, row[1:4], strict=True):
            out.add("pg_process_memory_bytes", ctx.with_labels(backend_type=kind, kind=what), value)
    out.add("pg_backend_memory_anon_max_bytes", ctx.labels, tracker.largest_client_anon())
