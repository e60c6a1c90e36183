"""Connection limits and local-memory settings (work_mem, maintenance_work_mem, temp_buffers, …)."""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet

NAME = "settings"
NUMBERS = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
    "io_workers",
    "autovacuum_freeze_max_age",
    "autovacuum_multixact_freeze_max_age",
)
BYTES = ("work_mem", "maintenance_work_mem", "temp_buffers", "shared_buffers")


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    sql = ctx.require_sql("settings")
    for name in NUMBERS:
        value = sql.setting_number(name)
        if value is not None:
            out.add(f"pg_settings_{name}", ctx.labels, value)
    for name in BYTES:
        value = sql.setting_bytes(name)
        if value is not None:
            out.add(f"pg_settings_{name}_bytes", ctx.labels, value)
