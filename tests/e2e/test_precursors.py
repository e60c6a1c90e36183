"""The outage-precursor alerts and dashboard rows on the live chain, with each condition made for real:
pg_wal on a small filesystem filled up (space and inodes), archive_command failing after it had
worked, an inactive slot, a streaming standby that then loses its primary, a session blocked on a lock.

The rules are the shipped ones with the `for:` of the precursor group set to 0s (promtool tests the
durations, alerts/tests/precursors.test.yml); every expression is unchanged. None of these alerts
is remediated: the remediator must not act, and the instance must never be reported down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

from pgmedic.demo.sandbox import Cluster, make_temp_dir, new_standby, owner, small_filesystem, wait_for
from pgmedic.demo.stack import ALERTS_DIR, Stack, build_stack
from tests.e2e.test_dashboard_queries import BOARD, PRECURSOR_ROWS, empty_queries, panels_in_rows
from tests.test_precursors import connect

# Room for the segments the slot keeps (the base backup's, an archived and a failing one) and, once
# filled to LEFT_FREE (under 10 %), still for the next segment: the server must keep running.
WAL_FS_MIB = 320
LEFT_FREE = 24 * 1024 * 1024
WAL_FS_INODES = 200
FIRING = {
    "PostgresFilesystemSpaceLow",
    "PostgresFilesystemFullWithinAnHour",
    "PostgresFilesystemInodesLow",
    "PostgresWalArchivingFailing",
    "PostgresSessionsBlocked",
    "PostgresStandbyNotStreaming",
}


def rules_without_waits(dest: Path) -> Path:
    """A copy of the shipped alerts/ whose precursor alerts fire at once (`for: 0s`)."""
    shutil.copytree(ALERTS_DIR, dest)
    rules = dest / "pgmedic.rules.yml"
    doc = yaml.safe_load(rules.read_text())
    group = next(g for g in doc["groups"] if g["name"] == "pgmedic.precursors")
    for rule in group["rules"]:
        rule["for"] = "0s"
    rules.write_text(yaml.safe_dump(doc))
    return dest


@contextlib.contextmanager
def blocked_session(cluster: Cluster) -> Iterator[None]:
    """One session holds an exclusive lock on t and another waits for it, until the block ends."""
    holder, waiter = connect(cluster), connect(cluster)
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    thread = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM t"), daemon=True)
    thread.start()
    try:
        yield
    finally:
        holder.close()
        thread.join(10)
        waiter.close()


def fill(directory: Path, leave_bytes: int, leave_inodes: int) -> None:
    """Use up DIRECTORY's filesystem but LEAVE_BYTES and LEAVE_INODES (PostgreSQL still runs)."""
    st = os.statvfs(directory)
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave_bytes))
    for i in range(os.statvfs(directory).f_favail - leave_inodes):
        (directory / f"filler.{i}").touch()


def archiver_counts(cluster: Cluster) -> tuple[int, int]:
    archived, failed = cluster.psql("SELECT archived_count, failed_count FROM pg_stat_archiver").split("|")
    return int(archived), int(failed)


def test_precursor_alerts_fire_and_their_dashboard_rows_show_data(tmp_path: Path) -> None:
    mount_root = make_temp_dir("pgmedic-walfs-")
    try:
        with small_filesystem(mount_root / "wal", WAL_FS_MIB, WAL_FS_INODES) as walfs:

            def on_its_own_wal_filesystem(cluster: Cluster) -> None:
                cluster.pg_ctl("stop", "-m", "fast", "-w")
                cluster.move_wal(walfs)
                cluster.configure(archive_mode="on", archive_command="true", wal_level="replica")
                cluster.start()

            stack = build_stack(
                "precursors", alerts_dir=rules_without_waits(tmp_path / "alerts"), prepare=on_its_own_wal_filesystem
            )
            try:
                drill(stack, walfs)
            except BaseException:
                import subprocess

                print(
                    subprocess.run(
                        f"tail -n 40 {stack.cluster.data}/log/*", shell=True, capture_output=True, text=True
                    ).stdout
                )
                print(subprocess.run(["df", "-i", str(walfs)], capture_output=True, text=True).stdout)
                print(
                    subprocess.run(
                        ["ls", "-la", str(walfs), str(walfs / "archive_status")], capture_output=True, text=True
                    ).stdout
                )
                raise
            finally:
                stack.close()  # before the filesystem goes: nothing may still write to it
    finally:
        shutil.rmtree(mount_root, ignore_errors=True)


def drill(stack: Stack, walfs: Path) -> None:
    """Make every condition, prove the dashboard rows, then the alerts."""
    primary = stack.cluster
    primary.psql("SELECT pg_create_physical_replication_slot('forgotten', true)")
    primary.psql("CREATE TABLE t AS SELECT 1 AS x")
    primary.psql("SELECT pg_switch_wal()")
    wait_for(lambda: archiver_counts(primary)[0] >= 1, 30, "a segment archived")
    standby = new_standby(primary, "precursors_standby")
    stack.watch(standby)

    # archive_command breaks: the next segment fails and keeps failing.
    primary.configure(archive_command="false")
    primary.reload()
    primary.psql("INSERT INTO t VALUES (2)")
    primary.psql("SELECT pg_switch_wal()")
    wait_for(lambda: archiver_counts(primary)[1] >= 1, 30, "an archive failure")

    with blocked_session(primary):
        fill(walfs, leave_bytes=LEFT_FREE, leave_inodes=4)
        doc = yaml.safe_load(BOARD.read_text())
        panels = panels_in_rows(doc, PRECURSOR_ROWS, inside=True)
        assert len(panels) >= 15

        def all_panels_show_data() -> bool:
            return not empty_queries(stack, panels)[1]

        try:
            wait_for(all_panels_show_data, 60, "every precursor panel to show data", interval=2)
        except TimeoutError:
            raise AssertionError("queries without data:\n" + "\n".join(empty_queries(stack, panels)[1])) from None

        # The standby loses its primary (a port nobody listens on): its receiver stops streaming.
        standby.configure(primary_conninfo=f"host=127.0.0.1 port=1 user={owner()} dbname=postgres")
        standby.reload()

        def fired() -> set[str]:
            return {a["alertname"] for a in stack.firing_alerts()} & FIRING

        try:
            wait_for(lambda: fired() == FIRING, 120, "every precursor alert to fire", interval=1)
        except TimeoutError:
            raise AssertionError(f"never fired: {sorted(FIRING - fired())}") from None
        labels = {a["alertname"]: a for a in stack.firing_alerts()}
        assert labels["PostgresFilesystemSpaceLow"]["holds"] == "wal"
        assert labels["PostgresFilesystemSpaceLow"]["path"] == str(walfs)
        assert labels["PostgresStandbyNotStreaming"]["pg_instance"] == "precursors_standby"
        assert labels["PostgresSessionsBlocked"]["pg_instance"] == "precursors"
        assert all(a["remediation"] == "none" for n, a in labels.items() if n in FIRING)

    # Nothing here is a crash: never reported down, nothing restarted.
    assert not stack.query('max_over_time(ALERTS{alertname=~"PostgresPostmasterDown|PostgresNotResponding"}[10m])')
    assert not [e for e in stack.events() if e["kind"] == "restart_started"], stack.events()
