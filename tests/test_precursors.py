"""Outage precursors on real clusters: disk and WAL from the OS, archiving, wraparound, replication, slots
and blocked sessions from SQL, each made to happen here and read back through the exporter."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from pgmedic.demo.sandbox import Cluster, Service, chown_owner, new_standby, owner, small_filesystem, wait_for
from tests.test_exporter import Samples, has, scrape, value

pytestmark = pytest.mark.every_pg
NEW_COLLECTORS = ("storage", "wraparound", "archiver", "checkpoints", "replication", "slots", "blocking")
MIB = 1024 * 1024


def connect(cluster: Cluster) -> psycopg.Connection:
    return psycopg.connect(
        host=str(cluster.socket_dir), port=cluster.port, dbname="postgres", user=owner(), autocommit=True
    )


def until(service: Service, what: str, check: Callable[[Samples], bool], timeout: float = 30) -> Samples:
    """Scrape until CHECK holds; the samples that satisfied it."""

    def attempt() -> Samples | None:
        samples = scrape(service)[0]
        return samples if check(samples) else None

    result: Samples = wait_for(attempt, timeout, what, interval=0.3)
    return result


def test_primary_and_standby_report_archiving_slots_wraparound_checkpoints_and_replication(
    make_cluster: Callable[..., Cluster], exporter_for: Callable[..., Service]
) -> None:
    primary = make_cluster("primary", start=False)
    primary.configure(archive_mode="on", archive_command="false", wal_level="replica", max_slot_wal_keep_size="1GB")
    primary.start()
    primary.psql("SELECT pg_create_physical_replication_slot('forgotten', true)")
    standby = new_standby(primary, "replica")
    try:
        service = exporter_for(primary, standby)
        primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
        primary.psql("SELECT pg_switch_wal()")

        # Archiving: archive_command fails, so failures count up and segments wait as .ready files.
        samples = until(
            service,
            "archive failures and a .ready segment",
            lambda s: (
                value(s, "pg_stat_archiver_failed_total", pg_instance="primary") >= 1
                and value(s, "pg_wal_archive_ready_files", pg_instance="primary") >= 1
            ),
        )
        assert value(samples, "pg_stat_archiver_archived_total", pg_instance="primary") == 0
        failed_at = value(samples, "pg_stat_archiver_last_failed_timestamp_seconds", pg_instance="primary")
        assert time.time() - 120 < failed_at <= time.time() + 1
        assert not has(samples, "pg_stat_archiver_last_archived_timestamp_seconds", pg_instance="primary")
        ready = len([n for n in os.listdir(primary.data / "pg_wal" / "archive_status") if n.endswith(".ready")])
        assert abs(value(samples, "pg_wal_archive_ready_files", pg_instance="primary") - ready) <= 1

        # Repaired (archive_command succeeds after a reload): the waiting segments are archived.
        primary.configure(archive_command="true")
        primary.reload()
        samples = until(
            service,
            "the backlog archived",
            lambda s: (
                value(s, "pg_stat_archiver_archived_total", pg_instance="primary") >= 1
                and value(s, "pg_wal_archive_ready_files", pg_instance="primary") == 0
            ),
        )
        archived_at = value(samples, "pg_stat_archiver_last_archived_timestamp_seconds", pg_instance="primary")
        assert archived_at > failed_at
        assert 0 <= value(samples, "pg_stat_archiver_last_archive_age", pg_instance="primary") < 60

        # Replication, seen from both ends.
        samples = until(
            service,
            "the standby streaming",
            lambda s: (
                has(s, "pg_stat_replication_state", pg_instance="primary", state="streaming")
                and value(s, "pg_stat_replication_state", pg_instance="primary", state="streaming") == 1
                and value(s, "pg_wal_receiver_up", pg_instance="replica") == 1
            ),
        )
        assert value(samples, "pg_replication_is_replica", pg_instance="primary") == 0
        assert value(samples, "pg_replication_is_replica", pg_instance="replica") == 1
        assert value(samples, "pg_wal_receiver_status", pg_instance="replica", status="streaming") == 1
        assert not has(samples, "pg_wal_receiver_up", pg_instance="primary")
        standby_labels = {"pg_instance": "primary", "application_name": "replica"}
        for kind in ("sent", "write", "flush", "replay"):
            assert value(samples, "pg_stat_replication_lag_bytes", **standby_labels, kind=kind) >= 0
        for kind in ("write", "flush", "replay"):
            assert 0 <= value(samples, "pg_stat_replication_lag_seconds", **standby_labels, kind=kind) < 60
        assert value(samples, "pg_replication_lag_seconds", pg_instance="replica") >= 0
        assert value(samples, "pg_replication_replay_lag_bytes", pg_instance="replica") >= 0
        for status in ("stopped", "starting", "waiting", "restarting", "stopping"):
            assert value(samples, "pg_wal_receiver_status", pg_instance="replica", status=status) == 0

        # An inactive slot retains WAL, more as more is written.
        slot = {"pg_instance": "primary", "slot_name": "forgotten"}
        assert value(samples, "pg_replication_slot_slot_is_active", **slot) == 0
        assert value(samples, "pg_replication_slot_wal_status", **slot, wal_status="reserved") == 1
        assert value(samples, "pg_replication_slot_wal_status", **slot, wal_status="lost") == 0
        # max_slot_wal_keep_size (1 GB): what can still be written before the slot is lost.
        assert 0 < value(samples, "pg_replication_slot_safe_wal_size_bytes", **slot) <= 1024 * MIB
        before = value(samples, "pg_replication_slot_retained_wal_bytes", **slot)
        primary.psql("INSERT INTO t SELECT g FROM generate_series(1, 100000) g")
        samples = until(
            service,
            "the slot to retain more WAL",
            lambda s: value(s, "pg_replication_slot_retained_wal_bytes", **slot) > before + MIB,
        )

        # Wraparound: the exporter's ages are the server's, bracketed by reads before and after.
        low = int(primary.psql("SELECT age(datfrozenxid) FROM pg_database WHERE datname = 'postgres'"))
        samples = scrape(service)[0]
        high = int(primary.psql("SELECT age(datfrozenxid) FROM pg_database WHERE datname = 'postgres'"))
        age = value(samples, "pg_database_frozen_xid_age", pg_instance="primary", datname="postgres")
        assert low <= age <= high
        ratio = value(samples, "pg_database_wraparound_ratio", pg_instance="primary", datname="postgres", kind="xid")
        assert ratio == pytest.approx(age / 2**31)
        share = value(
            samples, "pg_database_freeze_max_age_ratio", pg_instance="primary", datname="postgres", kind="xid"
        )
        assert share == pytest.approx(
            age / value(samples, "pg_settings_autovacuum_freeze_max_age", pg_instance="primary")
        )
        assert has(samples, "pg_database_frozen_xid_age", pg_instance="primary", datname="template0")
        mxid_age = int(primary.psql("SELECT mxid_age(datminmxid) FROM pg_database WHERE datname = 'postgres'"))
        assert value(samples, "pg_database_min_multixact_age", pg_instance="primary", datname="postgres") == mxid_age
        multixact_limit = value(samples, "pg_settings_autovacuum_multixact_freeze_max_age", pg_instance="primary")
        assert multixact_limit == int(primary.psql("SHOW autovacuum_multixact_freeze_max_age"))
        assert value(
            samples, "pg_database_freeze_max_age_ratio", pg_instance="primary", datname="postgres", kind="multixact"
        ) == pytest.approx(mxid_age / multixact_limit)

        # Checkpoints (pg_stat_bgwriter before 17, pg_stat_checkpointer from 17): a CHECKPOINT is requested.
        requested = value(samples, "pg_stat_bgwriter_checkpoints_req_total", pg_instance="primary")
        primary.psql("CHECKPOINT")
        samples = until(
            service,
            "the requested checkpoint counted",
            lambda s: value(s, "pg_stat_bgwriter_checkpoints_req_total", pg_instance="primary") > requested,
        )
        for name in ("primary", "replica"):  # timed ones need checkpoint_timeout (30 s at least) to pass
            assert value(samples, "pg_stat_bgwriter_checkpoints_timed_total", pg_instance=name) >= 0
        for name in ("primary", "replica"):
            for collector in NEW_COLLECTORS:
                assert value(samples, "pgmedic_collector_success", pg_instance=name, collector=collector) == 1

        # The primary stops: the standby's receiver no longer streams, and the primary's view of it is gone.
        primary.pg_ctl("stop", "-m", "fast", "-w")
        samples = until(
            service,
            "the standby to stop streaming",
            lambda s: value(s, "pg_wal_receiver_up", pg_instance="replica") == 0,
        )
        assert value(samples, "pg_replication_is_replica", pg_instance="replica") == 1
        assert not has(samples, "pg_stat_replication_state", pg_instance="primary")
    finally:
        standby.destroy()


@pytest.fixture
def blocker(cluster: Cluster) -> Iterator[tuple[psycopg.Connection, Callable[[], None]]]:
    """A session holding an exclusive lock on t, and a way to start a session that waits for it."""
    holder = connect(cluster)
    holder.execute("CREATE TABLE t (x int)")
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    waiters: list[threading.Thread] = []
    connections: list[psycopg.Connection] = []

    def wait_for_lock() -> None:
        waiter = connect(cluster)
        connections.append(waiter)
        thread = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM t"), daemon=True)
        thread.start()
        waiters.append(thread)

    try:
        yield holder, wait_for_lock
    finally:
        holder.close()  # ends the transaction: the waiters get their lock and finish
        for thread in waiters:
            thread.join(10)
        for conn in connections:
            conn.close()


def test_blocked_sessions_and_their_longest_wait(cluster: Cluster, exporter_for, blocker) -> None:
    holder, wait_for_lock = blocker
    service = exporter_for(cluster)
    sleeper = connect(cluster)  # waiting on a timer, not a lock: never counted
    sleeping = threading.Thread(target=lambda: sleeper.execute("SELECT pg_sleep(2)"), daemon=True)
    sleeping.start()
    try:
        samples = scrape(service)[0]
        assert value(samples, "pg_blocked_sessions", pg_instance="main") == 0
        assert value(samples, "pg_blocked_sessions_max_wait_seconds", pg_instance="main") == 0
        wait_for_lock()
        wait_for_lock()
        samples = until(
            service, "two blocked sessions", lambda s: value(s, "pg_blocked_sessions", pg_instance="main") == 2
        )
        time.sleep(1.5)
        samples = scrape(service)[0]
        assert value(samples, "pg_blocked_sessions_max_wait_seconds", pg_instance="main") >= 1.5
        holder.execute("ROLLBACK")
        until(service, "no blocked session", lambda s: value(s, "pg_blocked_sessions", pg_instance="main") == 0)
    finally:
        sleeping.join(10)
        sleeper.close()


@pytest.mark.one_pg
def test_filesystems_of_data_wal_and_tablespace_from_the_os_also_while_down(
    make_cluster: Callable[..., Cluster], exporter_for, tmp_path: Path
) -> None:
    """pg_wal on a 64 MiB filesystem of its own (a tmpfs here) and a tablespace: each reported with what
    it holds, the WAL counted from pg_wal, and all of it still reported with the server stopped."""
    cluster = make_cluster(start=False)
    with small_filesystem(cluster.root / "walfs", 64) as walfs:
        cluster.move_wal(walfs)
        cluster.start()
        space = cluster.root / "space"
        space.mkdir()
        chown_owner(space)
        cluster.psql(f"CREATE TABLESPACE extra LOCATION '{space}'")
        service = exporter_for(cluster)
        samples = scrape(service)[0]
        wal = {"pg_instance": "main", "holds": "wal"}
        assert value(samples, "pg_filesystem_size_bytes", **wal, path=str(walfs)) == 64 * MIB
        assert has(samples, "pg_filesystem_size_bytes", pg_instance="main", holds="data", path=str(cluster.data))
        assert has(samples, "pg_filesystem_avail_bytes", pg_instance="main", holds="tablespace", path=str(space))
        assert 0 < value(samples, "pg_filesystem_files_free", **wal) <= value(samples, "pg_filesystem_files", **wal)
        on_disk = sum(e.stat().st_size for e in os.scandir(walfs) if e.is_file())
        assert value(samples, "pg_wal_size_bytes", pg_instance="main") == on_disk
        segments = [e for e in os.scandir(walfs) if e.is_file() and len(e.name) == 24]
        assert value(samples, "pg_wal_segments", pg_instance="main") == len(segments) >= 1

        # Fill the WAL filesystem: available bytes drop by what was written.
        avail = value(samples, "pg_filesystem_avail_bytes", **wal)
        with open(walfs / "filler", "wb") as f:
            f.write(b"\0" * (20 * MIB))
        samples = scrape(service)[0]
        assert avail - value(samples, "pg_filesystem_avail_bytes", **wal) >= 19 * MIB

        # With the server stopped, SQL is gone but the OS view stays.
        cluster.pg_ctl("stop", "-m", "fast", "-w")
        samples = until(service, "pg_up 0", lambda s: value(s, "pg_up", pg_instance="main") == 0)
        assert value(samples, "pg_filesystem_size_bytes", **wal) == 64 * MIB
        assert value(samples, "pgmedic_collector_success", pg_instance="main", collector="storage") == 1
        assert value(samples, "pgmedic_collector_success", pg_instance="main", collector="slots") == 0
        assert not has(samples, "pg_replication_slot_slot_is_active")
        cluster.destroy()  # nothing may hold the tmpfs when it is unmounted


@pytest.mark.one_pg  # pgmedic's own economy, not the server's
def test_pg_locks_is_read_only_while_sessions_wait(cluster: Cluster, blocker) -> None:
    """The lock table is asked only when the previous scan saw a session waiting on a lock: not at all
    on a quiet server; on the first scrape of a wait the count comes from the activity scan."""
    from pgmedic.exporter.scraper import Exporter

    from pgmedic.config import load_config

    exporter = Exporter(load_config(str(cluster.config_path)))
    scraper = exporter.scrapers[0]
    _holder, wait_for_lock = blocker
    try:
        exporter.scrape(5)
        assert scraper.known is not None and "blocking" in scraper.known.results, "first scrape: nothing known yet"
        exporter.scrape(5)
        assert "blocking" not in scraper.known.results, "nobody waited at the previous scan: not asked"
        wait_for_lock()
        wait_for(lambda: exporter.scrape(5) and scraper.session.lock_waiters == 1, 10, "a session waiting")
        assert "blocking" not in scraper.known.results, "first seen by the activity scan"
        time.sleep(1.1)
        samples = exporter.scrape(5)
        assert "blocking" in scraper.known.results, "asked while the session waits"
        waits = [
            v for name, rows in samples.families() if name == "pg_blocked_sessions_max_wait_seconds" for _, v in rows
        ]
        assert waits and waits[0] >= 1.0
    finally:
        exporter.close()
