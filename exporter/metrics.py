"""The metric contract: every name the exporter emits, its type and where its value comes from.

Rules, dashboards and the remediator depend on these names. Keys are the names as exposed (counters
with ``_total``, info metrics with ``_info``). Names shared with postgres_exporter
(pg_up, pg_settings_*, pg_stat_activity_connections, …) keep its meaning.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric

GAUGE, COUNTER, INFO = "gauge", "counter", "info"

CATALOGUE: dict[str, tuple[str, str]] = {
    # the exporter's own configuration (as Prometheus' prometheus_config_last_reload_*)
    "pgmedic_config_last_reload_successful": (GAUGE, "1 when the last configuration reload (SIGHUP) succeeded."),
    "pgmedic_config_last_reload_success_timestamp_seconds": (
        GAUGE,
        "Unix time the configuration in force was loaded (at start or by the last successful reload).",
    ),
    # OS view
    "pg_postmaster_up": (GAUGE, "1 when postmaster.pid names a live postmaster of this data directory (from /proc)."),
    "pg_postmaster_start_time_seconds": (GAUGE, "Unix time the postmaster started (postmaster.pid line 3)."),
    "pg_postmaster_state": (GAUGE, "1 for the status line of postmaster.pid (starting, ready, stopping, standby)."),
    "pg_postmaster_stale_pid_file": (GAUGE, "1 when postmaster.pid exists but no live postmaster owns it."),
    "pg_background_worker_up": (
        GAUGE,
        "1 when the expected background worker runs as a child of the postmaster (process titles in /proc), "
        "as many as configured (io workers: io_workers); only workers this version, role and configuration "
        "should run are reported (pgmedic.workers).",
    ),
    "pg_background_worker_processes": (GAUGE, "Processes of the expected background worker running now (/proc)."),
    "pg_background_worker_expected_processes": (
        GAUGE,
        "Processes of the background worker this version and configuration should run (io_workers for io workers).",
    ),
    "pg_background_worker_start_time_seconds": (GAUGE, "Unix time the background worker process started (/proc)."),
    "pg_processes": (GAUGE, "Live children of the postmaster by backend type, from their process titles."),
    "pg_process_cpu_seconds_total": (
        COUNTER,
        "CPU time of the postmaster and its children by backend type and mode, from /proc/PID/stat, "
        "accumulated per process so it never decreases as processes come and go.",
    ),
    "pg_process_memory_bytes": (
        GAUGE,
        "Resident memory of the postmaster and its children summed by backend type, from /proc/PID/statm (swap from status): "
        "anon (private, RssAnon), shared (RssFile+RssShmem, counted in every process), swap (VmSwap).",
    ),
    "pg_backend_memory_anon_max_bytes": (GAUGE, "Largest private (RssAnon) memory of one client backend (/proc)."),
    "pg_client_connections": (
        GAUGE,
        "Client backends counted from /proc process titles: visible even when no new connection is possible.",
    ),
    # SQL view
    "pg_up": (
        GAUGE,
        "1 when a fresh connection and SELECT 1 succeeded within this scrape (never a cached connection).",
    ),
    "pg_instance_info": (
        INFO,
        "Version, data directory and port of the instance (SQL, else PG_VERSION and the config).",
    ),
    "pg_settings_max_connections": (GAUGE, "max_connections, read with current_setting()."),
    "pg_settings_superuser_reserved_connections": (
        GAUGE,
        "superuser_reserved_connections, read with current_setting().",
    ),
    "pg_settings_reserved_connections": (
        GAUGE,
        "reserved_connections (PostgreSQL 16+: slots for roles with pg_use_reserved_connections), read with "
        "current_setting(); absent before 16.",
    ),
    "pg_settings_io_workers": (GAUGE, "io_workers (PostgreSQL 18+), read with current_setting(); absent before 18."),
    "pg_settings_work_mem_bytes": (GAUGE, "work_mem, read with current_setting(), in bytes."),
    "pg_settings_maintenance_work_mem_bytes": (GAUGE, "maintenance_work_mem, read with current_setting(), in bytes."),
    "pg_settings_temp_buffers_bytes": (GAUGE, "temp_buffers, read with current_setting(), in bytes."),
    "pg_settings_shared_buffers_bytes": (GAUGE, "shared_buffers, read with current_setting(), in bytes."),
    "pg_stat_activity_connections": (
        GAUGE,
        "Client backends by database and state, from pg_stat_activity "
        "(postgres_exporter's pg_stat_activity_count; alerts/pgmedic.rules.yml records that name).",
    ),
    "pg_stat_activity_max_tx_duration_seconds": (
        GAUGE,
        "Age of the oldest open transaction of a client backend by state, from pg_stat_activity.xact_start.",
    ),
    # self
    "pgmedic_collector_success": (GAUGE, "1 when this collector succeeded for this instance in this scrape."),
    "pgmedic_collector_duration_seconds": (GAUGE, "Time this collector took for this instance in this scrape."),
    "pgmedic_build_info": (INFO, "pgmedic version."),
}


class MetricSet:
    """Samples gathered during one scrape, grouped into one family per name across all instances."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """Add one sample; NAME is the exposed sample name (with _total or _info where the type has it)."""
        typ, doc = CATALOGUE[name]
        family = self._families.get(name)
        if family is None:
            base = name.removesuffix({COUNTER: "_total", INFO: "_info"}.get(typ, ""))
            family = self._families[name] = Metric(base, doc, typ)
        family.add_sample(name, dict(labels), float(value))

    def names(self) -> set[str]:
        return set(self._families)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())
