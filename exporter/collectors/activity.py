"""Client backends by database and state, and the age of the oldest open transaction."""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "activity"
STATES = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
)
TX_STATES = ("active", "idle in transaction", "idle in transaction (aborted)")


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    sql = ctx.require_sql("activity")
    counts = {(datname, state): n for datname, state, n in sql.activity}
    for datname in sorted(set(sql.databases) | {d for d, _ in counts}):
        for state in sorted(set(STATES) | {s for d, s in counts if d == datname}):
            out.add(
                "pg_stat_activity_connections",
                ctx.with_labels(datname=datname, state=state),
                counts.get((datname, state), 0),
            )
    for state in TX_STATES:
        out.add("pg_stat_activity_max_tx_duration_seconds", ctx.with_labels(state=state), sql.max_tx.get(state, 0.0))
