"""The postmaster as /proc and postmaster.pid see it: present even when no SQL is possible."""

from __future__ import annotations

from pgmedic.pidfile import STATUSES

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "postmaster"


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ctx.require_identity()  # neither up nor stale when it cannot be known
    pm = ctx.postmaster
    out.add("pg_postmaster_up", ctx.labels, 1 if pm else 0)
    out.add("pg_postmaster_stale_pid_file", ctx.labels, 1 if ctx.pid_file is not None and pm is None else 0)
    status = ctx.pid_file.status if (pm and ctx.pid_file) else None
    for state in STATUSES:
        out.add("pg_postmaster_state", ctx.with_labels(state=state), 1 if status == state else 0)
    if pm is not None:
        out.add("pg_postmaster_start_time_seconds", ctx.labels, pm.start_time)
