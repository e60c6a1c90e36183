"""Where PostgreSQL really runs: who manages an instance is found (pgmedic.managers), and pgmedic acts
through that manager. Pure findings on files a test writes; then postgresql-common clusters made with
pg_createcluster (dropped afterwards, whatever happens), systemd found from real cgroups (systemd itself
cannot run here: pid 1 is not systemd, so `systemctl` is the one stand-in, named by PGMEDIC_SYSTEMCTL),
HA agents, and an administrator's clean stop that lands during the remediator's own start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from pgmedic import procfs
from pgmedic.config import InstanceConfig
from pgmedic.demo.sandbox import (
    Cluster,
    DebianCluster,
    as_owner,
    new_debian_cluster,
    owner,
    wait_for,
    write_config,
)
from pgmedic.failures import Failure, classify, server_reasons
from pgmedic.managers import (
    Host,
    ManagerKind,
    ManagerProblem,
    StartPolicy,
    debian_clusters,
    find_manager,
    load_unit,
    read_conf,
)
from pgmedic.pgcontrol import ClusterState, read_control_state
from tests.harness import Rig, alert_payload, pgmedic
from tests.ksys_sink import KsysSink

CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")


# ---- pure findings --------------------------------------------------------------------------------


def _host(tmp: Path) -> Host:
    etc = tmp / "etc"
    return Host(
        etc_postgresql=str(etc / "postgresql"), unit_dirs=(str(etc / "systemd"), str(tmp / "lib")),
        systemd_marker=str(tmp / "run-systemd-system"),
        patroni_configs=(str(etc / "patroni" / "*.yml"),), repmgr_configs=(str(etc / "repmgr.conf"),),
    )  # fmt: skip


def _instance(data: Path, **attrs: object) -> InstanceConfig:
    return InstanceConfig("x", owner(), "postgres", str(data), "test", **attrs)  # type: ignore[arg-type]


def test_a_postgresql_common_cluster_is_read_as_pg_lsclusters_reads_it(tmp_path: Path) -> None:
    host = _host(tmp_path)
    conf = Path(host.etc_postgresql) / "15" / "main"
    (conf / "conf.d").mkdir(parents=True)
    data = tmp_path / "data"
    (conf / "postgresql.conf").write_text(
        f"data_directory = '{data}'\t# use data in another directory\nport = 5433 # (change requires restart)\n"
        "unix_socket_directories = '/run/pg,/tmp'\ninclude_dir = 'conf.d'\n#port = 1\n"
    )
    (conf / "conf.d" / "override.conf").write_text("port = 5434\n")
    (conf / "start.conf").write_text("# Automatic startup configuration\nmanual\n")
    (cluster,) = debian_clusters(host)
    assert (cluster.version, cluster.name, cluster.data_directory) == ("15", "main", str(data))
    assert (cluster.port, cluster.socket_directory, cluster.start) == (5434, "/run/pg", StartPolicy.MANUAL)
    assert cluster.log_file == "/var/log/postgresql/postgresql-15-main.log"
    manager = find_manager(_instance(data), None, host)
    assert manager.kind is ManagerKind.PG_CTLCLUSTER and manager.cluster == cluster
    # systemd running and Debian's template installed: the cluster's unit is the manager
    Path(host.systemd_marker).mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "postgresql@.service").write_text("[Service]\nExecStart=-/usr/bin/pg_ctlcluster %i start\n")
    manager = find_manager(_instance(data), None, host)
    assert manager.kind is ManagerKind.SYSTEMD and manager.unit is not None
    assert manager.unit.name == "postgresql@15-main.service" and not manager.unit.restarts_itself


def test_an_installed_unit_naming_the_data_directory_manages_it_only_while_systemd_runs(tmp_path: Path) -> None:
    host = _host(tmp_path)
    units = Path(host.unit_dirs[0])
    (units / "postgresql-16.service.d").mkdir(parents=True)
    data = tmp_path / "pgdata"
    (units / "postgresql-16.service").write_text(
        "[Unit]\nDescription=PostgreSQL 16\n[Service]\nType=notify\nEnvironment=PGDATA=/var/lib/pgsql/16/data/\n"
        "ExecStart=/usr/pgsql-16/bin/postmaster -D ${PGDATA}\nRestart=no\n"
    )
    (units / "postgresql-16.service.d" / "override.conf").write_text(
        f"[Service]\nEnvironment=PGDATA={data}/\nRestart=on-failure\nRestartSec=3s\n"
    )
    assert find_manager(_instance(data), None, host).kind is ManagerKind.PG_CTL  # no systemd: nobody starts it
    Path(host.systemd_marker).mkdir()
    manager = find_manager(_instance(data), None, host)
    assert manager.kind is ManagerKind.SYSTEMD and manager.unit == load_unit("postgresql-16.service", host)
    assert manager.unit.restart == "on-failure" and manager.unit.restart_sec == 3.0 and manager.unit.restarts_itself
    assert find_manager(_instance(tmp_path / "other"), None, host).kind is ManagerKind.PG_CTL


def test_the_manager_setting_overrides_and_says_what_is_missing(tmp_path: Path) -> None:
    host = _host(tmp_path)
    data = tmp_path / "data"
    assert find_manager(_instance(data, manager="pg_ctl"), None, host).kind is ManagerKind.PG_CTL
    with pytest.raises(ManagerProblem, match=r"no cluster in .* has data directory"):
        find_manager(_instance(data, manager="pg_ctlcluster"), None, host)
    with pytest.raises(ManagerProblem, match=r"set unit: NAME\.service"):
        find_manager(_instance(data, manager="systemd"), None, host)
    forced = find_manager(_instance(data, manager="systemd", unit="pg.service"), None, host)
    assert forced.kind is ManagerKind.SYSTEMD and forced.unit is not None and forced.unit.name == "pg.service"


def test_an_ha_agents_configuration_naming_the_data_directory_means_observe_only(tmp_path: Path) -> None:
    host = _host(tmp_path)
    data = tmp_path / "data"
    (Path(host.etc_postgresql).parent / "patroni").mkdir(parents=True)
    (Path(host.etc_postgresql).parent / "patroni" / "a.yml").write_text(
        f"scope: demo\npostgresql:\n  data_dir: {tmp_path}/elsewhere\n"
    )
    assert find_manager(_instance(data), None, host).kind is ManagerKind.PG_CTL
    (Path(host.etc_postgresql).parent / "patroni" / "b.yml").write_text(f"postgresql:\n  data_dir: '{data}/'\n")
    manager = find_manager(_instance(data), None, host)
    assert manager.kind is ManagerKind.PATRONI and manager.observe_only and "b.yml" in manager.found
    (Path(host.etc_postgresql).parent / "repmgr.conf").write_text(f"node_id=1\ndata_directory='{tmp_path}/r'\n")
    manager = find_manager(_instance(tmp_path / "r"), None, host)
    assert manager.kind is ManagerKind.REPMGR and manager.observe_only


def test_read_conf_takes_the_last_value_and_quoted_values(tmp_path: Path) -> None:
    path = tmp_path / "postgresql.conf"
    path.write_text("port=1\nport = 2 # two\nlog_line_prefix = '%m [%p] ''q'' '\n  # port = 3\n")
    assert read_conf(str(path)) == {"port": "2", "log_line_prefix": "%m [%p] 'q' "}


def test_start_failure_reasons_come_from_the_server_never_from_client_connections() -> None:
    lines = [
        'postgres: could not access the server configuration file "/var/lib/postgresql/15/x/postgresql.conf": '
        "No such file or directory",
        "2026-12-05 01:00:00.000 UTC [10] FATAL:  the database system is starting up",
        '2026-12-05 01:00:00.100 UTC [11] root@template1 FATAL:  role "root" does not exist',
        "2026-12-05 01:00:00.200 UTC [12] [unknown]@[unknown] LOG:  could not receive data from client: reset",
        '2026-12-05 01:00:00.300 UTC [13] FATAL:  password authentication failed for user "app"',
    ]
    reasons = server_reasons(lines)
    assert reasons == [lines[0].removeprefix("postgres: ")], reasons
    assert classify(reasons) is Failure.CONFIG_ERROR
    unreadable = server_reasons(
        ['postgres: could not access the server configuration file "/d/postgresql.conf": Permission denied']
    )
    assert classify(unreadable) is Failure.CONFIG_ERROR, (
        "unreadable configuration is config_error, not permission_denied"
    )
    assert server_reasons(["2026-12-05 01:00:00 UTC [9] FATAL:  could not write lock file: No space left on device"])


# ---- postgresql-common clusters -------------------------------------------------------------------


@pytest.fixture
def debian() -> Iterator[DebianCluster]:
    cluster = new_debian_cluster(f"pgmt{uuid.uuid4().hex[:8]}")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def debian_rig(debian: DebianCluster, tmp_path: Path, services: list, ksys: KsysSink) -> Rig:
    rig = Rig(debian, tmp_path, services, ksys)
    rig.configure()
    return rig


def _lsclusters(cluster: DebianCluster) -> str:
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, timeout=30).stdout
    return next((line for line in listed.splitlines() if line.split()[:2] == [cluster.version, cluster.name]), "")


def test_a_debian_cluster_is_monitored_stopped_and_started_through_pg_ctlcluster(debian_rig: Rig) -> None:
    cluster = debian_rig.cluster
    assert isinstance(cluster, DebianCluster)
    config = debian_rig.config
    checked = pgmedic(None, "check-config", config=config)
    assert checked.returncode == 0 and f"manager pg_ctlcluster (cluster 15/{cluster.name}" in checked.stdout, (
        checked.stdout
    )
    name = cluster.name
    monitor = pgmedic(None, "monitor", name, config=config)
    assert monitor.returncode == 0, monitor.stdout  # as root, peer authentication refuses the login: still accepting
    query = json.loads(pgmedic(None, "query", "instance", name, "--json", config=config).stdout)
    assert query["manager"] == "pg_ctlcluster" and query["state"] == "accepting"
    stopped = pgmedic(None, "stop", name, config=config)
    assert stopped.returncode == 0 and "stopped (pg_ctlcluster stop)" in stopped.stdout, stopped.stdout + stopped.stderr
    assert " down " in _lsclusters(cluster)
    started = pgmedic(None, "start", name, config=config)
    assert started.returncode == 0, started.stdout + started.stderr
    assert " online " in _lsclusters(cluster)
    assert cluster.psql("SHOW config_file") == f"/etc/postgresql/15/{cluster.name}/postgresql.conf"
    assert cluster.pg_ctlcluster("stop").returncode == 0, "the distribution's tools still manage it"
    assert pgmedic(None, "monitor", name, config=config).returncode == 3


def test_kill_9_of_a_debian_cluster_is_repaired_through_pg_ctlcluster(debian_rig: Rig) -> None:
    cluster = debian_rig.cluster
    debian_rig.start()
    os.kill(cluster.postmaster_pid(), signal.SIGKILL)
    assert debian_rig.post(alert_payload("PostgresPostmasterDown", cluster.name))[0] == 200
    recovered = debian_rig.wait_event("recovered", timeout=60)
    started = next(e for e in debian_rig.events() if e["kind"] == "restart_started")
    assert started["manager"] == "pg_ctlcluster", started
    restarted = next(e for e in debian_rig.events() if e["kind"] == "restarted")
    assert any(step.startswith("pg_ctlcluster start: exit 0") for step in restarted["steps"]), restarted
    assert recovered["seconds_since_receipt"] < 30
    assert " online " in _lsclusters(cluster)  # type: ignore[arg-type]
    assert cluster.psql("SHOW config_file").startswith("/etc/postgresql/")
    assert cluster.pg_ctlcluster("stop").returncode == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", ["disabled", "manual"])
def test_start_conf_is_honoured(debian_rig: Rig, policy: str) -> None:
    cluster = debian_rig.cluster
    assert isinstance(cluster, DebianCluster)
    (cluster.config_dir / "start.conf").write_text(f"{policy}\n")
    debian_rig.start()
    os.kill(cluster.postmaster_pid(), signal.SIGKILL)
    assert debian_rig.post(alert_payload("PostgresPostmasterDown", cluster.name))[0] == 200
    skipped = debian_rig.wait_event("skipped")
    assert f"says {policy}" in skipped["reason"] and skipped["manager"] == "pg_ctlcluster", skipped
    time.sleep(1.0)
    assert "restart_started" not in debian_rig.kinds()
    assert pgmedic(None, "monitor", cluster.name, config=debian_rig.config).returncode == 3
    wait_for(lambda: not cluster.processes(), 15, "the killed server's processes to go")
    started = pgmedic(None, "start", cluster.name, config=debian_rig.config)
    if policy == "disabled":
        assert started.returncode == 2 and "start.conf" in started.stderr + started.stdout, started.stdout
        assert pgmedic(None, "monitor", cluster.name, config=debian_rig.config).returncode == 3
    else:  # manual: an explicit start is the administrator's
        assert started.returncode == 0, started.stdout + started.stderr
        assert pgmedic(None, "monitor", cluster.name, config=debian_rig.config).returncode == 0


def test_a_hung_debian_cluster_is_stopped_by_pgmedics_own_escalation(debian_rig: Rig) -> None:
    """pg_ctlcluster stop cannot stop a frozen server within stop_timeout: pgmedic escalates itself."""
    cluster = debian_rig.cluster
    assert isinstance(cluster, DebianCluster)
    pid = cluster.postmaster_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = pgmedic(None, "-l", "2", "stop", cluster.name, config=debian_rig.config)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert stopped.returncode == 0 and "stopped (" in stopped.stdout, stopped.stdout + stopped.stderr
    assert "pg_ctlcluster stop: timed out" in stopped.stderr and "pgmedic escalates" in stopped.stderr, stopped.stderr
    assert f"to postmaster {pid}" in stopped.stderr, "its own signals, through the verified postmaster's pidfd"
    wait_for(lambda: " down " in _lsclusters(cluster), 15, "pg_lsclusters to say down")
    started = pgmedic(None, "start", cluster.name, config=debian_rig.config)
    assert started.returncode == 0, started.stdout + started.stderr


def test_a_debian_cluster_that_cannot_start_fails_once_as_config_error(debian_rig: Rig) -> None:
    cluster = debian_rig.cluster
    assert isinstance(cluster, DebianCluster)
    debian_rig.configure(max_restart=3, restart_delay="0.2s")
    debian_rig.start()
    with open(cluster.config_dir / "postgresql.conf", "a") as f:
        f.write("shared_buffers = 'lots'\n")
    os.kill(cluster.postmaster_pid(), signal.SIGKILL)
    assert debian_rig.post(alert_payload("PostgresPostmasterDown", cluster.name))[0] == 200
    escalated = debian_rig.wait_event("escalated", timeout=40)
    time.sleep(0.5)
    kinds = Counter(debian_rig.kinds())
    assert kinds["restart_started"] == 1 and kinds["restart_failed"] == 1, kinds
    assert escalated["failure"] == "config_error" and "shared_buffers" in escalated["reason"], escalated


def test_pg_ctl_behind_a_debian_clusters_back_is_explained_as_config_error(debian_rig: Rig) -> None:
    """What a start with pg_ctl on such a cluster prints before its logging starts (no postgresql.conf in the
    data directory) is the reason, classed config_error: the gap this manager closes, shown with manager: pg_ctl."""
    cluster = debian_rig.cluster
    debian_rig.configure(manager="pg_ctl")
    assert cluster.pg_ctlcluster("stop").returncode == 0  # type: ignore[attr-defined]
    started = pgmedic(None, "start", cluster.name, config=debian_rig.config)
    assert started.returncode == 1 and "[config_error]" in started.stdout, started.stdout
    assert "could not access the server configuration file" in started.stdout, started.stdout


def test_an_unreadable_configuration_file_is_a_config_error(cluster: Cluster) -> None:
    cluster.pg_ctl("stop", "-m", "fast", "-w")
    conf = cluster.data / "postgresql.conf"
    conf.chmod(0o000)
    try:
        started = pgmedic(cluster, "start", cluster.name)
    finally:
        conf.chmod(0o600)
    assert started.returncode == 1 and "[config_error]" in started.stdout, started.stdout
    assert "could not open configuration file" in started.stdout and "Permission denied" in started.stdout


def test_client_lines_during_a_start_are_not_its_failure(cluster: Cluster) -> None:
    """A server that stays starting (archive recovery whose restore_command takes its time) and a client
    probing as an unknown role all the while: the start times out, and its explanation names neither."""
    cluster.pg_ctl("stop", "-m", "fast", "-w")
    cluster.configure(restore_command="sleep 20")
    (cluster.data / "recovery.signal").touch()
    cluster.write_config(start_timeout="4s")
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            subprocess.run(
                as_owner([os.path.join(cluster.bin_dir, "psql"), "-h", str(cluster.socket_dir), "-p", str(cluster.port),
                          "-U", "root", "-d", "postgres", "-c", "SELECT 1"]),
                capture_output=True, timeout=10,
            )  # fmt: skip
            time.sleep(0.1)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        started = pgmedic(cluster, "start", cluster.name)
    finally:
        done.set()
        prober.join(15)
    log = "".join(p.read_text(errors="replace") for p in (cluster.data / "log").glob("*"))
    assert any(said in log for said in ("not accepting connections", "not yet accepting", "starting up")), log[-2000:]
    assert started.returncode == 1 and "[timeout]" in started.stdout, started.stdout
    for client_said in ("starting up", "accepting connections", '"root"', "Hot standby"):
        assert client_said not in started.stdout, started.stdout


# ---- systemd, from real cgroups ------------------------------------------------------------------


@contextlib.contextmanager
def in_unit_cgroup(unit: str, pid: int) -> Iterator[Path]:
    """PID moved into system.slice/UNIT of the systemd hierarchy (as systemd would have put it), and its
    processes moved back and the cgroup removed afterwards."""
    root = next((Path(r) for r in CGROUP_ROOTS if (Path(r) / "cgroup.procs").exists()), None)
    if root is None:
        pytest.fail("no writable cgroup hierarchy: run the tests as root on a host with cgroups mounted")
    group = root / "system.slice" / unit
    group.mkdir(parents=True, exist_ok=True)
    try:
        (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        with contextlib.suppress(OSError):
            for left in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(left)
        for path in (group, group.parent):
            with contextlib.suppress(OSError):
                path.rmdir()


SYSTEMCTL_STAND_IN = """#!/bin/sh
# systemctl's stand-in (pid 1 is not systemd here): records each call; `start` puts itself into the unit's
# cgroup, as systemd would, then starts the server as its owner.
echo "$*" >> {calls}
case "$1" in
  start) echo $$ > {cgroup}/cgroup.procs
         exec runuser -u {owner} -- {pg_ctl} -D {data} start -w -t 30 -l {log} -o "-p {port}" ;;
  stop)  exec runuser -u {owner} -- {pg_ctl} -D {data} stop -m fast -w ;;
