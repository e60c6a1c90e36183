"""pg_instance_info: version, data directory and port, from SQL when possible, else from files and config;
and who manages the instance (systemd, pg_ctlcluster, pg_ctl, command or an HA agent: pgmedic.managers),
found again only when the postmaster changes or a minute has passed."""

from __future__ import annotations

from pgmedic.managers import ManagerProblem

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "info"
MANAGER_AGE = 60.0  # seconds a manager finding is kept while the postmaster is the same one


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    facts = ctx.facts
    version = (facts.version if facts else None) or str(ctx.instance.major_version() or "unknown")
    try:
        manager = str(ctx.instance.manager(MANAGER_AGE, ctx.postmaster, verified=ctx.unverifiable is None).kind)
    except ManagerProblem:
        manager = "unknown"
    port = (facts.setting("port") if facts else None) or str(ctx.instance.port(ctx.pid_file))
    labels = ctx.with_labels(version=version, data_directory=ctx.instance.data_directory, port=port, manager=manager)
    out.add("pg_instance_info", labels, 1)
