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
        "Client backends counted from /proc process titles: visible even when no new connection is possible. "
        "The exporter's statistics session is one (it holds a slot); the scrape's own fresh connection is not.",
    ),
    "pg_filesystem_size_bytes": (
        GAUGE,
        "Size of the filesystem holding the data directory, pg_wal (symlink resolved) or a tablespace (statvfs).",
    ),
    "pg_filesystem_avail_bytes": (
        GAUGE,
        "Bytes PostgreSQL (not root) may still write on that filesystem (statvfs f_bavail; node_exporter's meaning).",
    ),
    "pg_filesystem_files": (GAUGE, "Inodes of that filesystem (statvfs f_files)."),
    "pg_filesystem_files_free": (GAUGE, "Inodes still available to PostgreSQL on that filesystem (statvfs f_favail)."),
    "pg_wal_size_bytes": (GAUGE, "Size of the files in pg_wal (postgres_exporter's meaning: pg_ls_waldir())."),
    "pg_wal_segments": (GAUGE, "WAL segment files in pg_wal."),
    "pg_wal_archive_ready_files": (
        GAUGE,
        "Segments waiting for archive_command: pg_wal/archive_status/*.ready (grows while archiving fails or lags).",
    ),
    # SQL view
    "pg_up": (
        GAUGE,
        "1 when a fresh connection and SELECT 1 succeeded within this scrape (never a cached connection).",
    ),
    "pg_instance_info": (
        INFO,
        "Version, data directory, port (SQL, else PG_VERSION and the config) and manager of the instance (systemd, "
        "pg_ctlcluster, pg_ctl, command, patroni, pg_autoctl, repmgr).",
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
    "pg_settings_autovacuum_freeze_max_age": (
        GAUGE,
        "autovacuum_freeze_max_age: the XID age at which autovacuum forces an anti-wraparound vacuum.",
    ),
    "pg_settings_autovacuum_multixact_freeze_max_age": (
        GAUGE,
        "autovacuum_multixact_freeze_max_age: the multixact age at which autovacuum forces a vacuum.",
    ),
    "pg_database_frozen_xid_age": (GAUGE, "age(datfrozenxid) of the database: transactions since it was last frozen."),
    "pg_database_min_multixact_age": (GAUGE, "mxid_age(datminmxid) of the database."),
    "pg_database_wraparound_ratio": (
        GAUGE,
        "XID (kind=xid) or multixact (kind=multixact) age as a share of the 2^31 wraparound limit; near 1 the "
        "server stops assigning IDs.",
    ),
    "pg_database_freeze_max_age_ratio": (
        GAUGE,
        "The same age as a share of autovacuum_(multixact_)freeze_max_age: above 1, anti-wraparound vacuums run.",
    ),
    "pg_stat_archiver_archived_total": (COUNTER, "WAL files archived successfully (pg_stat_archiver.archived_count)."),
    "pg_stat_archiver_failed_total": (COUNTER, "Failed attempts to archive WAL files (pg_stat_archiver.failed_count)."),
    "pg_stat_archiver_last_archived_timestamp_seconds": (
        GAUGE,
        "Unix time of the last successful archive_command (pg_stat_archiver.last_archived_time).",
    ),
    "pg_stat_archiver_last_failed_timestamp_seconds": (
        GAUGE,
        "Unix time of the last failed archive_command (pg_stat_archiver.last_failed_time).",
    ),
    "pg_stat_archiver_last_archive_age": (
        GAUGE,
        "Seconds since the last successful archive (postgres_exporter's pg_stat_archiver_last_archive_age).",
    ),
    "pg_stat_bgwriter_checkpoints_timed_total": (
        COUNTER,
        "Checkpoints started by checkpoint_timeout (pg_stat_bgwriter, pg_stat_checkpointer.num_timed from 17).",
    ),
    "pg_stat_bgwriter_checkpoints_req_total": (
        COUNTER,
        "Checkpoints requested: WAL past max_wal_size, or asked for (pg_stat_checkpointer.num_requested from 17).",
    ),
    "pg_replication_is_replica": (GAUGE, "1 when the server is in recovery (a standby), from pg_is_in_recovery()."),
    "pg_replication_lag_seconds": (
        GAUGE,
        "On a standby: seconds since the last replayed transaction, 0 when all received WAL is replayed "
        "(postgres_exporter's meaning).",
    ),
    "pg_replication_replay_lag_bytes": (GAUGE, "On a standby: WAL received but not yet replayed, in bytes."),
    "pg_wal_receiver_up": (GAUGE, "On a standby: 1 when its WAL receiver is streaming from the primary."),
    "pg_wal_receiver_status": (
        GAUGE,
        "On a standby: 1 for the WAL receiver's status (pg_stat_wal_receiver; stopped when none runs).",
    ),
    "pg_stat_replication_state": (GAUGE, "Per connected standby: 1 for its WAL sender's state (pg_stat_replication)."),
    "pg_stat_replication_lag_bytes": (
        GAUGE,
        "Per connected standby: bytes between this server's WAL end and what was sent, written, flushed, replayed.",
    ),
    "pg_stat_replication_lag_seconds": (
        GAUGE,
        "Per connected standby: write, flush and replay lag in seconds (pg_stat_replication; 0 when caught up).",
    ),
    "pg_replication_slot_slot_is_active": (
        GAUGE,
        "1 when a consumer is attached to the slot (postgres_exporter's name).",
    ),
    "pg_replication_slot_retained_wal_bytes": (
        GAUGE,
        "WAL the slot keeps from being recycled: this server's WAL position minus the slot's restart_lsn.",
    ),
    "pg_replication_slot_wal_status": (
        GAUGE,
        "1 for the slot's wal_status: reserved, extended, unreserved (about to be lost) or lost.",
    ),
    "pg_replication_slot_safe_wal_size_bytes": (
        GAUGE,
        "WAL that can still be written before the slot is lost (max_slot_wal_keep_size set only).",
    ),
    "pg_blocked_sessions": (GAUGE, "Sessions waiting for a lock another session holds (pg_blocking_pids)."),
    "pg_blocked_sessions_max_wait_seconds": (
        GAUGE,
        "How long the longest of those sessions has waited for its lock (pg_locks.waitstart), 0 when none waits.",
    ),
    # self
    "pgmedic_collector_success": (GAUGE, "1 when this collector succeeded for this instance in this scrape."),
    "pgmedic_collector_duration_seconds": (GAUGE, "Time this collector took for this instance in this scrape."),
    "pgmedic_build_info": (INFO, "pgmedic version."),
}


