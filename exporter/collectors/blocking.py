"""Sessions waiting for a lock another session holds (pg_blocking_pids), and the longest such wait.

Only ungranted locks are looked at (pg_blocking_pids only for the backends waiting on one). Reading
pg_locks visits every backend's fast-path lock slots, as costly as the activity scan with a thousand
clients, so it is asked only while sessions wait on locks (Statement.lock_waits_only): when the
previous scan saw none, the count comes from this scrape's activity scan, and the longest wait reads 0
for that one scrape (any wait began after the previous scan; the next scrape measures it).
"""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..sqlview import Statement

NAME = "blocking"
STATEMENTS = (
    Statement(
        "blocking",
        lock_waits_only=True,
        sql="""
SELECT count(*), coalesce(max(extract(epoch FROM clock_timestamp() - w.since)), 0)
FROM (SELECT pid, coalesce(min(waitstart), clock_timestamp()) AS since FROM pg_locks
      WHERE NOT granted AND pid <> pg_backend_pid() GROUP BY pid) w
WHERE cardinality(pg_blocking_pids(w.pid)) > 0
""",
    ),
)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    sql = ctx.require_sql("connection")
    if "blocking" in sql.results or sql.lock_waiters is None:
        ((blocked, longest),) = ctx.rows("blocking")
        counted, longest_wait = float(blocked or 0), float(longest or 0)
    else:  # not asked: nobody waited at the previous scan (see above)
        counted, longest_wait = float(sql.lock_waiters), 0.0
    out.add("pg_blocked_sessions", ctx.labels, counted)
    out.add("pg_blocked_sessions_max_wait_seconds", ctx.labels, longest_wait)
