"""How close each database is to transaction ID and multixact wraparound.

The ages come with the database list sqlview reads anyway. Autovacuum forces an anti-wraparound
vacuum at autovacuum_(multixact_)freeze_max_age; near 2^31 the server stops assigning IDs.
"""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "wraparound"
HARD_LIMIT = 2**31


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    sql = ctx.require_sql("activity")
    freeze = {
        "xid": sql.setting_number("autovacuum_freeze_max_age"),
        "multixact": sql.setting_number("autovacuum_multixact_freeze_max_age"),
    }
    for datname, (xid_age, mxid_age) in sorted(sql.database_ages.items()):
        out.add("pg_database_frozen_xid_age", ctx.with_labels(datname=datname), xid_age)
        out.add("pg_database_min_multixact_age", ctx.with_labels(datname=datname), mxid_age)
        for kind, age in (("xid", xid_age), ("multixact", mxid_age)):
            labels = ctx.with_labels(datname=datname, kind=kind)
            out.add("pg_database_wraparound_ratio", labels, age / HARD_LIMIT)
            limit = freeze[kind]
            if limit:
                out.add("pg_database_freeze_max_age_ratio", labels, age / limit)
