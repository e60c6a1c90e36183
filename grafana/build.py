#!/usr/bin/env python3
"""Build grafana/dashboards/pgmedic-overview.json with the Grafana Foundation SDK (`make dashboards`).

The committed JSON is generated, never hand-edited: tests/test_dashboards.py checks that it equals
what this script produces, and runs every query against a live Prometheus.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import gauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "pgmedic-overview.json"
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Series of the chosen hosts (pgmedic_host: a fleet's target label, absent on a single host, where All
# matches) and instances, from the exporters (PG) and the remediators (REM).
HOST = 'pgmedic_host=~"$pgmedic_host"'
PG = f'job=~"$job", {HOST}, pg_instance=~"$pg_instance"'
REM = f'{HOST}, pg_instance=~"$pg_instance"'
ON = "on (job, instance, pgmedic_host, pg_instance)"


def query(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)
    return q.instant() if instant else q.range()


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def mapping(**texts: tuple[str, str]) -> list[model.ValueMap]:
    return [model.ValueMap(options={k: model.ValueMappingResult(text=t, color=c) for k, (t, c) in texts.items()})]


UP_DOWN = mapping(**{"1": ("UP", "green"), "0": ("DOWN", "red")})
RUNNING = mapping(**{"1": ("running", "green"), "0": ("missing", "red")})
RED_AT_ZERO = thresholds((None, "red"), (1, "green"))
STACKED = cb.StackingConfig().mode(common.StackingMode.NORMAL)


def panel(kind, title: str, description: str, queries: list[Dataquery], unit: str, w: int, h: int = 7):
    """A panel of KIND with a description (what it shows, what to do), its queries and unit."""
    p = kind().title(title).description(description).datasource(DS).unit(unit).span(w).height(h)
    for q in queries:
        p = p.with_target(q)
    return p


def availability() -> list:
    return [
        panel(
            stat.Panel,
            "Postmaster",
            "1 when postmaster.pid names a live postmaster of the data directory (OS view, "
            "true even when SQL is impossible). DOWN: pgmedic restarts it; see the PostgresPostmasterDown runbook.",
            [query(f"pg_postmaster_up{{{PG}}}", "{{pg_instance}}", instant=True)],
            "none",
            4,
        )
        .mappings(UP_DOWN)
        .thresholds(RED_AT_ZERO),
        panel(
            stat.Panel,
            "SQL (pg_up)",
            "1 when a fresh connection and SELECT 1 succeeded in the last scrape. DOWN while "
            "the postmaster is UP means hung or refusing: see PostgresNotResponding.",
            [query(f"pg_up{{{PG}}}", "{{pg_instance}}", instant=True)],
            "none",
            4,
        )
        .mappings(UP_DOWN)
        .thresholds(RED_AT_ZERO),
        panel(
            statetimeline.Panel,
            "Postmaster state",
            "The status line of postmaster.pid over time: starting, ready, "
            "stopping, standby. Long 'starting' means crash recovery; pgmedic waits instead of restarting.",
            [query(f"pg_postmaster_state{{{PG}}} == 1", "{{pg_instance}}: {{state}}")],
            "none",
            8,
        ),
        panel(
            stat.Panel,
            "Uptime",
            "Time since the postmaster started. A reset means a restart (by pgmedic, an "
            "administrator, or after a crash).",
            [query(f"time() - pg_postmaster_start_time_seconds{{{PG}}}", "{{pg_instance}}", instant=True)],
            "s",
            4,
        ).thresholds(thresholds((None, "orange"), (300, "green"))),
        panel(
            stat.Panel,
            "Crash-restart cycles (24h)",
            "How often the checkpointer was re-forked in 24 h: each time "
            "is a crash-restart cycle or a restart. More than zero: read the server log around those times.",
            [
                query(
                    f'sum by (pg_instance) (changes(pg_background_worker_start_time_seconds{{{PG}, worker="checkpointer"}}[24h]))',
                    "{{pg_instance}}",
                    instant=True,
                )
            ],
            "none",
            4,
        ).thresholds(thresholds((None, "green"), (1, "orange"), (3, "red"))),
    ]


def workers() -> list:
    return [
        panel(
            statetimeline.Panel,
            "Background workers",
            "Every worker this version and configuration should run, per "
            "instance (unexpected ones are never shown). 'missing' for over a minute while the postmaster is ready: "
            "PostgreSQL failed to re-fork it; see PostgresBackgroundWorkerMissing.",
            [query(f"pg_background_worker_up{{{PG}}}", "{{pg_instance}} {{worker}}")],
            "none",
            16,
            9,
        )
        .mappings(RUNNING)
        .thresholds(RED_AT_ZERO),
        panel(
            timeseries.Panel,
            "Processes by type",
            "Live children of the postmaster by backend type (process titles).",
            [
                query(
                    f"sum by (pg_instance, backend_type) (pg_processes{{{PG}}}) > 0", "{{pg_instance}} {{backend_type}}"
                )
            ],
            "none",
            8,
            9,
        ),
    ]


# The rules' recording: max_connections - superuser_reserved_connections - reserved_connections (16+).
USABLE = f"pgmedic:pg_connections_usable{{{PG}}}"


def connections() -> list:
    return [
        panel(
            timeseries.Panel,
            "Client backends by state",
            "Client connections by state (pg_stat_activity) against the "
            "usable limit, max_connections - superuser_reserved_connections - reserved_connections (16+). "
            "Many 'idle': a pooler would help.",
            [
                query(
                    f"sum by (pg_instance, state) (pg_stat_activity_connections{{{PG}}})",
                    "{{pg_instance}} {{state}}",
                ),
                query(USABLE, "{{pg_instance}} usable limit", "B"),
            ],
            "none",
            8,
        ).stacking(STACKED),
        panel(
            gauge.Panel,
            "Connection utilisation",
            "Client backends (counted from processes, so true even when the "
            "server is full) over the usable limit. Over 80 %: PostgresConnectionsNearLimit; 100 %: new clients are "
            "refused. pgmedic never restarts for this.",
            [query(f"pg_client_connections{{{PG}}} / {ON} {USABLE}", "{{pg_instance}}", instant=True)],
            "percentunit",
            8,
        )
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "green"), (0.8, "orange"), (1, "red"))),
        panel(
            timeseries.Panel,
            "Oldest transaction",
            "Age of the oldest open transaction by state. Long 'idle in "
            "transaction' holds locks and blocks vacuum: find the session in pg_stat_activity.",
            [query(f"pg_stat_activity_max_tx_duration_seconds{{{PG}}}", "{{pg_instance}} {{state}}")],
            "s",
            8,
        ).thresholds(thresholds((None, "green"), (600, "orange"), (3600, "red"))),
    ]


def memory() -> list:
    setting = "{{pg_instance}} %s"
    return [
        panel(
            stat.Panel,
            "Local memory settings",
            "work_mem (per sort/hash node), maintenance_work_mem (vacuum, "
            "CREATE INDEX), temp_buffers (per session), shared_buffers (shared, once).",
            [
                query(f"pg_settings_work_mem_bytes{{{PG}}}", setting % "work_mem", "A", True),
                query(f"pg_settings_maintenance_work_mem_bytes{{{PG}}}", setting % "maintenance_work_mem", "B", True),
                query(f"pg_settings_temp_buffers_bytes{{{PG}}}", setting % "temp_buffers", "C", True),
                query(f"pg_settings_shared_buffers_bytes{{{PG}}}", setting % "shared_buffers", "D", True),
            ],
            "bytes",
            8,
        ),
        panel(
            timeseries.Panel,
            "Private memory by backend type",
            "Private (anonymous) resident memory summed per "
            "backend type; shared buffers excluded, so the sum is real. Growing client_backend: big sorts or hashes.",
            [
                query(
                    f'sum by (pg_instance, backend_type) (pg_process_memory_bytes{{{PG}, kind="anon"}})',
                    "{{pg_instance}} {{backend_type}}",
                )
            ],
            "bytes",
            8,
        ).stacking(STACKED),
        panel(
            timeseries.Panel,
            "Largest backend vs worst case",
            "The largest private memory of one client backend, the "
            "sum over client backends, and the theoretical worst case max_connections x work_mem. Worst case above "
            "the host's memory: lower work_mem or max_connections. Largest over 1 GiB: PostgresLocalMemoryHigh.",
            [
                query(f"pg_backend_memory_anon_max_bytes{{{PG}}}", "{{pg_instance}} largest backend"),
                query(
                    f'sum by (job, instance, pgmedic_host, pg_instance) (pg_process_memory_bytes{{{PG}, kind="anon", backend_type="client_backend"}})',
                    "{{pg_instance}} all client backends",
                    "B",
                ),
                query(
                    f"pg_settings_max_connections{{{PG}}} * {ON} pg_settings_work_mem_bytes{{{PG}}}",
                    "{{pg_instance}} max_connections x work_mem",
                    "C",
                ),
            ],
            "bytes",
            8,
        ),
        panel(
            timeseries.Panel,
            "CPU by backend type",
            "CPU seconds per second by backend type and mode, from /proc "
            "(counters survive processes coming and going).",
            [
                query(
                    f"sum by (pg_instance, backend_type) (rate(pg_process_cpu_seconds_total{{{PG}}}[$__rate_interval]))",
                    "{{pg_instance}} {{backend_type}}",
                )
            ],
            "percentunit",
            24,
        ),
    ]


def disk_and_wal() -> list:
    place = "{{pg_instance}} {{holds}} {{path}}"
    return [
        panel(
            timeseries.Panel,
            "Free space",
            "Share of each filesystem PostgreSQL may still write: the data directory, pg_wal's real location and "
            "every tablespace (statvfs, so shown while the server is down). Below 10 %: PostgresFilesystemSpaceLow; a "
            "full WAL filesystem stops the server and keeps it down.",
            [query(f"pgmedic:pg_filesystem_avail:ratio{{{PG}}}", place)],
            "percentunit",
            8,
        )
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "red"), (0.1, "orange"), (0.2, "green"))),
        panel(
            timeseries.Panel,
            "Free space in one hour (trend)",
            "Free bytes an hour from now at the rate of the last 30 minutes (predict_linear). Below zero: "
            "PostgresFilesystemFullWithinAnHour; find the writer before it is full.",
            [query(f"predict_linear(pg_filesystem_avail_bytes{{{PG}}}[30m], 3600)", place)],
            "bytes",
            8,
        ).thresholds(thresholds((None, "red"), (0, "green"))),
        panel(
            timeseries.Panel,
            "Free inodes",
            "Share of inodes left on each filesystem. Every WAL segment, relation segment and temporary file "
            "needs one: none left means no new files although space remains.",
            [query(f"pg_filesystem_files_free{{{PG}}} / pg_filesystem_files{{{PG}}}", place)],
            "percentunit",
            8,
        )
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "red"), (0.1, "green"))),
        panel(
            timeseries.Panel,
            "WAL in pg_wal",
            "Bytes of WAL PostgreSQL keeps in pg_wal (from the directory, not SQL). Growing without bound: a failing "
            "archive_command or an inactive replication slot holds it; see the rows below.",
            [query(f"pg_wal_size_bytes{{{PG}}}", "{{pg_instance}}")],
            "bytes",
            12,
        ),
        panel(
            timeseries.Panel,
            "Segments waiting for the archiver",
            "WAL segments archive_command has not taken yet (pg_wal/archive_status/*.ready). Rising: archiving fails "
            "or is slower than WAL is written (PostgresWalArchiveBacklog over 32 for 15 min).",
            [query(f"pg_wal_archive_ready_files{{{PG}}}", "{{pg_instance}}")],
            "none",
            12,
        ).thresholds(thresholds((None, "green"), (32, "orange"))),
    ]


def archiving() -> list:
    return [
        panel(
            timeseries.Panel,
            "Archive attempts",
            "Segments archived and failed attempts per interval (pg_stat_archiver). Failures without successes: "
            "PostgresWalArchivingFailing; the server log shows the command's error.",
            [
                query(
                    f"increase(pg_stat_archiver_archived_total{{{PG}}}[$__rate_interval])", "{{pg_instance}} archived"
                ),
                query(
                    f"increase(pg_stat_archiver_failed_total{{{PG}}}[$__rate_interval])", "{{pg_instance}} failed", "B"
                ),
            ],
            "none",
            12,
        ).draw_style(common.GraphDrawStyle.BARS),
        panel(
            stat.Panel,
            "Since the last archived segment",
            "Time since archive_command last succeeded. On a server that writes WAL, long means archiving is broken "
            "and point-in-time recovery ends there.",
            [
                query(
                    f"time() - pg_stat_archiver_last_archived_timestamp_seconds{{{PG}}}",
                    "{{pg_instance}}",
                    instant=True,
                )
            ],
            "s",
            6,
        ).thresholds(thresholds((None, "green"), (3600, "orange"))),
        panel(
            stat.Panel,
            "Since the last failure",
            "Time since archive_command last failed. More recent than the last success: archiving is failing now.",
            [
                query(
                    f"time() - pg_stat_archiver_last_failed_timestamp_seconds{{{PG}}}", "{{pg_instance}}", instant=True
                )
            ],
            "s",
            6,
        ).thresholds(thresholds((None, "red"), (600, "orange"), (3600, "green"))),
    ]


def wraparound() -> list:
    return [
        panel(
            timeseries.Panel,
            "Wraparound: share of the 2^31 limit",
            "The oldest database's transaction ID (xid) and multixact age over the wraparound limit. Past 50 %: "
            "PostgresXidWraparoundRisk, past 80 %: PostgresXidWraparoundImminent; near 100 % writes stop.",
            [query(f"max by (pg_instance, kind) (pg_database_wraparound_ratio{{{PG}}})", "{{pg_instance}} {{kind}}")],
            "percentunit",
            12,
        ).thresholds(thresholds((None, "green"), (0.5, "orange"), (0.8, "red"))),
        panel(
            timeseries.Panel,
            "Age against autovacuum_freeze_max_age",
            "The same ages as a share of autovacuum_(multixact_)freeze_max_age. Above 100 % autovacuum runs "
            "anti-wraparound vacuums; staying above means something holds freezing back (long transaction, slot, "
            "prepared transaction).",
            [
                query(
                    f"max by (pg_instance, kind) (pg_database_freeze_max_age_ratio{{{PG}}})", "{{pg_instance}} {{kind}}"
                )
            ],
            "percentunit",
            12,
        ).thresholds(thresholds((None, "green"), (1, "orange"))),
    ]


def replication() -> list:
    standby = "{{pg_instance}} → {{application_name}} ({{client_addr}})"
    return [
        panel(
            stat.Panel,
            "Role",
            "Primary, or standby (in recovery), as pg_is_in_recovery() says.",
            [query(f"pg_replication_is_replica{{{PG}}}", "{{pg_instance}}", instant=True)],
            "none",
            4,
        ).mappings(mapping(**{"1": ("standby", "blue"), "0": ("primary", "green")})),
        panel(
            statetimeline.Panel,
            "Standbys of this server",
            "Each connected standby's WAL sender state (pg_stat_replication). A standby that disappears from here "
            "has disconnected.",
            [query(f"pg_stat_replication_state{{{PG}}} == 1", f"{standby}: {{{{state}}}}")],
            "none",
            10,
        ),
        panel(
            timeseries.Panel,
            "Standby replay behind (bytes)",
            "Seen from the primary: WAL written here that each standby has not replayed. Over 1 GiB for 5 min: "
            "PostgresStandbyBehindInBytes.",
            [query(f'pg_stat_replication_lag_bytes{{{PG}, kind="replay"}}', standby)],
            "bytes",
            10,
        ),
        panel(
            statetimeline.Panel,
            "WAL receiver",
            "On a standby: whether its WAL receiver streams from the primary. Not streaming for 2 min: "
            "PostgresStandbyNotStreaming.",
            [query(f"pg_wal_receiver_up{{{PG}}}", "{{pg_instance}}")],
            "none",
            8,
        )
        .mappings(mapping(**{"1": ("streaming", "green"), "0": ("not streaming", "red")}))
        .thresholds(RED_AT_ZERO),
        panel(
            timeseries.Panel,
            "Standby replay lag",
            "On a standby: seconds since the last replayed transaction while received WAL waits (0 when caught up).",
            [query(f"pg_replication_lag_seconds{{{PG}}}", "{{pg_instance}}")],
            "s",
            8,
        ).thresholds(thresholds((None, "green"), (300, "orange"))),
        panel(
            timeseries.Panel,
            "WAL retained by slots",
            "WAL each replication slot keeps from being recycled. An inactive slot here grows until pg_wal is full: "
            "PostgresReplicationSlotRetainingWal.",
            [
                query(
                    f"pg_replication_slot_retained_wal_bytes{{{PG}}}",
                    "{{pg_instance}} {{slot_name}}",
                ),
                query(
                    f"pg_replication_slot_retained_wal_bytes{{{PG}}} and on (job, instance, pgmedic_host, pg_instance, slot_name) "
                    f"pg_replication_slot_slot_is_active{{{PG}}} == 0",
                    "{{pg_instance}} {{slot_name}} (inactive)",
                    "B",
                ),
            ],
            "bytes",
            8,
        ),
    ]


def locks_and_checkpoints() -> list:
    return [
        panel(
            timeseries.Panel,
            "Blocked sessions",
            "Sessions waiting for a lock another session holds (pg_blocking_pids). To their clients the database "
            "looks hung; find the blocker in pg_stat_activity.",
            [query(f"pg_blocked_sessions{{{PG}}}", "{{pg_instance}}")],
            "none",
            8,
        ),
        panel(
            timeseries.Panel,
            "Longest lock wait",
            "How long the longest-waiting blocked session has waited. Over a minute: PostgresSessionsBlocked.",
            [query(f"pg_blocked_sessions_max_wait_seconds{{{PG}}}", "{{pg_instance}}")],
            "s",
            8,
        ).thresholds(thresholds((None, "green"), (60, "orange"))),
        panel(
            timeseries.Panel,
            "Checkpoints: timed vs requested",
            "Checkpoints started by checkpoint_timeout and requested ones (WAL past max_wal_size, or CHECKPOINT). "
            "Mostly requested: max_wal_size is too small for the write load.",
            [
                query(
                    f"increase(pg_stat_bgwriter_checkpoints_timed_total{{{PG}}}[$__rate_interval])",
                    "{{pg_instance}} timed",
                ),
                query(
                    f"increase(pg_stat_bgwriter_checkpoints_req_total{{{PG}}}[$__rate_interval])",
                    "{{pg_instance}} requested",
                    "B",
                ),
            ],
            "none",
            8,
        ).draw_style(common.GraphDrawStyle.BARS),
    ]


def remediation() -> list:
    return [
        panel(
            timeseries.Panel,
            "Remediation actions",
            "Starts and restarts by result. 'failed' means the instance did "
            "not come back: the remediator retries within the budget, then the instance is FAILED.",
            [
                query(
                    f"sum by (pg_instance, action, result) (increase(pgmedic_actions_total{{{REM}}}[$__rate_interval])) > 0",
                    "{{pg_instance}} {{action}} {{result}}",
                )
            ],
            "none",
            8,
        ).draw_style(common.GraphDrawStyle.BARS),
        panel(
            stat.Panel,
            "Time to recovery",
            "Median and 95th percentile from the alert's start until the instance "
            "accepted connections again, over the dashboard's time range.",
            [
                query(
                    f'histogram_quantile(0.5, sum by (le) (increase(pgmedic_recovery_seconds_bucket{{{REM}, since="alert_start"}}[$__range])))',
                    "median",
                    "A",
                    True,
                ),
                query(
                    f'histogram_quantile(0.95, sum by (le) (increase(pgmedic_recovery_seconds_bucket{{{REM}, since="alert_start"}}[$__range])))',
                    "p95",
                    "B",
                    True,
                ),
            ],
            "s",
            4,
        ).thresholds(thresholds((None, "green"), (5, "orange"), (30, "red"))),
        panel(
            stat.Panel,
            "Restart budget left",
            "Restarts the remediator may still make in the current window. 0 with "
            "the state 'failed': pgmedic gave up; fix the cause, then `pgmedic resume instance NAME`.",
            [query(f"pgmedic_restart_budget_remaining{{{REM}}}", "{{pg_instance}}", instant=True)],
            "none",
            4,
        ).thresholds(thresholds((None, "red"), (1, "orange"), (2, "green"))),
        panel(
            statetimeline.Panel,
            "Remediation state",
            "ok, acting, suspended (maintenance: no actions) or failed "
            "(budget spent: no actions until resume or the window passes; KSYS was told if critical).",
            [query(f"pgmedic_instance_state{{{REM}}} == 1", "{{pg_instance}}: {{state}}")],
            "none",
            8,
        ),
        panel(
            statetimeline.Panel,
            "Remediator mode",
            "act: the remediator restarts what fails; observe (a roll-out): it decides and journals "
            "would_start, would_restart or would_escalate, and does nothing. Switch with remediator.mode "
            "(or mode: on one instance) and a reload.",
            [query(f"pgmedic_remediator_mode{{{REM}}} == 1", "{{pg_instance}}: {{mode}}")],
            "none",
            8,
        ),
        panel(
            timeseries.Panel,
            "Alert notifications",
            "What the remediator decided about each alert it received: "
            "accepted (a new failure), duplicate (a repeat delivery, nothing done), ignored, rejected (bad input or "
            "credentials: check Alertmanager's webhook settings).",
            [query("sum by (result) (increase(pgmedic_notifications_total[$__rate_interval]))", "{{result}}")],
            "none",
            8,
        ),
        panel(
            timeseries.Panel,
            "KSYS notifications",
            "Event deliveries to KSYS. 'failed' attempts are retried with "
            "backoff until delivered; see PgmedicKsysNotificationFailing.",
            [query("sum by (result) (increase(pgmedic_ksys_notifications_total[$__rate_interval]))", "{{result}}")],
            "none",
            8,
        ),
    ]


def exporter_health() -> list:
    return [
        panel(
            statetimeline.Panel,
            "Collector success",
            "Each collector of each instance in each scrape; a failing "
            "collector costs only its own metrics. SQL collectors fail while PostgreSQL is down, as they should.",
            [query(f"pgmedic_collector_success{{{PG}}}", "{{pg_instance}} {{collector}}")],
            "none",
            12,
            8,
        )
        .mappings(mapping(**{"1": ("ok", "green"), "0": ("failed", "red")}))
        .thresholds(RED_AT_ZERO),
        panel(
            timeseries.Panel,
            "Collector and scrape duration",
            "Time per collector and for the whole scrape. A scrape "
            "near the scrape timeout means SQL is slow to answer; the exporter cuts it off at the timeout.",
            [
                query(f"pgmedic_collector_duration_seconds{{{PG}}}", "{{pg_instance}} {{collector}}"),
                query('scrape_duration_seconds{job=~"$job"}', "scrape {{instance}}", "B"),
            ],
            "s",
            12,
            8,
        ),
    ]


def fleet() -> list:
    """Every host at once: a state grid, restarts and FAILED instances across the fleet."""
    return [
        panel(
            statetimeline.Panel,
            "Hosts and instances",
            "One line per host and instance: UP while a client can connect (pg_up), DOWN otherwise. "
            "Pick a host above to see its instances in the rows below.",
            [query(f"max by (pgmedic_host, pg_instance) (pg_up{{{PG}}})", "{{pgmedic_host}} {{pg_instance}}")],
            "none",
            12,
            9,
        ).mappings(UP_DOWN),
        panel(
            timeseries.Panel,
            "Restarts by host",
            "Start and restart actions per host over the dashboard's time range: a fleet-wide wave points at "
            "a shared cause (storage, network, a bad configuration rolled out), not at PostgreSQL.",
            [
                query(
                    f"sum by (pgmedic_host) (increase(pgmedic_actions_total{{{REM}}}[$__rate_interval]))",
                    "{{pgmedic_host}}",
                )
            ],
            "none",
            6,
            9,
        ),
        panel(
            stat.Panel,
            "FAILED instances by host",
            "Instances whose restart budget is spent (no more actions until resume or the window passes): "
            "each needs a human. KSYS was told for critical ones.",
            [
                query(
                    f'sum by (pgmedic_host) (pgmedic_instance_state{{{REM}, state="failed"}})',
                    "{{pgmedic_host}}",
                    instant=True,
                )
            ],
            "none",
            6,
            9,
        ).thresholds(thresholds((None, "green"), (1, "red"))),
        panel(
            table.Panel,
            "Top instances by restarts",
            "The ten instances restarted most over the time range, across the fleet: look at the top ones "
            "first (a crash loop the budget contains is still an outage).",
            [
                query(
                    f"topk(10, sum by (pgmedic_host, pg_instance) (increase(pgmedic_actions_total{{{REM}}}[$__range])))",
                    "{{pgmedic_host}} {{pg_instance}}",
                    instant=True,
                )
            ],
            "none",
            24,
            8,
        ),
    ]


# The rows about outage precursors: their panels show data only where the condition exists (a standby, a
# slot, an archive_command), so tests/e2e/test_precursors.py proves them on a chain that has each one.
PRECURSOR_ROWS = {"Disk and WAL", "WAL archiving", "Wraparound", "Replication", "Locks and checkpoints"}
ROWS = [
    ("Fleet", fleet),
    ("Availability", availability),
    ("Background workers", workers),
    ("Connections", connections),
    ("Local memory", memory),
    ("Disk and WAL", disk_and_wal),
    ("WAL archiving", archiving),
    ("Wraparound", wraparound),
    ("Replication", replication),
    ("Locks and checkpoints", locks_and_checkpoints),
    ("Remediation", remediation),
    ("Exporter health", exporter_health),
]


def build() -> db.Dashboard:
    board = (
        db.Dashboard("pgmedic overview")
        .uid("pgmedic-overview")
        .description(
            "PostgreSQL instances kept alive by pgmedic: availability, workers, connections, memory, outage "
            "precursors (disk, WAL, archiving, wraparound, replication, locks), remediation."
        )
        .tags(["pgmedic", "postgresql"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("job").label("Exporter job").datasource(DS)
            .query("label_values(pg_postmaster_up, job)").refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True).all_value(".*").multi(True)
        )
        .with_variable(
            db.QueryVariable("pgmedic_host").label("Host").datasource(DS)
            .query('label_values(pg_postmaster_up{job=~"$job"}, pgmedic_host)')
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).include_all(True).all_value(".*").multi(True)
        )
        .with_variable(
            db.QueryVariable("pg_instance").label("Instance").datasource(DS)
            .query('label_values(pg_postmaster_up{job=~"$job", pgmedic_host=~"$pgmedic_host"}, pg_instance)')
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).include_all(True).all_value(".*").multi(True)
        )
        .annotation(
            db.AnnotationQuery().name("Postmaster restarts").datasource(DS).enable(True).icon_color("orange")
            .expr(f"changes(pg_postmaster_start_time_seconds{{{PG}}}[1m]) > 0")
        )
        .annotation(
            db.AnnotationQuery().name("Remediation actions").datasource(DS).enable(True).icon_color("red")
            .expr(f"increase(pgmedic_actions_total{{{REM}}}[1m]) > 0")
        )
    )  # fmt: skip
    for title, panels in ROWS:
        board = board.with_row(db.Row(title))
        for p in panels():
            board = board.with_panel(p)
    return board


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
