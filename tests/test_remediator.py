"""The remediator on real clusters over real HTTP: restarts once, within a budget, and never on bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pgmedic.demo.sandbox import (
    Cluster,
    free_port,
    http,
    pgmedic_service,
    wait_for,
    write_config,
    write_secret,
)
from tests.harness import TOKEN, Rig, alert_payload, pgmedic

# Runs on every PostgreSQL version of the matrix (tests/conftest.py), except those marked one_pg.
pytestmark = pytest.mark.every_pg


def kill_postmaster(cluster: Cluster) -> int:
    pid = cluster.postmaster_pid()
    os.kill(pid, signal.SIGKILL)
    return pid


def test_kill_9_one_post_brings_it_back_with_the_whole_story(rig: Rig) -> None:
    rig.start()
    old = kill_postmaster(rig.cluster)
    status, body = rig.post(alert_payload("PostgresPostmasterDown", "main"))
    assert status == 200 and body["decisions"][0]["result"] == "accepted"
    recovered = rig.wait_event("recovered")
    rig.cluster.wait_accepting()
    assert rig.cluster.postmaster_pid() != old
    assert recovered["seconds_since_receipt"] > 0 and recovered["seconds_since_alert_start"] > 0
    kinds = rig.kinds()
    story = ["notification", "restart_started", "restarted", "recovered", "episode_done"]
    assert [k for k in kinds if k in story] == story
    started = next(e for e in rig.events() if e["kind"] == "restarted")
    assert started["action"] == "start" and started["duration"] > 0
    wait_for(lambda: {"restart_started", "restarted", "recovered"} <= set(rig.ksys.kinds()), 10, "KSYS events")
    status, body = http("GET", rig.url + "/api/v1/status")
    assert body["instances"]["main"]["budget_remaining"] == 2
    assert body["instances"]["main"]["last_action"]["result"] == "recovered"
    status, metrics = http("GET", rig.url + "/metrics")
    assert 'pgmedic_actions_total{action="start",failure="none",pg_instance="main",result="ok"} 1.0' in metrics
    assert 'pgmedic_recovery_seconds_count{pg_instance="main",since="receipt"} 1.0' in metrics
    assert 'pgmedic_notifications_total{result="accepted"} 1.0' in metrics


def test_fifty_deliveries_sequential_concurrent_and_two_remediators_one_restart(rig: Rig) -> None:
    rig.start()
    second = rig.start()  # a second remediator process sharing the state directory
    kill_postmaster(rig.cluster)
    payload = alert_payload("PostgresPostmasterDown", "main")
    results: list[int] = []

    def send(url: str) -> None:
        results.append(rig.post(payload, url=url)[0])

    for _ in range(10):
        send(rig.url)
    threads = [threading.Thread(target=send, args=(u,)) for u in [rig.url] * 20 + [second.url] * 20]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 50
    rig.wait_event("recovered")
    time.sleep(1.0)  # let any second action (there must be none) show up
    kinds = Counter(rig.kinds())
    assert kinds["restart_started"] == 1 and kinds["recovered"] == 1
    decisions = Counter(e["result"] for e in rig.events() if e["kind"] == "notification")
    # Deliveries during the episode are duplicates; any after it ended are re-probes of a healthy server.
    assert decisions["accepted"] == 1 and decisions["duplicate"] + decisions["recheck"] == 49, decisions
    skipped = [e["reason"] for e in rig.events() if e["kind"] == "skipped"]
    assert skipped == ["healthy"] * decisions["recheck"], (skipped, decisions)
    rig.cluster.wait_accepting()


@pytest.mark.one_pg  # stop escalation per version: tests/test_instance.py
def test_sigstop_is_restarted_through_stop_escalation(rig: Rig) -> None:
    rig.configure(stop_timeout="2s")
    rig.start()
    pid = rig.cluster.postmaster_pid()
    os.kill(pid, signal.SIGSTOP)
    status, _ = rig.post(alert_payload("PostgresNotResponding", "main"))
    assert status == 200
    restarted = rig.wait_event("restarted", timeout=90)
    assert restarted["action"] == "restart"
    steps = " | ".join(restarted["steps"])
    assert f"signal SIGINT to postmaster {pid} of {rig.cluster.data}" in steps, steps
    assert f"signal SIGQUIT to postmaster {pid}" in steps and f"SIGKILL of postmaster {pid}" in steps, steps
    rig.wait_event("recovered")
    rig.cluster.wait_accepting()
    assert rig.cluster.postmaster_pid() != pid


@pytest.mark.one_pg  # a start script's failure: the engine's budget
def test_failing_start_spends_the_budget_then_failed_and_one_escalation(rig: Rig, trusted_dir: Path) -> None:
    broken = trusted_dir / "broken-start.sh"
    broken.write_text("#!/bin/sh\necho 'cannot start: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    rig.configure(start_script=str(broken), max_restart=3, restart_delay="0.2s")
    rig.start()
    kill_postmaster(rig.cluster)
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    rig.wait_event("escalated")
    wait_for(lambda: "escalated" in rig.ksys.kinds(), 15, "the escalation at the KSYS webhook")
    time.sleep(1.5)
    kinds = Counter(rig.kinds())
    assert kinds["restart_started"] == 3 and kinds["restart_failed"] == 3 and kinds["failed"] == 1
    assert all("broken on purpose" in e["message"] for e in rig.events() if e["kind"] == "restart_failed")
    assert Counter(rig.ksys.kinds())["escalated"] == 1
    escalation = next(e for e in rig.ksys.events if e["event"] == "escalated")
    assert escalation["instance"] == "main" and escalation["schema"] == "pgmedic.event/v1"
    _status, body = http("GET", rig.url + "/api/v1/status")
    assert body["instances"]["main"]["state"] == "failed" and body["instances"]["main"]["budget_remaining"] == 0
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 5
    # Another alert while FAILED: recorded, no action.
    assert rig.post(alert_payload("PostgresPostmasterDown", "main", fingerprint="other"))[0] == 200
    time.sleep(1.0)
    assert Counter(rig.kinds())["restart_started"] == 3
    # resume re-arms
    assert pgmedic(None, "resume", "instance", "main", config=rig.config).returncode == 0
    _, body = http("GET", rig.url + "/api/v1/status")
    assert body["instances"]["main"]["state"] == "ok" and body["instances"]["main"]["budget_remaining"] == 3
    wait_for(lambda: "resumed" in rig.ksys.kinds(), 15, "resumed at KSYS")


def test_suspended_instance_gets_no_action(rig: Rig) -> None:
    rig.start()
    assert pgmedic(None, "suspend", "instance", "main", config=rig.config).returncode == 0
    kill_postmaster(rig.cluster)
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    skipped = rig.wait_event("skipped")
    assert "suspended" in skipped["reason"]
    time.sleep(1.0)
    assert "restart_started" not in rig.kinds()
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 3
    wait_for(lambda: "suspended" in rig.ksys.kinds(), 15, "suspended at KSYS")


@pytest.mark.one_pg  # the engine's mode, not the server's
def test_observe_mode_journals_the_decision_and_leaves_a_killed_instance_down(rig: Rig) -> None:
    """Observe mode (a fleet's roll-out): the same decision as in act mode, journaled as would_start, and
    nothing done: the instance stays down, no budget is spent and KSYS hears nothing. Switched to act by a
    reload, the next delivery of the same alert brings it back."""
    rig.configure(remediator={"mode": "observe"})
    rig.start()
    kill_postmaster(rig.cluster)
    alert = alert_payload("PostgresPostmasterDown", "main")
    status, body = rig.post(alert)
    assert status == 200 and body["decisions"][0]["result"] == "accepted"
    would = rig.wait_event("would_start")
    assert would["reason"] == "not_running"
    time.sleep(2.0)
    assert "restart_started" not in rig.kinds()
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 3, "still down"
    status, body = http("GET", rig.url + "/api/v1/status")
    assert body["mode"] == "observe" and body["instances"]["main"]["mode"] == "observe"
    assert body["instances"]["main"]["budget_remaining"] == 3 and body["instances"]["main"]["state"] == "ok"
    status, metrics = http("GET", rig.url + "/metrics")
    assert 'pgmedic_remediator_mode{mode="observe",pg_instance="main"} 1.0' in metrics
    assert 'pgmedic_remediator_observed_total{pg_instance="main",would="start"} 1.0' in metrics
    assert not [k for k in rig.ksys.kinds() if k != "ksys_test"], "KSYS hears nothing in observe mode"

    rig.configure(remediator={"mode": "act"}, mode="act")  # the per-instance setting, as a host is switched
    rig.remediators[0].proc.send_signal(signal.SIGHUP)
    wait_for(lambda: http("GET", rig.url + "/api/v1/status")[1]["instances"]["main"]["mode"] == "act", 15, "act")
    assert rig.post(alert)[1]["decisions"][0]["result"] == "recheck", "the same alert, still firing"
    rig.wait_event("recovered")
    rig.cluster.wait_accepting()


def oversized_post(url: str) -> int:
    """The status of a POST announcing a body over 1 MiB. Sent by hand: the server answers 413 and closes
    before the body is all sent, and urllib, still sending, would only see the reset."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {1024 * 1024 + 10}\r\n\r\n")  # fmt: skip
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode() + b"x" * 4096)
        s.settimeout(10)
        return int(s.recv(100).split()[1])


