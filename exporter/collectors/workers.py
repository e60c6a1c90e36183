"""Is every background worker this instance should run actually running?

Which workers to expect depends on the version and the settings (from this scrape's SQL visit or
the last one; without either, only the workers every configuration runs). A worker that is not
expected is never reported, so a 0 always means "missing".
"""

from __future__ import annotations

from pgmedic.titles import WORKERS

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..sqlview import SqlFacts

NAME = "workers"


def expected_workers(version_num: int | None, facts: SqlFacts | None, standby: bool) -> set[str]:
    """The workers PostgreSQL VERSION_NUM runs with these settings; settings-dependent ones only when known."""
    expected = {"checkpointer", "background_writer"}
    if standby:
        expected.add("startup")
    else:
        expected.add("walwriter")
        if version_num is not None and version_num < 150000:
            expected.add("stats_collector")
    if facts is None:
        return expected
    if facts.setting_on("logging_collector"):
        expected.add("logger")
    if not standby and facts.setting_on("autovacuum"):
        expected.add("autovacuum_launcher")
    archive_mode = facts.setting("archive_mode")
    if archive_mode == "always" or (archive_mode == "on" and not standby):
        expected.add("archiver")
    lr_workers = facts.setting_number("max_logical_replication_workers")
    if not standby and version_num and version_num >= 100000 and lr_workers:
        expected.add("logical_replication_launcher")
    if standby and facts.setting("primary_conninfo"):
        expected.add("walreceiver")
    return expected


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    ctx.require_identity()
    facts = ctx.facts
    standby = bool(
        (ctx.pid_file is not None and ctx.pid_file.status == "standby")
        or (facts is not None and facts.in_recovery and ctx.pid_file and ctx.pid_file.status != "starting")
    )
    expected = expected_workers(ctx.version_num, facts, standby)
    started: dict[str, float] = {}
    for s in ctx.processes or []:
        if s.backend_type in expected:
            started[s.backend_type] = min(started.get(s.backend_type, s.start_time), s.start_time)
    for worker in WORKERS:
        if worker not in expected:
            continue
        labels = ctx.with_labels(worker=worker)
        out.add("pg_background_worker_up", labels, 1 if worker in started else 0)
        if worker in started:
            out.add("pg_background_worker_start_time_seconds", labels, started[worker])
