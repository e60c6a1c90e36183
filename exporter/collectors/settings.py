"""Connection limits and local-memory settings (work_mem, maintenance_work_mem, temp_buffers, …)."""

from __future__ import annotations

from ..context import CollectorFailed, ScrapeContext
from ..metrics import MetricSet

NAME = "settings"
NUMBERS = ("max_connections", "superuser_reserved_connections", "reserved_connections", "io_workers")
BYTES = ("work_mem", "maintenance_work_mem", "temp_buffers", "shared_buffers")


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    sql = ctx.sql
    if not sql.up or "settings" in sql.errors:
        raise CollectorFailed(sql.errors.get("settings") or sql.errors.get("connection", "no connection"))
    for name in NUMBERS:
        value = sql.setting_number(name)
        if value is not None:
            out.add(f"pg_settings_{name}", ctx.labels, value)
    for name in BYTES:
        value = sql.setting_bytes(name)
        if value is not None:
            out.add(f"pg_settings_{name}_bytes", ctx.labels, value)
