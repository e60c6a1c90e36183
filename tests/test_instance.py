"""The instance model and start/stop/monitor on real clusters, through the CLI as a supervisor calls it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgmedic.config import load_config
from pgmedic.demo.sandbox import Cluster, owner
from pgmedic.instance import Instance, State
from pgmedic.pidfile import parse_pid_file
from pgmedic.titles import classify_title
from tests.harness import pgmedic

# Runs on every PostgreSQL version of the matrix (tests/conftest.py), except those marked one_pg.
pytestmark = pytest.mark.every_pg


def monitor(cluster: Cluster) -> subprocess.CompletedProcess[str]:
    return pgmedic(cluster, "monitor", cluster.name)


def instance(cluster: Cluster) -> Instance:
    return Instance(load_config(str(cluster.config_path)).instance(cluster.name))


def test_monitor_start_stop_codes(cluster: Cluster) -> None:
    assert monitor(cluster).returncode == 0
    stopped = pgmedic(cluster, "stop", cluster.name)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped (fast)" in stopped.stdout
    assert monitor(cluster).returncode == 3
    assert not (cluster.data / "postmaster.pid").exists()
    again = pgmedic(cluster, "stop", "instance", cluster.name)
    assert again.returncode == 0 and "not running" in again.stdout
    started = pgmedic(cluster, "start", cluster.name)
    assert started.returncode == 0, started.stdout + started.stderr
    assert monitor(cluster).returncode == 0
    assert cluster.psql("SELECT 1") == "1"


def test_start_while_running_is_refused_and_harmless(cluster: Cluster) -> None:
    pid = cluster.postmaster_pid()
    result = pgmedic(cluster, "start", cluster.name)
    assert result.returncode == 1
    assert f"refused: postmaster {pid} is already running" in result.stdout
    assert cluster.postmaster_pid() == pid
    assert monitor(cluster).returncode == 0


def test_kill_9_reads_not_running_and_start_copes_with_the_zombie(cluster: Cluster) -> None:
    pid = cluster.postmaster_pid()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    result = monitor(cluster)
    assert result.returncode == 3, result.stdout
    assert "stale postmaster.pid" in result.stdout
    assert (cluster.data / "postmaster.pid").exists(), "pgmedic never deletes postmaster.pid"
    started = pgmedic(cluster, "start", cluster.name)
    assert started.returncode == 0, started.stdout + started.stderr
    assert cluster.postmaster_pid() != pid
    assert monitor(cluster).returncode == 0


def test_sigstop_reads_not_responding_within_timeout(cluster: Cluster) -> None:
    pid = cluster.postmaster_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        result = monitor(cluster)
        took = time.monotonic() - began
        assert result.returncode == 1, result.stdout
        assert "not_responding" in result.stdout and "SIGSTOP" in result.stdout
        assert took < 2 + 5, f"monitor took {took:.1f}s with a 2s monitor_timeout"  # 5 s: interpreter start-up
    finally:
        os.kill(pid, signal.SIGCONT)


def test_stop_escalates_to_sigkill_on_a_frozen_postmaster(cluster: Cluster) -> None:
    pid = cluster.postmaster_pid()
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    os.kill(pid, signal.SIGSTOP)
    result = pgmedic(cluster, "-l", "2", "stop", cluster.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped (SIGKILL)" in result.stdout
    assert f"SIGINT to postmaster {pid} of {cluster.data}" in result.stderr, result.stderr
    assert f"SIGQUIT to postmaster {pid}" in result.stderr and f"SIGKILL to postmaster {pid}" in result.stderr
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[1][:3]
    started = pgmedic(cluster, "start", cluster.name)
    assert started.returncode == 0, started.stdout + started.stderr
    assert monitor(cluster).returncode == 0


def test_stale_pid_file_with_reused_pid_reads_not_running(cluster: Cluster) -> None:
    pgmedic(cluster, "stop", cluster.name)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        text = f"{sleeper.pid}\n{cluster.data}\n{int(time.time()) - 3600}\n{cluster.port}\n{cluster.socket_dir}\n"
        text += "127.0.0.1\n  5432001     32768\nready   \n"
        (cluster.data / "postmaster.pid").write_text(text)
        result = monitor(cluster)
        assert result.returncode == 3, result.stdout
        assert f"pid {sleeper.pid} is not this instance's postmaster" in result.stdout
        assert instance(cluster).stale_pid_file()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_missing_data_directory_is_4(cluster: Cluster) -> None:
    cluster.write_config(data_directory=str(cluster.root / "absent"))
    result = monitor(cluster)
    assert result.returncode == 4
    assert "does not exist" in result.stdout


def test_user_scripts_replace_builtins_and_hang_is_killed(cluster: Cluster, trusted_dir: Path) -> None:
    """Scripts run as the owner by default, told about the instance; a hung one dies with its process group."""
    out = cluster.root  # owned by the instance owner, who runs the scripts
    marker = out / "env.txt"
    script = trusted_dir / "monitor.sh"
    script.write_text(f"#!/bin/sh\n{{ id -un; env | grep -E '^(PG|PGMEDIC_)' | sort; }} > {marker}\nexit 3\n")
    script.chmod(0o755)
    hang = trusted_dir / "hang.sh"
    hang.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {out / 'child.pid'}\nsleep 300\n")
    hang.chmod(0o755)
    cluster.write_config(monitor_script=str(script), stop_script=str(hang), stop_timeout="1s")
    result = monitor(cluster)
    assert result.returncode == 3, result.stdout + result.stderr
    env = marker.read_text()
    assert env.splitlines()[0] == owner(), "scripts_run_as defaults to the instance owner"
    for expected in (f"PGDATA={cluster.data}", f"PGPORT={cluster.port}", f"PGUSER={owner()}", "PGDATABASE=postgres"):
        assert expected in env
    assert f"PGMEDIC_INSTANCE={cluster.name}" in env
    began = time.monotonic()
    stopped = pgmedic(cluster, "stop", cluster.name)
    assert stopped.returncode == 1 and "timed out" in stopped.stdout
    assert time.monotonic() - began < 10
    child = int((out / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the script's whole process group is killed"
    assert monitor(cluster).returncode == 3, "the user's monitor script decides"


def test_probe_states_from_the_model(cluster: Cluster) -> None:
    probe = instance(cluster).probe()
    assert probe.state is State.ACCEPTING
    assert probe.postmaster is not None and probe.postmaster.pid == cluster.postmaster_pid()
    kinds = {c.backend_type for c in probe.postmaster.children()}
    assert {"checkpointer", "background_writer", "walwriter", "autovacuum_launcher", "logger"} <= kinds


def test_cli_add_query_modify_suspend_delete(tmp_path: Path, cluster: Cluster) -> None:
    xml = tmp_path / "POSTGRESconfig.xml"
    xml.write_text(
        f'<?xml version="1.0"?>\n<POSTGRESConfig>\n  <POSTGRESinstance id="{owner()}">\n'
        f"    <data_directory>{cluster.data}</data_directory>\n  </POSTGRESinstance>\n</POSTGRESConfig>\n"
    )
    cfg = cluster.root / "cli" / "pgmedic.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"remediator:\n  state_dir: {cluster.state_dir}\n")
    args = ("-s", "add", "app", "postgresqlapp", "type=POSTGRES", f"instancename={owner()}", "database=postgres")
    added = pgmedic(None, *args, f"configfile={xml}", f"port={cluster.port}", f"host={cluster.socket_dir}", config=cfg)
    assert added.returncode == 0, added.stderr
    assert (cfg.parent / "instances.d" / "postgresqlapp.yaml").exists()
    assert cfg.read_text().startswith("remediator"), "the hand-edited main file is untouched"
    dup = pgmedic(None, *args, f"configfile={xml}", config=cfg)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    bad = pgmedic(
        None,
        "add",
        "app",
        "x",
        "type=POSTGRES",
        f"instancename={owner()}",
        "database=d",
        "configfile=rel.xml",
        config=cfg,
    )
    assert bad.returncode == 2 and "must be an absolute path" in bad.stderr
    assert not (cfg.parent / "instances.d" / "x.yaml").exists(), "without a valid configfile nothing is added"
    query = pgmedic(None, "query", "app", "postgresqlapp", config=cfg)
    assert query.returncode == 0
    assert f"data_directory:         {cluster.data}" in query.stdout
    assert "state:                  accepting" in query.stdout
    modified = pgmedic(None, "modify", "instance", "postgresqlapp", "critical=true", "max_restart=5", config=cfg)
    assert modified.returncode == 0, modified.stderr
    assert "max_restart: 5" in (cfg.parent / "instances.d" / "postgresqlapp.yaml").read_text()
    assert pgmedic(None, "suspend", "instance", "postgresqlapp", config=cfg).returncode == 0
    assert "remediation:            suspended" in pgmedic(None, "query", "app", config=cfg).stdout
    assert pgmedic(None, "resume", "instance", "postgresqlapp", config=cfg).returncode == 0
    assert pgmedic(None, "delete", "app", "postgresqlapp", config=cfg).returncode == 0
    assert pgmedic(None, "query", "app", "postgresqlapp", config=cfg).returncode == 2
    audit = [json.loads(line) for line in (cluster.state_dir / "audit.log").read_text().splitlines()]
    verbs = {"add", "modify", "suspend", "resume", "delete"}
    assert [next(w for w in entry["argv"] if w in verbs) for entry in audit] == [
        "add",
        "add",
        "add",
        "modify",
        "suspend",
        "resume",
        "delete",
    ]
    assert audit[1]["result"].startswith("refused: ") and audit[0]["result"] == "ok" and audit[0]["user"]
    assert (cluster.state_dir / "audit.log").stat().st_mode & 0o777 == 0o600


def test_ksysvmmgr_line_with_the_command_replaced(tmp_path: Path) -> None:
    """A user's own `ksysvmmgr -s add application …` line works with only the command name changed."""
    xml = tmp_path / "POSTGRESconfig.xml"
    xml.write_text(
        f'<POSTGRESConfig><POSTGRESinstance id="{owner()}"><data_directory>/srv/pg</data_directory>'
        "</POSTGRESinstance></POSTGRESConfig>"
    )
    line = f"-s add application postgresqlapp instancename={owner()} database=testdb type=POSTGRES configfile={xml}"
    result = pgmedic(None, *line.split(), config=tmp_path / "pgmedic.yaml")
    assert result.returncode == 0, result.stderr
    assert pgmedic(None, "check-config", config=tmp_path / "pgmedic.yaml").returncode == 0


