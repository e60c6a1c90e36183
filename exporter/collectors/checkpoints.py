"""Checkpoints started by checkpoint_timeout versus requested (WAL volume past max_wal_size, or asked for).

PostgreSQL 17 moved these counters from pg_stat_bgwriter to pg_stat_checkpointer; the names stay
postgres_exporter's on every version.
"""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..sqlview import Statement

NAME = "checkpoints"
STATEMENTS = (
    Statement("checkpoints", "SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter", until=170000),
    Statement("checkpoints", "SELECT num_timed, num_requested FROM pg_stat_checkpointer", since=170000),
)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ((timed, requested),) = ctx.rows("checkpoints")
    out.add("pg_stat_bgwriter_checkpoints_timed_total", ctx.labels, float(timed or 0))
    out.add("pg_stat_bgwriter_checkpoints_req_total", ctx.labels, float(requested or 0))
