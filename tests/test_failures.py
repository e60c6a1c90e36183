"""Failed starts explained: the server's own FATAL lines and a class, from the CLI to the journal and KSYS.

The classifier is tested on the lines PostgreSQL really writes (fast); the rest on real clusters of
every version: a taken port, an old server's leftover holding the data directory, a pid file naming
someone else's live process, a configuration error, a missing data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from pgmedic.demo.sandbox import as_owner, http, owner, small_filesystem, wait_for
from pgmedic.failures import Failure, LogMark, classify
from tests.harness import Rig, alert_payload, pgmedic
from tests.test_remediator import kill_postmaster

pytestmark = pytest.mark.every_pg


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (['LOG:  could not bind IPv4 address "127.0.0.1": Address already in use',
          "FATAL:  could not create any TCP/IP sockets"], Failure.PORT_IN_USE),
        (['FATAL:  lock file "/run/sock/.s.PGSQL.5432.lock" already exists'], Failure.PORT_IN_USE),
        (['FATAL:  lock file "postmaster.pid" already exists'], Failure.PID_FILE_CONFLICT),
        (["FATAL:  pre-existing shared memory block (key 5432001, ID 3) is still in use"], Failure.PID_FILE_CONFLICT),
        (['FATAL:  data directory "/srv/pg" does not exist'], Failure.DATA_DIRECTORY_MISSING),
        (['FATAL:  data directory "/srv/pg" has invalid permissions'], Failure.PERMISSION_DENIED),
        (['LOG:  syntax error in file "/srv/pg/postgresql.conf" line 3, near token "="',
          'FATAL:  configuration file "/srv/pg/postgresql.conf" contains errors'], Failure.CONFIG_ERROR),
        (['FATAL:  invalid value for parameter "max_connections": "many"'], Failure.CONFIG_ERROR),
        (["pg_ctl: server did not start in time"], Failure.TIMEOUT),
        (['FATAL:  could not write to file "pg_wal/xlogtemp.20404": No space left on device'], Failure.DISK_FULL),
        (["FATAL:  could not map anonymous shared memory: Cannot allocate memory"], Failure.OTHER),
    ],
)  # fmt: skip
def test_classify_reads_the_servers_own_lines(lines: list[str], expected: Failure) -> None:
    assert classify(lines) is expected


def test_log_mark_reads_only_new_lines_and_never_through_a_symlink(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = tmp_path / "server.log"
    log.write_text('2026-01-01 00:00:00 UTC [1] FATAL:  lock file "postmaster.pid" already exists\n')
    mark = LogMark.take(str(data), str(log))
    with log.open("a") as f:
        f.write("2026-01-01 00:00:01 UTC [2] LOG:  starting\n2026-01-01 00:00:01 UTC [2] FATAL:  boom\x1b[2J\n")
    assert mark.reasons() == ["FATAL: boom [2J"]
    secret = tmp_path / "secret"
    secret.write_text("FATAL: a line of a file the owner must not make root read\n")
    log.unlink()
    log.symlink_to(secret)
    assert mark.reasons() == []


# ---- on real clusters -----------------------------------------------------------------------------


def test_a_taken_port_is_explained_by_the_cli_and_the_journal(rig: Rig) -> None:
    cluster = rig.cluster
    rig.configure(max_restart=2, restart_delay="0.2s")
    cluster.pg_ctl("stop", "-m", "immediate")  # not a clean stop: an alert for it is a failure to repair
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", cluster.port))
        squatter.listen()
        cli = pgmedic(None, "start", "main", config=rig.config)
        assert cli.returncode == 1
        assert "port_in_use" in cli.stdout and "Address already in use" in cli.stdout, cli.stdout
        assert len(cli.stdout.strip().splitlines()) == 1

        rig.start()
        assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
        rig.wait_event("escalated", timeout=30)
    failed = [e for e in rig.events() if e["kind"] == "restart_failed"]
    assert len(failed) == 2 and all(e["failure"] == "port_in_use" for e in failed)
    assert all("Address already in use" in e["message"] for e in failed)
    escalated = next(e for e in rig.events() if e["kind"] == "escalated")
    assert escalated["failure"] == "port_in_use" and escalated["reason"] == "restart budget spent"
    wait_for(lambda: "restart_failed" in rig.ksys.kinds(), 15, "the failure at KSYS")
    at_ksys = next(e for e in rig.ksys.events if e["event"] == "restart_failed")
    assert at_ksys["detail"]["failure"] == "port_in_use" and "Address already in use" in at_ksys["detail"]["message"]
    _, metrics = http("GET", rig.url + "/metrics")
    assert 'failure="port_in_use"' in metrics and 'result="failed"' in metrics


@pytest.mark.pg(15, 18)  # waits out the 10 s leftover bound
def test_an_old_servers_leftover_holding_the_data_directory_is_the_servers_own_fatal(rig: Rig) -> None:
    """kill -9 of the postmaster while a backend is frozen: the backend keeps the old shared memory, and
    PostgreSQL refuses to start (pgmedic waits for it, bounded, then lets the server say why)."""
    cluster = rig.cluster
    client = psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user=owner(), dbname="postgres")
    try:
        os.kill(client.info.backend_pid, signal.SIGSTOP)
        kill_postmaster(cluster)
        cli = pgmedic(None, "start", "main", config=rig.config, timeout=60)
        assert cli.returncode == 1, cli.stdout
        assert "pid_file_conflict" in cli.stdout and "pre-existing shared memory block" in cli.stdout, cli.stdout
    finally:
        with contextlib.suppress(OSError):
            os.kill(client.info.backend_pid, signal.SIGKILL)
        client.close()


def test_a_pid_file_naming_someone_elses_process_is_refused_with_its_class(rig: Rig) -> None:
    cluster = rig.cluster
    cluster.pg_ctl("stop", "-m", "fast")
    squatter = subprocess.Popen(as_owner(["sleep", "60"]))
    try:
        pid = wait_for(lambda: _owner_child(squatter.pid), 5, "the owner's sleep")
        (cluster.data / "postmaster.pid").write_text(f"{pid}\n{cluster.data}\n0\n{cluster.port}\n\n\n\n")
        cli = pgmedic(None, "start", "main", config=rig.config)
        assert cli.returncode == 1 and "pid_file_conflict" in cli.stdout and str(pid) in cli.stdout, cli.stdout
        assert (cluster.data / "postmaster.pid").exists(), "never deleted"
    finally:
        squatter.kill()
        squatter.wait(5)


def _owner_child(runuser_pid: int) -> int | None:
    """The sleep runuser started (its child), or runuser's own pid once it exec'd."""
    try:
        children = Path(f"/proc/{runuser_pid}/task/{runuser_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def test_a_configuration_error_fails_once_without_retries(rig: Rig) -> None:
    cluster = rig.cluster
    rig.configure(max_restart=3, restart_delay="0.2s")
    cluster.pg_ctl("stop", "-m", "immediate")  # not a clean stop: an alert for it is a failure to repair
    with open(cluster.data / "postgresql.conf", "a") as f:
        f.write("max_connections = 'many'\n")
    rig.start()
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    escalated = rig.wait_event("escalated", timeout=30)
    time.sleep(1.0)
    kinds = Counter(rig.kinds())
    assert kinds["restart_started"] == 1 and kinds["restart_failed"] == 1 and kinds["failed"] == 1, kinds
    assert escalated["failure"] == "config_error" and "max_connections" in escalated["reason"]
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 5


def test_a_missing_data_directory_spends_no_budget_and_escalates_once_with_its_class(rig: Rig) -> None:
    cluster = rig.cluster
    rig.start()
    moved = cluster.root / "moved-away"
    kill_postmaster(cluster)
    wait_for(lambda: not cluster.processes(), 10, "the old server's processes to go")
    shutil.move(cluster.data, moved)
    try:
        assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
        escalated = rig.wait_event("escalated", timeout=30)
        assert escalated["failure"] == "data_directory_missing" and "does not exist" in escalated["reason"]
        assert rig.post(alert_payload("PostgresPostmasterDown", "main", fingerprint="again"))[0] == 200
        time.sleep(1.5)
        kinds = Counter(rig.kinds())
        assert kinds["restart_started"] == 0 and kinds["failed"] == 1 and kinds["escalated"] == 1, kinds
        wait_for(lambda: "escalated" in rig.ksys.kinds(), 15, "the escalation at KSYS")
        assert Counter(rig.ksys.kinds())["escalated"] == 1
        at_ksys = next(e for e in rig.ksys.events if e["event"] == "escalated")
        assert at_ksys["detail"]["failure"] == "data_directory_missing"
        _, body = http("GET", rig.url + "/api/v1/status")
        assert body["instances"]["main"]["state"] == "failed"
        monitor = pgmedic(None, "monitor", "main", config=rig.config)
        assert monitor.returncode == 4, monitor.stdout  # the specific code, not FAILED's 5
    finally:
        shutil.move(moved, cluster.data)


@pytest.mark.one_pg
def test_a_full_wal_filesystem_fails_once_as_disk_full_and_starts_once_space_is_freed(rig: Rig) -> None:
    """pg_wal on a small filesystem, filled until the server PANICs and cannot finish crash recovery: one start
    attempt, classed disk_full, FAILED and escalated; after space is freed and the instance resumed, it starts."""
    cluster = rig.cluster
    cluster.pg_ctl("stop", "-m", "fast", "-w")
    with small_filesystem(cluster.root / "walfs", 48) as walfs:
        cluster.move_wal(walfs)
        cluster.start()
        rig.configure(max_restart=3, restart_delay="0.2s")
        rig.start()
        st = os.statvfs(walfs)
        filler = walfs / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 1024 * 1024))
        with contextlib.suppress(RuntimeError):  # the server may die under this very statement
            cluster.psql("CREATE TABLE t AS SELECT 1 AS x; SELECT pg_switch_wal(); INSERT INTO t VALUES (2)")
        wait_for(lambda: not cluster.processes(), 30, "the server to stop on the full WAL filesystem")
        assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
        escalated = rig.wait_event("escalated", timeout=60)
        time.sleep(1.0)
        kinds = Counter(rig.kinds())
        assert kinds["restart_started"] == 1 and kinds["failed"] == 1, kinds
        assert escalated["failure"] == "disk_full" and "No space left on device" in escalated["reason"], escalated

        filler.unlink()
        assert pgmedic(None, "resume", "instance", "main", config=rig.config).returncode == 0
        assert rig.post(alert_payload("PostgresPostmasterDown", "main", fingerprint="after-freeing"))[0] == 200
        rig.wait_event("restarted", timeout=60)
        cluster.wait_accepting()
        cluster.destroy()  # nothing may hold the filesystem when it is unmounted