TITLES = {
    "postgres: checkpointer   ": "checkpointer",
    "postgres: main: background writer": "background_writer",
    "postgres: writer process   ": "background_writer",
    "postgres: wal writer process": "walwriter",
    "postgres: walwriter": "walwriter",
    "postgres: logger process": "logger",
    "postgres: main: logger": "logger",
    "postgres: autovacuum launcher process": "autovacuum_launcher",
    "postgres: autovacuum worker testdb": "autovacuum_worker",
    "postgres: stats collector process": "stats_collector",
    "postgres: archiver last was 000000010000000000000001": "archiver",
    "postgres: bgworker: logical replication launcher": "logical_replication_launcher",
    "postgres: main: logical replication launcher": "logical_replication_launcher",
    "postgres: parallel worker for PID 4242": "parallel_worker",
    "postgres: startup recovering 000000010000000000000003": "startup",
    "postgres: walreceiver streaming 0/3000148": "walreceiver",
    "postgres: walsender repl 127.0.0.1(40000) streaming 0/3000148": "walsender",
    "postgres: alice testdb [local] idle": "client_backend",
    "postgres: main: alice testdb 10.1.2.3(51234) SELECT": "client_backend",
    "postgres: bob db 127.0.0.1(5432) idle in transaction": "client_backend",
    "postgres: pg_cron launcher": "background_worker",
    "/usr/lib/postgresql/15/bin/postgres -D /srv/pg": None,
}


