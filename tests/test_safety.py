"""Safety as root, on real clusters: pgmedic acts only on the verified postmaster, runs only trusted
code, accepts only clean input and keeps its own files private."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgmedic import procfs
from pgmedic.config import load_config
from pgmedic.demo.sandbox import Cluster, free_port, http, owner, pgmedic_service, wait_for, write_config, write_secret
from pgmedic.instance import Instance, Verdict
from pgmedic.signals import open_handle
from tests.harness import alert_payload, pgmedic
from tests.test_exporter import scrape, value

TOKEN = "safety-token"


def identity(cluster: Cluster) -> tuple[int, int]:
    """(pid, start ticks) of the cluster's postmaster: the same pair means the very same process."""
    pid = cluster.postmaster_pid()
    st = procfs.read_stat(pid)
    assert st is not None
    return pid, st.start_ticks


def copy_pid_file(source: Cluster, target: Cluster) -> None:
    """What cp -a, rsync or a snapshot of a running data directory leaves in the copy."""
    shutil.copy2(source.data / "postmaster.pid", target.data / "postmaster.pid")
    uid = pwd.getpwnam(owner()).pw_uid
    os.chown(target.data / "postmaster.pid", uid, -1)


@pytest.fixture
def copied(make_cluster: Callable[..., Cluster]) -> tuple[Cluster, Cluster]:
    """B runs; A is stopped and holds a copy of B's postmaster.pid."""
    b = make_cluster("bravo")
    a = make_cluster("alpha", start=False)
    copy_pid_file(b, a)
    return a, b


def test_copied_pid_file_is_stale_for_monitor_start_and_stop(copied: tuple[Cluster, Cluster]) -> None:
    a, b = copied
    before = identity(b)
    monitor = pgmedic(a, "monitor", a.name)
    assert monitor.returncode == 3, monitor.stdout + monitor.stderr
    assert f"another data directory, {b.data}" in monitor.stdout
    inst = Instance(load_config(str(a.config_path)).instance(a.name))
    assert inst.identify().verdict is Verdict.STALE and inst.stale_pid_file()

    started = pgmedic(a, "start", a.name)
    assert started.returncode == 1
    line = started.stdout.strip()
    assert "\n" not in line and f"names pid {before[0]}" in line and str(b.data) in line, line
    assert "never deletes postmaster.pid" in line
    assert (a.data / "postmaster.pid").read_text() == (b.data / "postmaster.pid").read_text()

    stopped = pgmedic(a, "stop", a.name)
    assert stopped.returncode == 0 and "not running" in stopped.stdout, stopped.stdout + stopped.stderr
    assert "SIG" not in stopped.stderr, "no signal may be sent for a stale pid file"
    assert identity(b) == before, "B's postmaster is the same process"
    assert b.psql("SELECT 1") == "1"


def test_copied_pid_file_in_the_exporter(copied: tuple[Cluster, Cluster], tmp_path: Path, services: list) -> None:
    a, b = copied
    cfg = write_config(tmp_path / "pgmedic.yaml", [a, b], tmp_path / "state")
    service = pgmedic_service("exporter", cfg, tmp_path)
    services.append(service)
    samples, _ = scrape(service, timeout_header=5)
    assert value(samples, "pg_postmaster_up", pg_instance=a.name) == 0
    assert value(samples, "pg_postmaster_stale_pid_file", pg_instance=a.name) == 1
    assert value(samples, "pg_up", pg_instance=a.name) == 0
    assert value(samples, "pg_client_connections", pg_instance=a.name) == 0, "B's backends are not A's"
    assert value(samples, "pg_postmaster_up", pg_instance=b.name) == 1
    assert value(samples, "pg_up", pg_instance=b.name) == 1