esac
"""


def _stand_in(trusted_dir: Path, cluster: Cluster, cgroup: Path) -> tuple[Path, Path]:
    calls = trusted_dir / "calls"
    script = trusted_dir / "systemctl"
    script.write_text(SYSTEMCTL_STAND_IN.format(
        calls=calls, cgroup=cgroup, owner=owner(), pg_ctl=os.path.join(cluster.bin_dir, "pg_ctl"), data=cluster.data,
        log=cluster.root / "unit.log", port=cluster.port,
    ))  # fmt: skip
    script.chmod(0o755)
    return script, calls


@pytest.mark.parametrize("restart", ["no", "on-failure", "on-failure, and systemd restarts it"])
def test_a_server_in_a_units_cgroup_is_restarted_through_systemctl(
    rig: Rig, trusted_dir: Path, monkeypatch: pytest.MonkeyPatch, restart: str
) -> None:
    """Found from the cgroup while it runs, remembered once it died; with Restart=, systemd gets its chance
    first (in the third case the test restarts it in the unit, as systemd would, and pgmedic does nothing)."""
    by_systemd = restart.endswith("restarts it")
    restart = restart.split(",")[0]
    cluster = rig.cluster
    unit = f"postgresql-pgmt{uuid.uuid4().hex[:8]}.service"
    unit_file = Path("/etc/systemd/system") / unit
    unit_file.parent.mkdir(parents=True, exist_ok=True)
    unit_file.write_text(f"[Service]\nEnvironment=PGDATA={cluster.data}\nRestart={restart}\nRestartSec=3s\n")
    try:
        with in_unit_cgroup(unit, cluster.postmaster_pid()) as cgroup:
            query = json.loads(pgmedic(None, "query", "instance", "main", "--json", config=rig.config).stdout)
            assert query["manager"] == "systemd" and query["managed_by"].startswith(unit), query
            script, calls = _stand_in(trusted_dir, cluster, cgroup)
            monkeypatch.setenv("PGMEDIC_SYSTEMCTL", str(script))
            rig.start()
            killed = cluster.postmaster_pid()
            os.kill(killed, signal.SIGKILL)
            assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
            if by_systemd:
                rig.wait_event("waiting")
                gone = lambda: not cluster.processes() and procfs.read_stat(killed) is None  # noqa: E731
                wait_for(gone, 15, "the killed server's processes and zombie to go")
                assert subprocess.run([str(script), "start", unit], capture_output=True, timeout=60).returncode == 0
                skipped = rig.wait_event("skipped", timeout=30)
                assert skipped["reason"] == f"restarted by systemd ({unit})", skipped
                assert "restart_started" not in rig.kinds()
                return
            rig.wait_event("recovered", timeout=60)
            assert calls.read_text().split("\n")[0] == f"start {unit}"
            waits = [e for e in rig.events() if e["kind"] == "waiting" and "systemd gets" in e.get("reason", "")]
            assert len(waits) == (1 if restart == "on-failure" else 0), waits
            assert str(procfs.read_file(f"/proc/{cluster.postmaster_pid()}/cgroup") or b"").count(unit), "in the unit"
            stopped = pgmedic(None, "stop", "main", config=rig.config)
            assert stopped.returncode == 0 and "systemd stop" in stopped.stdout, stopped.stdout + stopped.stderr
            assert calls.read_text().split("\n")[1] == f"stop {unit}"
    finally:
        unit_file.unlink()


# ---- HA agents -------------------------------------------------------------------------------------

AGENT = """import os, pwd, signal, subprocess, sys
entry = pwd.getpwnam(sys.argv[1])
os.setgid(entry.pw_gid); os.setuid(entry.pw_uid)
server = subprocess.Popen([sys.argv[2], "-D", sys.argv[3], "-p", sys.argv[4]], stderr=subprocess.DEVNULL)
signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGINT))  # a fast shutdown
sys.exit(server.wait())
"""


def test_a_postmaster_run_by_an_ha_agent_is_observed_only(rig: Rig, trusted_dir: Path) -> None:
    """A process named patroni runs the postmaster as its child: a hung server's alert is journaled
    observe only, nothing is signalled or started."""
    cluster = rig.cluster
    cluster.pg_ctl("stop", "-m", "fast", "-w")
    agent = trusted_dir / "patroni"
    agent.write_text(AGENT)
    proc = subprocess.Popen([sys.executable, str(agent), owner(), os.path.join(cluster.bin_dir, "postgres"),
                             str(cluster.data), str(cluster.port)])  # fmt: skip
    try:
        cluster.wait_accepting()
        query = json.loads(pgmedic(None, "query", "instance", "main", "--json", config=rig.config).stdout)
        assert query["manager"] == "patroni" and f"pid {proc.pid}" in query["managed_by"], query
        pid = cluster.postmaster_pid()
        refused = pgmedic(None, "stop", "main", config=rig.config)
        assert refused.returncode == 2 and "observe only: managed by patroni" in refused.stdout, refused.stdout
        rig.start()
        os.kill(pid, signal.SIGSTOP)
        try:
            assert rig.post(alert_payload("PostgresNotResponding", "main"))[0] == 200
            skipped = rig.wait_event("skipped", timeout=30)
            assert skipped["reason"].startswith("observe only: managed by patroni"), skipped
            assert "restart_started" not in rig.kinds()
            assert cluster.postmaster_pid() == pid and procfs.read_stat(pid) is not None
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_an_ha_agents_configuration_naming_the_data_directory_means_no_start(rig: Rig) -> None:
    conf = Path("/etc/repmgr") / f"pgmt{uuid.uuid4().hex[:8]}" / "repmgr.conf"
    conf.parent.mkdir(parents=True)
    try:
        conf.write_text(f"node_id=1\nnode_name='a'\ndata_directory='{rig.cluster.data}'\n")
        rig.start()
        os.kill(rig.cluster.postmaster_pid(), signal.SIGKILL)
        assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
        skipped = rig.wait_event("skipped")
        assert skipped["reason"].startswith("observe only: managed by repmgr") and str(conf) in skipped["reason"]
        time.sleep(1.0)
        assert "restart_started" not in rig.kinds()
        assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 3
    finally:
        conf.unlink()
        conf.parent.rmdir()
        with contextlib.suppress(OSError):
            conf.parent.parent.rmdir()


# ---- an administrator's clean stop ---------------------------------------------------------------


def test_a_clean_stop_is_recorded_in_pg_control(cluster: Cluster) -> None:
    before = read_control_state(str(cluster.data))
    assert before is not None and before.state is ClusterState.IN_PRODUCTION
    cluster.pg_ctl("stop", "-m", "fast", "-w")
    after = read_control_state(str(cluster.data))
    assert after is not None and after.shut_down_cleanly and after.time >= int(time.time()) - 5


def test_an_alert_for_a_cleanly_stopped_instance_does_not_undo_the_stop(rig: Rig) -> None:
    rig.start()
    assert rig.cluster.pg_ctl("stop", "-m", "fast", "-w").returncode == 0
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    stopped = rig.wait_event("stopped_by_administrator")
    assert "shut down cleanly" in stopped["reason"], stopped
    rig.wait_event("episode_stopped_by_administrator")
    assert "restart_started" not in rig.kinds()
    wait_for(lambda: "stopped_by_administrator" in rig.ksys.kinds(), 15, "KSYS to hear it (a critical instance)")
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 3


def _stop_when(cluster: Cluster, old_pid: int, ready: bool) -> Callable[[], bool]:
    """A stop issued the moment the remediator's new postmaster appears (or says ready): pg_ctl stop -m fast."""

    def attempt() -> bool:
        text = ""
        with contextlib.suppress(OSError):
            text = (cluster.data / "postmaster.pid").read_text()
        lines = text.split("\n")
        if not lines[0].strip().isdigit() or int(lines[0]) == old_pid:
            return False
        if ready and (len(lines) < 8 or lines[7].strip() != "ready"):
            return False
        cluster.pg_ctl("stop", "-m", "fast", "-w")
        return True

    return attempt