def test_bad_input_gets_the_right_status_and_nothing_runs(rig: Rig, tmp_path: Path) -> None:
    rig.start()
    pid = rig.cluster.postmaster_pid()
    marker = tmp_path / "pwned"
    ok = alert_payload("PostgresPostmasterDown", "main")
    assert oversized_post(rig.url) == 413
    assert rig.post(b"{not json")[0] == 400
    assert rig.post({**ok, "version": "3"})[0] == 400
    assert rig.post({"version": "4", "alerts": [{"status": "firing"}]})[0] == 400
    assert rig.post(ok, token=None)[0] == 401
    assert rig.post(ok, token="wrong")[0] == 401
    status, body = rig.post(alert_payload("PostgresPostmasterDown", None))
    assert status == 200 and body["decisions"][0]["result"] == "ignored"
    status, body = rig.post(alert_payload("PostgresPostmasterDown", "nosuch"))
    assert status == 200 and body["decisions"][0]["reason"] == "not a configured instance"
    evil = f"main; touch {marker}; $(touch {marker}) `touch {marker}`"
    status, body = rig.post(alert_payload(f"X$(touch {marker})", evil, fingerprint="evil"))
    assert status == 200 and body["decisions"][0]["result"] == "ignored"
    status, body = rig.post(alert_payload(f"$(touch {marker})", "main", fingerprint="evil2", remediation="none"))
    assert status == 200 and body["decisions"][0]["result"] == "ignored"
    status, body = rig.post(alert_payload("PostgresPostmasterDown", "main", status="resolved", fingerprint="r"))
    assert status == 200 and body["decisions"][0]["reason"] == "resolved"
    time.sleep(1.0)
    assert not marker.exists()
    assert rig.cluster.postmaster_pid() == pid
    kinds = rig.kinds()
    assert "restart_started" not in kinds
    rejected = [e for e in rig.events() if e.get("result") == "rejected"]
    assert len(rejected) == 3, "400s are journaled (401 and 413 are not: no trusted body)"
    assert any(e.get("pg_instance") == evil for e in rig.events()), "the odd label is recorded as data"
    status, metrics = http("GET", rig.url + "/metrics")
    # 401s and 400s (5); the oversized body is refused by the server before the app sees it (413, uncounted)
    assert 'pgmedic_notifications_total{result="rejected"} 5.0' in metrics
    status, spec = http("GET", rig.url + "/api/v1/openapi.json")
    assert status == 200 and "/api/v1/alerts" in spec["paths"]
    assert http("GET", rig.url + "/api/v1/events?since=-1")[0] == 400
    assert http("GET", rig.url + "/healthz")[0] == 200


