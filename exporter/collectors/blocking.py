"""Sessions waiting for a lock another session holds (pg_blocking_pids), and the longest such wait.

Only backends whose wait event is a heavyweight lock are looked at, and pg_locks only for those: on a
server without lock waits the statement costs one scan of the activity array.
"""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..sqlview import Statement

NAME = "blocking"
STATEMENTS = (
    Statement(
        "blocking",
        """
SELECT count(*), coalesce(max(extract(epoch FROM clock_timestamp() - w.since)), 0)
FROM pg_stat_get_activity(NULL) a
CROSS JOIN LATERAL (
  SELECT coalesce(min(l.waitstart), a.state_change) AS since FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted
) w
WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid() AND cardinality(pg_blocking_pids(a.pid)) > 0
""",
    ),
)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ((blocked, longest),) = ctx.rows("blocking")
    out.add("pg_blocked_sessions", ctx.labels, float(blocked or 0))
    out.add("pg_blocked_sessions_max_wait_seconds", ctx.labels, float(longest or 0))