def test_not_responding_episode_for_a_copied_pid_file_leaves_the_other_cluster_alone(
    copied: tuple[Cluster, Cluster], tmp_path: Path, services: list
) -> None:
    a, b = copied
    before = identity(b)
    a.extra.update(max_restart=1, restart_delay="0.1s")
    token = write_secret(tmp_path / "token", TOKEN)
    cfg = write_config(tmp_path / "pgmedic.yaml", [a, b], tmp_path / "state", remediator={"token_file": str(token)})
    service = pgmedic_service("remediator", cfg, tmp_path, free_port())
    services.append(service)
    status, _ = http("POST", service.url + "/api/v1/alerts", alert_payload("PostgresNotResponding", a.name), TOKEN)
    assert status == 200

    def finished() -> list[dict] | None:
        _, body = http("GET", service.url + "/api/v1/events?limit=1000")
        events = [e for e in body["events"] if e.get("instance") == a.name]
        return events if any(e["kind"].startswith("episode_") for e in events) else None

    events = wait_for(finished, 60, "the episode for A to end")
    kinds = [e["kind"] for e in events]
    assert "recovered" not in kinds and "episode_done" not in kinds, kinds
    failed = next(e for e in events if e["kind"] == "restart_failed")
    assert f"names pid {before[0]}" in failed["message"]
    assert identity(b) == before, "B's postmaster was neither stopped nor killed"
    assert b.psql("SELECT 1") == "1"
    assert (a.data / "postmaster.pid").exists()


def test_stop_signals_only_through_a_pidfd_of_the_verified_postmaster(cluster: Cluster) -> None:
    pid = cluster.postmaster_pid()
    result = pgmedic(cluster, "stop", cluster.name)
    assert result.returncode == 0 and "stopped (fast)" in result.stdout, result.stdout + result.stderr
    assert f"SIGINT to postmaster {pid} of {cluster.data} (fast shutdown: pgmedic stop by" in result.stderr
    assert not (cluster.data / "postmaster.pid").exists()


def _spawn_with_pid(pid: int, user: str | None = None) -> subprocess.Popen[bytes] | None:
    """Start `sleep` so that it gets PID (as root, through ns_last_pid); None if another fork took it."""
    argv = ["sleep", "60"] if user is None else ["runuser", "-u", user, "--", "sleep", "60"]
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    proc = subprocess.Popen(argv, start_new_session=True)
    if proc.pid == pid:
        return proc
    proc.kill()
    proc.wait()
    return None


@pytest.fixture
def reused() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_pid_reused_between_verification_and_signal_is_not_hit(reused: list) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test makes the kernel reuse a pid through /proc/sys/kernel/ns_last_pid: run it as root")
    for _ in range(20):
        victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
        st = procfs.read_stat(victim.pid)
        assert st is not None
        handle = open_handle(victim.pid, st.start_ticks, "postmaster", "/test")
        assert handle is not None
        time.sleep(0.03)  # start times tick at 10 ms: the newcomer must not share the victim's tick
        victim.kill()
        victim.wait()  # exited and reaped: the pid is free for the next fork
        newcomer = _spawn_with_pid(victim.pid)
        if newcomer is None:
            handle.close()
            continue
        reused.append(newcomer)
        try:
            line = handle.send(signal.SIGKILL, "test")
        finally:
            handle.close()
        assert line.endswith("already exited"), line
        time.sleep(0.1)
        assert newcomer.poll() is None, "the process that reused the pid was hit"
        # And a handle is refused for a verification that no longer holds: same pid, other process.
        assert open_handle(victim.pid, st.start_ticks, "postmaster", "/test") is None
        return
    pytest.fail("the kernel never handed out the freed pid again in 20 tries")


def test_a_postmaster_whose_pid_was_reused_after_verification_is_not_signalled(cluster: Cluster, reused: list) -> None:
    """The Postmaster verified before the crash cannot be turned into a signal to the pid's next owner."""
    if os.geteuid() != 0:
        pytest.fail("this test makes the kernel reuse a pid through /proc/sys/kernel/ns_last_pid: run it as root")
    inst = Instance(load_config(str(cluster.config_path)).instance(cluster.name))
    verified = inst.postmaster()
    assert verified is not None
    cluster.pg_ctl("stop", "-m", "immediate", "-w")
    wait_for(lambda: procfs.read_stat(verified.pid) is None, 10, "the old postmaster to be reaped")
    newcomer = None
    for _ in range(20):
        newcomer = _spawn_with_pid(verified.pid, owner())
        if newcomer is not None:
            break
    assert newcomer is not None, "the kernel never handed out the freed pid again"
    reused.append(newcomer)
    assert verified.handles() is None
    assert inst.postmaster() is None, "a `sleep` holding the old pid is not the postmaster"
    time.sleep(0.1)
    assert newcomer.poll() is None