@pytest.mark.one_pg  # the engine's crash recovery, not the server's
def test_remediator_killed_mid_restart_finishes_after_start(rig: Rig, trusted_dir: Path) -> None:
    slow = trusted_dir / "slow-start.sh"  # runs as the instance owner (scripts_run_as: owner)
    log = rig.cluster.root / "slow.log"
    slow.write_text(
        f'#!/bin/sh\nsleep 3\nexec {rig.cluster.bin_dir}/pg_ctl -D "$PGDATA" -l {log} -o "-p $PGPORT" -w start\n'
    )
    slow.chmod(0o755)
    rig.configure(start_script=str(slow))
    first = rig.start()
    kill_postmaster(rig.cluster)
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    rig.wait_event("restart_started")
    wait_for(lambda: any("slow-start" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")
                         for p in os.listdir("/proc") if p.isdigit() and Path(f"/proc/{p}/cmdline").exists()),
             15, "the start script to run")  # fmt: skip
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    rig.remediators.clear()
    rig.start()
    rig.wait_event("recovered", timeout=60)
    rig.cluster.wait_accepting()
    wait_for(lambda: "episode_done" in rig.kinds(), 10, "episode done")
    kinds = Counter(rig.kinds())
    for kind in ("notification", "restart_started", "recovered", "episode_done", "episode_resumed"):
        assert kinds[kind] == 1, (kind, kinds)
    assert any("still running" in (e.get("reason") or "") for e in rig.events()), "it waited for the orphaned script"
    assert rig.cluster.psql("SELECT 1") == "1"