def test_a_stop_during_the_remediators_start_is_never_undone(rig: Rig) -> None:
    """Ten times: kill -9, the fast path starts the server, and an administrator's pg_ctl stop lands while
    that start (or its wait) is under way. The episode ends stopped_by_administrator and the server stays down."""
    rig.configure(max_restart=30, restart_delay="0.1s")
    write_config(
        rig.config, [rig.cluster], rig.state,
        remediator={"token_file": str(rig.token_file), "fast_path": True, "recovery_watch": "0s"},
    )  # fmt: skip
    rig.start()
    cluster = rig.cluster
    for round_number in range(10):
        if round_number:
            cluster.start()
        time.sleep(1.2)  # the fast path watches the new postmaster within a second
        old = cluster.postmaster_pid()
        os.kill(old, signal.SIGKILL)
        wait_for(_stop_when(cluster, old, ready=round_number % 2 == 1), 30, "the remediator's new postmaster", 0.005)
        ended = wait_for(
            lambda n=round_number: len([e for e in rig.events() if e["kind"] == "stopped_by_administrator"]) > n,
            30, f"round {round_number}: the episode to end stopped_by_administrator",
        )  # fmt: skip
        assert ended
        time.sleep(1.0)
        assert not (cluster.data / "postmaster.pid").exists(), f"round {round_number}: the stop was undone"
        wait_for(lambda: not cluster.processes(), 15, "the stopped server's processes to go")
    kinds = Counter(rig.kinds())
    assert kinds["restart_started"] == 10 and kinds["stopped_by_administrator"] == 10, kinds
    assert kinds["episode_stopped_by_administrator"] == 10, kinds


