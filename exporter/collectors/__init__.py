"""One module per collector. Each has NAME and ``collect(ctx, out)``; the scraper isolates them, so a
failure in one shows as pgmedic_collector_success 0 and every other metric is still exported. A SQL
collector that reads more than sqlview's own statements lists them in STATEMENTS (sqlview.Statement):
they join the scrape's single pipelined round trip."""

from . import (
    activity,
    archiver,
    blocking,
    checkpoints,
    connection,
    info,
    postmaster,
    processes,
    replication,
    settings,
    slots,
    storage,
    workers,
    wraparound,
)

# Order matters only where one collector reads what another gathered (workers needs processes).
OS_COLLECTORS = (postmaster, storage)
# Collectors that start in the OS phase with prepare(ctx), while the SQL visit is on its way, and report
# in the SQL phase with what it said (processes: which client backends may have run).
PREPARED = (processes,)
SQL_COLLECTORS = (
    processes,
    connection,
    settings,
    activity,
    workers,
    info,
    wraparound,
    archiver,
    checkpoints,
    replication,
    slots,
    blocking,
)