def test_refuses_non_loopback_without_token(cluster: Cluster, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "pgmedic.yaml", [cluster], tmp_path / "state")
    result = pgmedic(None, "remediator", "--listen", "0.0.0.0:1", config=cfg, timeout=30)
    assert result.returncode == 2
    assert "remediator.token_file: required to listen on non-loopback address 0.0.0.0" in result.stderr


def test_payload_parsing_units() -> None:
    from pgmedic.remediator.payload import PayloadError, parse_payload, parse_time

    assert parse_time("2026-11-27T22:10:00.123456789Z") == pytest.approx(1795817400.123456, abs=1e-5)
    assert parse_time("0001-01-01T00:00:00Z") is None
    alerts = parse_payload(
        json.dumps(alert_payload("A", "main", fingerprint="")).encode().replace(b'"fingerprint": ""', b'"x": 1')
    )
    assert alerts[0].fingerprint and alerts[0].episode.startswith(alerts[0].fingerprint + "@")
    for bad in (b"[]", b'{"version": "4"}', b'{"version": "4", "alerts": [{"status": "maybe"}]}'):
        with pytest.raises(PayloadError):
            parse_payload(bad)


def test_auth_units() -> None:
    import base64

    from pgmedic.remediator.auth import authorized

    assert authorized(None, None)
    assert authorized("Bearer abc", "abc") and not authorized("Bearer abd", "abc")
    assert authorized("Basic " + base64.b64encode(b"alertmanager:abc").decode(), "abc")
    assert not authorized("Basic !!!", "abc") and not authorized("Token abc", "abc") and not authorized(None, "abc")


def test_ksys_command_notifier_gets_the_event_on_stdin(
    cluster: Cluster, tmp_path: Path, services: list, trusted_dir: Path
) -> None:
    """The command runs as an unprivileged user (nobody when the remediator is root), event JSON on stdin."""
    import pwd

    runs_as = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    inbox = trusted_dir / "inbox"
    inbox.mkdir()
    os.chown(inbox, pwd.getpwnam(runs_as).pw_uid, -1)
    received = inbox / "ksys-events.jsonl"
    notifier = trusted_dir / "notify-ksys"
    notifier.write_text(f"#!/bin/sh\n{{ id -un; cat; echo; }} >> {received}\n")
    notifier.chmod(0o755)
    token = write_secret(tmp_path / "token", TOKEN)
    cfg = write_config(
        tmp_path / "pgmedic.yaml", [cluster], tmp_path / "state",
        remediator={"token_file": str(token)}, ksys={"command": [str(notifier)], "timeout": "5s"},
    )  # fmt: skip
    service = pgmedic_service("remediator", cfg, tmp_path, free_port())
    services.append(service)
    assert pgmedic(None, "suspend", "instance", "main", config=cfg).returncode == 0

    def delivered() -> list[str] | None:
        text = received.read_text() if received.exists() else ""
        return text.split("\n") if text.endswith("}\n") else None

    lines = wait_for(delivered, 15, "the command's delivery")
    assert lines[0] == runs_as
    event = json.loads(lines[1])
    assert event["event"] == "suspended" and event["instance"] == "main" and event["schema"] == "pgmedic.event/v1"
    # The command wrote the file before it exited; the delivery is counted once it has.
    wait_for(
        lambda: 'pgmedic_ksys_notifications_total{result="delivered"} 1.0' in http("GET", service.url + "/metrics")[1],
        10,
        "the delivery counted",
    )


