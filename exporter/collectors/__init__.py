"""One module per collector. Each has NAME and ``collect(ctx, out)``; the scraper isolates them, so a
failure in one shows as pgmedic_collector_success 0 and every other metric is still exported."""

from . import activity, connection, info, postmaster, processes, settings, workers

# Order matters only where one collector reads what another gathered (workers needs processes).
OS_COLLECTORS = (postmaster, processes)
SQL_COLLECTORS = (connection, settings, activity, workers, info)
