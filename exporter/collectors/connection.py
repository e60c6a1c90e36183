"""pg_up: did a brand-new connection and SELECT 1 succeed in this scrape?"""

from __future__ import annotations

from ..context import CollectorFailed, ScrapeContext
from ..metrics import MetricSet

NAME = "connection"


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    out.add("pg_up", ctx.labels, 1 if ctx.sql.up else 0)
    if not ctx.sql.up:
        raise CollectorFailed(ctx.sql.errors.get("connection", "no connection"))