@pytest.mark.parametrize("title", sorted(TITLES))
def test_classify_title(title: str) -> None:
    assert classify_title(title) == TITLES[title]


def test_parse_pid_file_every_line() -> None:
    pf = parse_pid_file("2935\n/tmp/pgt/data\n1795816290\n55432\n/tmp/pgt\nlocalhost\n  2146465         4\nready   \n")
    assert pf is not None
    assert (pf.pid, pf.data_directory, pf.start_time, pf.port) == (2935, "/tmp/pgt/data", 1795816290, 55432)
    assert (pf.socket_directory, pf.listen_address, pf.shmem_key, pf.shmem_id, pf.status) == (
        "/tmp/pgt",
        "localhost",
        2146465,
        4,
        "ready",
    )
    assert parse_pid_file("") is None and parse_pid_file("garbage\n") is None


def test_cli_entry_point_help() -> None:
    out = subprocess.run([sys.executable, "-m", "pgmedic", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "monitor" in out.stdout


def test_monitor_says_full_when_ordinary_clients_are_refused(cluster: Cluster, pg_major: int) -> None:
    """Every non-reserved slot taken: pgmedic's own superuser connection still works, but the server is
    full for clients, and the monitor says so (exit 1), never "healthy". From 16, reserved_connections
    (5 here) counts too."""
    import psycopg

    reserved = 5 if pg_major >= 16 else 0
    if reserved:
        cluster.pg_ctl("stop", "-m", "fast")
        cluster.configure(reserved_connections=reserved)
        cluster.start()
    cluster.psql("CREATE ROLE app LOGIN")
    usable = int(cluster.psql(f"SELECT current_setting('max_connections')::int - 3 - {reserved}"))
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user=app"
    clients = [psycopg.connect(dsn) for _ in range(usable)]
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=5)
        result = monitor(cluster)
        assert result.returncode == 1, result.stdout
        assert f"full: {usable} of {usable} client slots taken" in result.stdout
    finally:
        for c in clients:
            c.close()
    assert monitor(cluster).returncode == 0