# ---- trusted code ---------------------------------------------------------------------------------


def _script(directory: Path, name: str = "start.sh", body: str = "exit 0") -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _check(cluster: Cluster, **attrs: str) -> subprocess.CompletedProcess[str]:
    cluster.write_config(**attrs)
    return pgmedic(cluster, "check-config")


UNSAFE = {
    "owned by the instance owner, run as root": ("owner_file", "invoker"),
    "world-writable file": ("o+w", "owner"),
    "group-writable file": ("g+w", "owner"),
    "world-writable directory": ("dir o+w", "owner"),
    "directory owned by the instance owner, run as root": ("owner_dir", "invoker"),
    "in /tmp (world-writable, sticky)": ("tmp", "owner"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_scripts_are_refused_by_check_config_and_the_action(
    case: str, cluster: Cluster, trusted_dir: Path, tmp_path: Path
) -> None:
    how, run_as = UNSAFE[case]
    uid = pwd.getpwnam(owner()).pw_uid
    directory = trusted_dir / "scripts"
    directory.mkdir(mode=0o755)
    if how == "tmp":
        directory = Path("/tmp")
    script = _script(directory, f"pgmedic-test-{os.getpid()}-{free_port()}.sh", f"touch {cluster.root}/ran")
    try:
        if how == "owner_file":
            os.chown(script, uid, -1)
        elif how == "o+w":
            script.chmod(0o757)
        elif how == "g+w":
            script.chmod(0o775)
        elif how == "dir o+w":
            directory.chmod(0o777)
        elif how == "owner_dir":
            os.chown(directory, uid, -1)
        pgmedic(cluster, "stop", cluster.name)
        result = _check(cluster, start_script=str(script), scripts_run_as=run_as)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "start_script" in lines[0] and "refused" in lines[0], result.stderr
        started = pgmedic(cluster, "start", cluster.name)
        assert started.returncode == 2 and "refused" in started.stdout, started.stdout + started.stderr
        assert not (cluster.root / "ran").exists(), "the untrusted script ran"
    finally:
        if how == "tmp":
            script.unlink()


def test_trusted_scripts_run_as_the_owner_or_as_the_invoker(cluster: Cluster, trusted_dir: Path) -> None:
    out = cluster.root / "whoami"
    script = _script(trusted_dir, "monitor.sh", f"id -un > {out}; exit 0")
    os.chown(script, pwd.getpwnam(owner()).pw_uid, -1)  # the owner may own what runs as the owner
    assert _check(cluster, monitor_script=str(script)).returncode == 0
    assert pgmedic(cluster, "monitor", cluster.name).returncode == 0
    assert out.read_text().strip() == owner()
    os.chown(script, 0, 0)
    out.unlink()
    assert _check(cluster, monitor_script=str(script), scripts_run_as="invoker").returncode == 0
    assert pgmedic(cluster, "monitor", cluster.name).returncode == 0
    assert out.read_text().strip() == pwd.getpwuid(os.geteuid()).pw_name


def test_an_untrusted_ksys_command_is_refused(cluster: Cluster, trusted_dir: Path) -> None:
    notifier = _script(trusted_dir, "notify-ksys")
    os.chown(notifier, pwd.getpwnam(owner()).pw_uid, -1)
    cluster.write_config(extra_top={"ksys": {"command": [str(notifier)]}})
    result = pgmedic(cluster, "check-config")
    assert result.returncode == 2 and "ksys.command" in result.stderr and "refused" in result.stderr
    cluster.write_config(extra_top={"ksys": {"command": [str(notifier)], "run_as": owner()}})
    assert pgmedic(cluster, "check-config").returncode == 0, "owned by the user it runs as: allowed"


# ---- clean input ----------------------------------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    cfg = tmp_path / "etc" / "pgmedic.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"remediator:\n  state_dir: {tmp_path / 'state'}\n")
    return cfg


ATTRS = {
    "type": "POSTGRES",
    "instancename": owner(),
    "database": "postgres",
    "data_directory": "/srv/pg",
}


@pytest.mark.parametrize(
    "key", ["name", "type", "instancename", "database", "data_directory", "host", "user", "port", "start_timeout"]
)
@pytest.mark.parametrize("bad", ["\n", "\r", "\x1b", "\u2028"])
def test_control_characters_in_any_cli_value_are_refused_and_nothing_written(
    cli_home: Path, key: str, bad: str
) -> None:
    attrs = {**ATTRS, "host": "/tmp", "user": "postgres", "port": "5432", "start_timeout": "30s"}
    name = "okname"
    if key == "name":
        name += bad
    else:
        attrs[key] = attrs[key][:2] + bad + "start_script: /tmp/x #"
    result = pgmedic(None, "add", "instance", name, *(f"{k}={v}" for k, v in attrs.items()), config=cli_home)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "control character" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (cli_home.parent / "instances.d").exists() or not list((cli_home.parent / "instances.d").iterdir())


def test_nul_in_a_cli_value_is_refused(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pgmedic.cli import main

    args = ["--config", str(cli_home), "add", "instance", "x", *(f"{k}={v}" for k, v in ATTRS.items())]
    assert main([*args[:-1], "data_directory=/srv\x00/pg"]) == 2
    assert "control character" in capsys.readouterr().err
    assert not (cli_home.parent / "instances.d").exists()


def test_a_trailing_newline_in_an_instance_name_is_refused_everywhere(cli_home: Path) -> None:
    from pgmedic.config import build_instance
    from pgmedic.errors import ConfigError

    with pytest.raises(ConfigError, match="instance name"):
        build_instance("okname\n", dict(ATTRS), "test")
    d = cli_home.parent / "instances.d"
    d.mkdir()
    (d / "okname\n.yaml").write_text(json.dumps(ATTRS))
    result = pgmedic(None, "check-config", config=cli_home)
    assert result.returncode == 2 and "instance name" in result.stderr


def test_the_instance_file_and_audit_log_cannot_be_forged(cli_home: Path) -> None:
    argv = ["add", "instance", "good", *(f"{k}={v}" for k, v in ATTRS.items())]
    assert pgmedic(None, *argv, config=cli_home).returncode == 0
    written = (cli_home.parent / "instances.d" / "good.yaml").read_text()
    assert written.startswith("# Written by: [")
    assert (
        pgmedic(None, "modify", "instance", "good", "database=pg\nstart_script: /tmp/x #", config=cli_home).returncode
        == 2
    )
    assert (cli_home.parent / "instances.d" / "good.yaml").read_text() == written
    log = (cli_home.parent.parent / "state" / "audit.log").read_text().splitlines()
    assert len(log) == 2, "one JSON object per entry, however hostile the values"
    refused = json.loads(log[1])
    assert refused["argv"][-1] == "database=pg\nstart_script: /tmp/x #" and refused["result"].startswith("refused")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)
)
HOSTILE = {
    "billion laughs": BOMB.encode(),
    "20,000 nested levels": b"instances: " + b"[" * 20000 + b"]" * 20000 + b"\n",
    "300 nested mappings": b"".join(b"  " * i + b"k:\n" for i in range(300)) + b"  " * 300 + b"v\n",
    "not UTF-8": b"instances:\n  x:\n    database: caf\xe9\n",
    "a python tag": b"instances: !!python/object/apply:os.system [id]\n",
    "an 8 MB value": b"audit_log: " + b"x" * (8 << 20) + b"\n",
    "an 800 KB value": b"audit_log: " + b"x" * (800 << 10) + b"\n",
    "a tab": b"instances:\n\tx: 1\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_config_files_end_in_one_line_and_exit_2_quickly(case: str, tmp_path: Path) -> None:
    cfg = tmp_path / "pgmedic.yaml"
    cfg.write_bytes(HOSTILE[case])
    began = time.monotonic()
    result = pgmedic(None, "check-config", config=cfg, timeout=30)
    took = time.monotonic() - began
    assert result.returncode == 2, result.stderr[:500]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400 and str(cfg) in lines[0], result.stderr[:500]
    assert "Traceback" not in result.stderr
    assert took < 2.0 + 1.0, f"{case}: {took:.1f}s (2 s allowed, plus interpreter start-up)"


def test_duplicate_ids_in_the_postgres_xml_are_refused(tmp_path: Path) -> None:
    xml = tmp_path / "POSTGRESconfig.xml"
    xml.write_text(
        f'<POSTGRESConfig><POSTGRESinstance id="{owner()}"><data_directory>/srv/a</data_directory>'
        f'</POSTGRESinstance><POSTGRESinstance id="{owner()}"><data_directory>/srv/b</data_directory>'
        "</POSTGRESinstance></POSTGRESConfig>"
    )
    cfg = tmp_path / "pgmedic.yaml"
    argv = ["add", "app", "x", "type=POSTGRES", f"instancename={owner()}", "database=d", f"configfile={xml}"]
    result = pgmedic(None, *argv, config=cfg)
    assert result.returncode == 2
    assert str(xml) in result.stderr and f'id="{owner()}"' in result.stderr and "unique" in result.stderr


# ---- private files --------------------------------------------------------------------------------


def test_journal_and_audit_log_are_private_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "pgmedic.yaml"
    cfg.write_text(f"remediator:\n  state_dir: {state}\n")
    argv = ["add", "instance", "x", *(f"{k}={v}" for k, v in ATTRS.items())]
    env_cmd = ["sh", "-c", 'umask 000 && exec "$@"', "sh"]
    for args in (argv, ["suspend", "instance", "x"]):
        import sys

        subprocess.run(
            [*env_cmd, sys.executable, "-m", "pgmedic", "--config", str(cfg), *args],
            check=True,
            capture_output=True,
            env=dict(os.environ),
        )
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = ["journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm", "audit.log"]
    modes = {name: stat.S_IMODE((state / name).stat().st_mode) for name in files if (state / name).exists()}
    assert {"journal.sqlite", "audit.log"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def test_a_writable_state_dir_and_loose_token_files_are_refused(
    cluster: Cluster, tmp_path: Path, services: list
) -> None:
    state = tmp_path / "open-state"
    state.mkdir()
    state.chmod(0o777)
    cfg = write_config(tmp_path / "pgmedic.yaml", [cluster], state)
    result = pgmedic(None, "check-config", config=cfg)
    assert result.returncode == 2 and "state_dir" in result.stderr and "0777" in result.stderr
    assert pgmedic(None, "suspend", "instance", cluster.name, config=cfg).returncode == 2
    state.chmod(0o755)  # not writable by others: fine (the files inside are private)
    token = tmp_path / "token"
    for what, make in (
        ("0644", lambda: (token.write_text("x"), token.chmod(0o644))),
        ("directory", lambda: token.mkdir()),
        ("empty", lambda: write_secret(token, "")),
    ):
        if token.is_dir():
            token.rmdir()
        elif token.exists():
            token.unlink()
        make()
        cfg = write_config(tmp_path / "pgmedic.yaml", [cluster], state, remediator={"token_file": str(token)})
        result = pgmedic(None, "check-config", config=cfg)
        assert result.returncode == 2 and "token_file" in result.stderr, (what, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        port = free_port()
        served = subprocess.run(
            [*pgmedic_argv(cfg), "remediator", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert served.returncode == 2 and "token_file" in served.stderr, (what, served.stderr)


def pgmedic_argv(cfg: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "pgmedic", "--config", str(cfg)]