# ---- discover ------------------------------------------------------------------------------------


def test_discover_lists_and_adds_what_runs_here(debian: DebianCluster, cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "pgmedic.yaml"
    config.write_text(yaml.safe_dump({"remediator": {"state_dir": str(tmp_path / "state")}}))
    xml = tmp_path / "POSTGRESconfig.xml"
    xml.write_text(f'<POSTGRESConfig><POSTGRESinstance id="{owner()}"><data_directory>{tmp_path}/gone'
                   "</data_directory></POSTGRESinstance></POSTGRESConfig>")  # fmt: skip
    listed = pgmedic(None, "discover", "--json", f"configfile={xml}", config=config)
    assert listed.returncode == 0, listed.stderr
    found = {f["data_directory"]: f for f in json.loads(listed.stdout)}
    deb = found[str(debian.data)]
    assert (deb["name"], deb["manager"], deb["version"], deb["port"]) == (
        f"15-{debian.name}",
        "pg_ctlcluster",
        "15",
        debian.port,
    )
    assert deb["socket_directory"] == "/var/run/postgresql" and deb["owner"] == owner() and deb["running"]
    plain = found[str(cluster.data)]
    assert plain["found_by"] == "process" and plain["manager"] == "pg_ctl" and plain["port"] == cluster.port
    assert plain["name"] == "main", "named by its cluster_name"
    assert found[f"{tmp_path}/gone"]["found_by"] == "configfile"
    table = pgmedic(None, "discover", config=config)
    assert f"15-{debian.name}" in table.stdout and "pg_ctlcluster" in table.stdout
    bad = pgmedic(None, "discover", "--add", "no-such-thing", config=config)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    added = pgmedic(None, "discover", "--add", f"15-{debian.name}", plain["name"], config=config)
    assert added.returncode == 0, added.stdout + added.stderr
    assert pgmedic(None, "monitor", f"15-{debian.name}", config=config).returncode == 0
    assert pgmedic(None, "monitor", plain["name"], config=config).returncode == 0
    again = json.loads(pgmedic(None, "discover", "--json", config=config).stdout)
    assert {f["watched_as"] for f in again if f["data_directory"] in (str(debian.data), str(cluster.data))} == {
        f"15-{debian.name}",
        plain["name"],
    }
    audit = (tmp_path / "state" / "audit.log").read_text()
    assert '"discover", "--add"' in audit