def base_name(name: str) -> str:
    """The family name of an exposed sample name: without the _total of a counter or the _info of an info."""
    typ = CATALOGUE[name][0]
    return name.removesuffix({COUNTER: "_total", INFO: "_info"}.get(typ, ""))


class MetricSet:
    """Samples gathered during one scrape, grouped into one family per name across all instances."""

    def __init__(self) -> None:
        self._samples: dict[str, list[tuple[Mapping[str, str], float]]] = {}

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """Add one sample; NAME is the exposed sample name (with _total or _info where the type has it)."""
        samples = self._samples.get(name)
        if samples is None:
            if name not in CATALOGUE:
                raise KeyError(f"{name} is not in the metric catalogue")
            samples = self._samples[name] = []
        samples.append((labels, float(value)))

    def names(self) -> set[str]:
        return set(self._samples)

    def families(self) -> Iterator[tuple[str, list[tuple[Mapping[str, str], float]]]]:
        """(exposed name, samples) per family, in the order first added: what exposition.render writes."""
        return iter(self._samples.items())

    def __iter__(self) -> Iterator[Metric]:
        """prometheus_client metric families, for its encoders and parsers."""
        for name, samples in self._samples.items():
            typ, doc = CATALOGUE[name]
            family = Metric(base_name(name), doc, typ)
            for labels, value in samples:
                family.add_sample(name, dict(labels), value)
            yield family
