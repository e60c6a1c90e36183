"""WAL archiving as the archiver process reports it (pg_stat_archiver): successes, failures and when."""

from __future__ import annotations

import time

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..sqlview import Statement

NAME = "archiver"
STATEMENTS = (
    Statement(
        "archiver",
        "SELECT archived_count, failed_count, extract(epoch FROM last_archived_time), "
        "extract(epoch FROM last_failed_time) FROM pg_stat_archiver",
    ),
)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ((archived, failed, last_archived, last_failed),) = ctx.rows("archiver")
    out.add("pg_stat_archiver_archived_total", ctx.labels, float(archived or 0))
    out.add("pg_stat_archiver_failed_total", ctx.labels, float(failed or 0))
    if last_archived is not None:
        out.add("pg_stat_archiver_last_archived_timestamp_seconds", ctx.labels, float(last_archived))
        out.add("pg_stat_archiver_last_archive_age", ctx.labels, max(0.0, time.time() - float(last_archived)))
    if last_failed is not None:
        out.add("pg_stat_archiver_last_failed_timestamp_seconds", ctx.labels, float(last_failed))