def test_journal_prunes_history_but_never_unfinished_work(tmp_path: Path) -> None:
    """Old rows are made by hand in the database file (the test's own SQL); pruning is the journal's."""
    import sqlite3

    from pgmedic.journal import Journal

    journal = Journal(str(tmp_path))
    journal.event("main", "restart_started", ("webhook",), episode="e-old")
    journal.event("main", "recovered", episode="e-new")
    old = time.time() - 40 * 86400
    with sqlite3.connect(journal.path) as db:
        for key, status in (("e-old", "done"), ("e-stuck", "running"), ("e-new", "done")):
            when = old if key != "e-new" else time.time()
            db.execute(
                "INSERT INTO episodes (key, instance, action, status, received_at, updated_at) "
                "VALUES (?, 'main', 'start', ?, ?, ?)",
                (key, status, when, when),
            )
        db.execute("UPDATE events SET ts = ? WHERE episode = 'e-old'", (old,))
        db.execute(
            "INSERT INTO outbox (notifier, payload, next_attempt, delivered_at) VALUES ('webhook', '{}', ?, ?)",
            (old, old),
        )
    pruned = journal.prune(30 * 86400)
    assert pruned == {"events": 1, "episodes": 1, "outbox": 1}
    assert journal.open_episodes("main") == ["e-stuck"], "running work survives whatever its age"
    assert journal.last_episode("main")["key"] == "e-new"  # type: ignore[index]
    due = journal.due_deliveries(("webhook",), 10)
    assert len(due) == 1 and json.loads(due[0].payload)["event"] == "restart_started", "undelivered: never pruned"
    assert [e["kind"] for e in journal.events()] == ["recovered"]
    assert sqlite3.connect(journal.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---- waits that end when their premise breaks (a crash loop) ---------------------------------------


def test_a_crash_during_the_wait_after_a_start_is_repaired_at_once(rig: Rig, trusted_dir: Path) -> None:
    """The first start returns while the server is still starting, and the server dies before it accepts:
    the wait for it ends at once and the same episode starts it again, far within start_timeout."""
    mark = rig.cluster.root / "crashed-once"
    log = rig.cluster.root / "crashy.log"
    pid_file = '"$PGDATA/postmaster.pid"'
    script = trusted_dir / "crashy-start.sh"
    script.write_text(
        f"#!/bin/sh\nold=$(head -1 {pid_file})\n"
        f'{rig.cluster.bin_dir}/pg_ctl -D "$PGDATA" -l {log} -o "-p $PGPORT" -W start || exit 1\n'
        f"[ -e {mark} ] && exit 0\ntouch {mark}\n"
        # Frozen once its sockets are listening (the pid file's fifth line), still starting: frozen any earlier,
        # it may leave its socket's lock file created but empty, which PostgreSQL then refuses to start over.
        f'pid="$old"; while [ "$pid" = "$old" ] || [ -z "$pid" ] || [ -z "$(sed -n 5p {pid_file})" ]; do\n'
        f"  sleep 0.005; pid=$(head -1 {pid_file}); done\n"
        'kill -STOP "$pid"\n(sleep 0.5; kill -9 "$pid") >/dev/null 2>&1 &\n'
    )
    script.chmod(0o755)
    rig.configure(start_script=str(script), start_timeout="60s")
    rig.start()
    kill_postmaster(rig.cluster)
    began = time.monotonic()
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    try:
        rig.wait_event("episode_done", timeout=55)
    except TimeoutError:
        raise AssertionError(f"no episode_done: {[(e['kind'], e.get('reason')) for e in rig.events()]}") from None
    took = time.monotonic() - began
    # Far within start_timeout (60 s): the wait noticed the crash instead of sitting it out. Usually 2-4 s;
    # on a loaded machine the killed postmaster's zombie and orphans take longer to go.
    assert took < 30, f"repaired after {took:.1f}s: the wait did not notice the crash (start_timeout is 60s)"
    kinds = Counter(rig.kinds())
    assert kinds["restart_started"] == 2 and kinds["recovered"] == 1 and kinds["wait_ended"] == 1, kinds
    assert mark.exists()
    rig.cluster.wait_accepting()


def test_a_crash_right_after_recovery_is_repaired_without_a_new_alert(rig: Rig) -> None:
    """Killed again just after the episode ended, before Prometheus could see it up: no new alert would
    come (the old one keeps firing with its startsAt), so the remediator's own watch reopens the episode."""
    rig.configure(max_restart=10)
    rig.start()
    kill_postmaster(rig.cluster)
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    for round_ in range(3):
        wait_for(lambda n=round_: Counter(rig.kinds())["recovered"] == n + 1, 30, f"recovery {round_ + 1}")
        rig.cluster.wait_accepting()
        pid = kill_postmaster(rig.cluster)
        began = time.monotonic()
        wait_for(lambda n=round_: Counter(rig.kinds())["recovered"] == n + 2, 30, f"repair of crash {round_ + 2}")
        took = time.monotonic() - began
        assert took < 5, f"crash {round_ + 2} repaired after {took:.1f}s"
        assert rig.cluster.postmaster_pid() != pid
    kinds = Counter(rig.kinds())
    assert kinds["notification"] == 1 and kinds["failed_again"] == 3 and kinds["episode_reopened"] == 3, kinds
    assert kinds["restart_started"] == 4


def test_a_still_firing_alert_reopens_an_ended_episode_only_when_the_instance_is_down(rig: Rig) -> None:
    """The recheck path (the watch is off here): the same firing payload delivered after the episode
    ended repairs a down instance, and does nothing but a probe for a healthy one."""
    rig.configure(remediator={"recovery_watch": "0s"})
    rig.start()
    payload = alert_payload("PostgresPostmasterDown", "main")
    kill_postmaster(rig.cluster)
    assert rig.post(payload)[0] == 200
    rig.wait_event("episode_done")
    rig.cluster.wait_accepting()
    status, body = rig.post(payload)  # healthy: nothing happens
    assert status == 200 and body["decisions"][0]["result"] == "recheck"
    wait_for(lambda: "skipped" in rig.kinds(), 15, "the re-probe of a healthy instance")
    assert Counter(rig.kinds())["restart_started"] == 1
    pid = kill_postmaster(rig.cluster)
    time.sleep(1.0)
    assert Counter(rig.kinds())["restart_started"] == 1, "nothing acts without a delivery when the watch is off"
    status, body = rig.post(payload)  # same fingerprint and startsAt, instance down
    assert status == 200 and body["decisions"][0]["result"] == "recheck"
    wait_for(lambda: Counter(rig.kinds())["recovered"] == 2, 30, "the repair of the second crash")
    rig.cluster.wait_accepting()
    assert rig.cluster.postmaster_pid() != pid
    kinds = Counter(rig.kinds())
    assert kinds["restart_started"] == 2 and kinds["episode_reopened"] == 1, kinds


@pytest.mark.one_pg  # the engine's recovery watch
def test_a_clean_stop_after_a_recovery_is_not_undone_by_the_recovery_watch(rig: Rig) -> None:
    """The watch reopens an episode only for a crash: an administrator's stop right after a recovery stays."""
    rig.start()
    kill_postmaster(rig.cluster)
    assert rig.post(alert_payload("PostgresPostmasterDown", "main"))[0] == 200
    rig.wait_event("episode_done")
    rig.cluster.wait_accepting()
    stopped = pgmedic(None, "stop", "main", config=rig.config)
    assert stopped.returncode == 0 and "stopped (fast)" in stopped.stdout, stopped.stdout + stopped.stderr
    time.sleep(1.5)
    kinds = Counter(rig.kinds())
    assert kinds["restart_started"] == 1 and kinds["failed_again"] == 0, kinds
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 3
