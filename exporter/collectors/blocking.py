"""Sessions waiting for a lock another session holds (pg_blocking_pids), and the longest such wait.

Only ungranted locks are looked at (pg_blocking_pids only for the backends waiting on one): the lock
table holds little on a server with many idle clients, where a scan of the activity array costs
about a millisecond per thousand backends.
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
FROM (SELECT pid, coalesce(min(waitstart), clock_timestamp()) AS since FROM pg_locks
      WHERE NOT granted AND pid <> pg_backend_pid() GROUP BY pid) w
WHERE cardinality(pg_blocking_pids(w.pid)) > 0
""",
    ),
)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ((blocked, longest),) = ctx.rows("blocking")
    out.add("pg_blocked_sessions", ctx.labels, float(blocked or 0))
    out.add("pg_blocked_sessions_max_wait_seconds", ctx.labels, float(longest or 0))
