"""Is every background worker this instance should run actually running, and as many as configured?

Which workers to expect comes from `pgmedic.workers` (by major version, role and settings from this
scrape's SQL visit or the last one; without either, only the workers every configuration runs). A
worker that is not expected is never reported, so a 0 always means "missing" (or fewer than
configured: io workers are counted against ``io_workers``).
"""

from __future__ import annotations

from pgmedic import workers

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "workers"


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ctx.require_identity()
    facts = ctx.facts
    standby = bool(
        (ctx.pid_file is not None and ctx.pid_file.status == "standby")
        or (facts is not None and facts.in_recovery and ctx.pid_file and ctx.pid_file.status != "starting")
    )
    version_num = ctx.version_num
    expected = workers.expected(
        version_num // 10000 if version_num else None, standby, facts.settings if facts is not None else None
    )
    started: dict[str, float] = {}
    running: dict[str, int] = {}
    for kind in expected:
        found = ctx.by_type.get(kind)
        if found:
            started[kind] = min(s.start_time for s in found)
            running[kind] = len(found)
    for worker in workers.NAMES:
        if worker not in expected:
            continue
        labels = ctx.with_labels(worker=worker)
        out.add("pg_background_worker_up", labels, 1 if running.get(worker, 0) >= expected[worker] else 0)
        out.add("pg_background_worker_processes", labels, running.get(worker, 0))
        out.add("pg_background_worker_expected_processes", labels, expected[worker])
        if worker in started:
            out.add("pg_background_worker_start_time_seconds", labels, started[worker])
