"""pg_instance_info: version, data directory and port, from SQL when possible, else from files and config."""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "info"


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    facts = ctx.facts
    version = (facts.version if facts else None) or str(ctx.instance.major_version() or "unknown")
    port = (facts.setting("port") if facts else None) or str(ctx.instance.config.port_for(ctx.pid_file))
    labels = ctx.with_labels(version=version, data_directory=ctx.instance.data_directory, port=port)
    out.add("pg_instance_info", labels, 1)
