"""Replication slots: whether a consumer is attached, and the WAL each one keeps from being recycled.

An inactive slot retains WAL without bound (up to max_slot_wal_keep_size, after which the slot is
lost): the usual way a forgotten standby or logical consumer fills pg_wal.
"""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..sqlview import Statement

NAME = "slots"
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
STATEMENTS = (
    Statement(
        "slots",
        """
SELECT slot_name, slot_type, active,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
                       restart_lsn),
       wal_status, safe_wal_size
FROM pg_replication_slots
""",
    ),
)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    for name, kind, active, retained, wal_status, safe in ctx.rows("slots"):
        slot = ctx.with_labels(slot_name=name or "", slot_type=kind or "")
        out.add("pg_replication_slot_slot_is_active", slot, 1 if active == "t" else 0)
        out.add("pg_replication_slot_retained_wal_bytes", slot, max(0.0, float(retained or 0)))
        if wal_status is not None:
            for status in sorted({*WAL_STATUSES, wal_status}):
                out.add(
                    "pg_replication_slot_wal_status", {**slot, "wal_status": status}, 1 if status == wal_status else 0
                )
        if safe is not None:
            out.add("pg_replication_slot_safe_wal_size_bytes", slot, float(safe))
