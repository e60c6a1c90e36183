"""Drills on the real chain: PostgreSQL, exporter, remediator, Prometheus and Alertmanager, configured
from the shipped alerts/ files. Each asserts the outcome and what the journal recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgmedic.demo.drills import format_timeline, run_drill, timeline
from pgmedic.demo.sandbox import wait_for
from pgmedic.demo.stack import Stack, build_stack, missing_tools
from tests.harness import pgmedic
from tests.ksys_sink import KsysSink


@pytest.fixture
def make_stack(pg_major: int) -> Iterator[Callable[..., Stack]]:
    assert not missing_tools(), f"missing {missing_tools()}: apt-get install -y prometheus prometheus-alertmanager"
    stacks: list[Stack] = []

    def factory(**kwargs) -> Stack:
        stack = build_stack("e2e", major=pg_major, **kwargs)
        stacks.append(stack)
        return stack

    try:
        yield factory
    finally:
        for stack in stacks:
            stack.close()


def kinds(stack: Stack) -> Counter:
    return Counter(e["kind"] for e in stack.events())


def notifications(stack: Stack) -> Counter:
    return Counter(e["result"] for e in stack.events() if e["kind"] == "notification")


@pytest.mark.pg(15, 18)  # drills of the version matrix: the distribution's 15 and the newest, 18
def test_kill9_recovered_with_one_restart(make_stack) -> None:
    stack = make_stack()
    old = stack.cluster.postmaster_pid()
    t0, _, ok = run_drill(stack, "kill9")
    assert ok, stack.events()
    assert stack.cluster.postmaster_pid() != old
    time.sleep(1.5)
    stages = timeline(stack, t0)
    assert all(offset is not None for _, offset in stages), format_timeline(stages)
    offsets = [offset for _, offset in stages]
    assert offsets == sorted(offsets), format_timeline(stages)
    k = kinds(stack)
    assert k["restart_started"] == 1 and k["recovered"] == 1 and k["restart_failed"] == 0


def test_three_crashes_15s_apart_three_recoveries(make_stack) -> None:
    stack = make_stack()
    last = 0.0
    for i in range(3):
        time.sleep(max(0.0, last + 15 - time.time()))
        t0, _, ok = run_drill(stack, "kill9")
        assert ok, f"crash {i + 1} was not repaired: {kinds(stack)}"
        last = t0
    k = kinds(stack)
    assert k["restart_started"] == 3 and k["recovered"] == 3
    episodes = {e["episode"] for e in stack.events() if e["kind"] == "restart_started"}
    assert len(episodes) == 3, "each crash is its own failure episode"


def test_crash_loop_each_crash_right_after_a_restart_is_repaired_within_5s(make_stack) -> None:
    """kill -9 again the moment the remediator journals `restarted`, several times: each new crash lands
    before Prometheus has seen the server up, so no new alert comes; each must still be repaired."""
    stack = make_stack(instance={"max_restart": 10, "restart_delay": "0.2s"})
    _, _, ok = run_drill(stack, "kill9")
    assert ok, kinds(stack)
    took = []
    for i in range(4):
        wait_for(lambda n=i: kinds(stack)["restarted"] >= n + 1, 30, f"restart {i + 1}")
        pid = stack.cluster.postmaster_pid()
        began = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda old=pid: _accepting_anew(stack, old), 30, f"repair of loop crash {i + 1}", interval=0.05)
        took.append(time.monotonic() - began)
    assert max(took) < 5.0, f"repair times {[round(t, 2) for t in took]}: {kinds(stack)}"

    # The server accepts a moment before the remediator sees it and journals the recovery. How many
    # `recovered` there are depends on where each crash landed (inside the wait after a start, the same
    # episode goes on; after its recovery, the watch reopens it): wait for the last restart's.
    def last_restart_recovered() -> bool:
        events = [e["kind"] for e in stack.events()]
        last = max(i for i, kind in enumerate(events) if kind == "restart_started")
        return "recovered" in events[last:]

    wait_for(last_restart_recovered, 15, "the last restart's recovery journaled")
    assert kinds(stack)["restart_started"] == 5, kinds(stack)


def _accepting_anew(stack: Stack, old_pid: int) -> bool:
    try:
        return stack.cluster.postmaster_pid() != old_pid and stack.cluster.psql("SELECT 1", timeout=2) == "1"
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired):
        return False


@pytest.mark.pg(15, 18)  # drills of the version matrix: the distribution's 15 and the newest, 18
def test_sigstop_restarted_through_stop_escalation(make_stack) -> None:
    stack = make_stack()
    _t0, stopped, ok = run_drill(stack, "sigstop")
    assert ok, kinds(stack)
    assert isinstance(stopped, tuple)
    pid = stopped[0]
    restarted = next(e for e in stack.events() if e["kind"] == "restarted")
    assert restarted["action"] == "restart"
    assert any("SIGKILL of postmaster" in step for step in restarted["steps"]), restarted["steps"]
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    notified = [e for e in stack.events() if e["kind"] == "notification" and e["result"] == "accepted"]
    assert notified and notified[0]["alertname"] == "PostgresNotResponding"


@pytest.mark.pg(15, 18)  # drills of the version matrix: the distribution's 15 and the newest, 18
def test_killed_worker_is_repaired_by_postgresql_not_pgmedic(make_stack) -> None:
    """The runbook: PostgreSQL re-forks its workers itself, PostgresCrashRestarted informs, no restart."""
    stack = make_stack()
    pid = stack.cluster.postmaster_pid()
    _, _, ok = run_drill(stack, "worker")
    assert ok, "PostgresCrashRestarted fired and the instance accepts connections"
    time.sleep(3)
    assert stack.cluster.postmaster_pid() == pid, "the postmaster survived; PostgreSQL re-initialised itself"
    assert kinds(stack)["restart_started"] == 0
    assert not stack.firing("PostgresBackgroundWorkerMissing")
    up = stack.query('pg_background_worker_up{worker="checkpointer"}')
    assert up and up[0]["value"][1] == "1"


@pytest.mark.pg(15, 18)  # drills of the version matrix: the distribution's 15 and the newest, 18
def test_exhausted_connections_alert_without_restart(make_stack) -> None:
    stack = make_stack()
    pid = stack.cluster.postmaster_pid()
    _t0, clients, ok = run_drill(stack, "exhaust")
    try:
        assert ok, "PostgresConnectionsExhausted fired"
        assert isinstance(clients, list) and len(clients) >= 30
        assert not stack.firing("PostgresNotResponding") and not stack.firing("PostgresPostmasterDown")
        up = stack.query("pg_up")
        assert up and up[0]["value"][1] == "1", "pgmedic still connects through the superuser reserve"
    finally:
        for c in clients if isinstance(clients, list) else []:
            c.close()
    assert stack.cluster.postmaster_pid() == pid
    assert kinds(stack)["restart_started"] == 0 and notifications(stack)["accepted"] == 0


def test_stopped_exporter_alerts_and_the_database_is_not_touched(make_stack) -> None:
    stack = make_stack()
    pid = stack.cluster.postmaster_pid()
    _, _, ok = run_drill(stack, "exporter")
    assert ok, "PgmedicExporterDown fired"
    assert not stack.firing("PostgresPostmasterDown") and not stack.firing("PostgresNotResponding")
    assert stack.cluster.postmaster_pid() == pid
    assert notifications(stack)["accepted"] == 0 and kinds(stack)["restart_started"] == 0


def test_two_alertmanagers_one_restart(make_stack) -> None:
    stack = make_stack(alertmanagers=2)
    _, _, ok = run_drill(stack, "kill9")
    assert ok
    second = lambda: notifications(stack)["duplicate"] + notifications(stack)["recheck"] >= 1  # noqa: E731
    wait_for(second, 20, "the second Alertmanager's delivery")
    time.sleep(2)
    assert kinds(stack)["restart_started"] == 1
    assert notifications(stack)["accepted"] == 1


def test_broken_start_script_spends_budget_then_failed_and_one_ksys_escalation(make_stack, trusted_dir: Path) -> None:
    broken = trusted_dir / "broken-start.sh"
    broken.write_text("#!/bin/sh\necho 'broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    sink = KsysSink()
    try:
        stack = make_stack(
            instance={"start_script": str(broken), "max_restart": 3, "restart_delay": "0.2s", "critical": True},
            ksys={"webhook": sink.url, "timeout": "2s"},
        )
        run_drill(stack, "kill9", wait=False)
        wait_for(lambda: "escalated" in sink.kinds(), 60, "the escalation at KSYS")
        time.sleep(3)
        k = kinds(stack)
        assert k["restart_started"] == 3 and k["restart_failed"] == 3 and k["failed"] == 1
        failure = next(e for e in stack.events() if e["kind"] == "restart_failed")
        assert "broken on purpose" in failure["message"], "the script ran (it was not refused as untrusted)"
        assert Counter(sink.kinds())["escalated"] == 1
        wait_for(lambda: stack.firing("PgmedicRestartBudgetExhausted"), 30, "PgmedicRestartBudgetExhausted")
        assert pgmedic(None, "monitor", stack.cluster.name, config=stack.config_path).returncode == 5
    finally:
        sink.close()


def test_suspended_instance_nothing_done(make_stack) -> None:
    stack = make_stack()
    assert pgmedic(None, "suspend", "instance", stack.cluster.name, config=stack.config_path).returncode == 0
    run_drill(stack, "kill9", wait=False)
    skipped = wait_for(
        lambda: next((e for e in stack.events() if e["kind"] == "skipped"), None), 30, "the skipped decision"
    )
    assert "suspended" in skipped["reason"]
    time.sleep(2)
    assert kinds(stack)["restart_started"] == 0
    assert pgmedic(None, "monitor", stack.cluster.name, config=stack.config_path).returncode == 3, "still down"


# ---- the chain itself restarts during an incident -------------------------------------------------


def _recovered_once_within(stack: Stack, old_pid: int, began: float, limit: float) -> None:
    """The instance accepts again with a new postmaster within LIMIT seconds of BEGAN, after one restart."""
    wait_for(lambda: _accepting_anew(stack, old_pid), limit + 20, "the repair", interval=0.05)
    took = time.monotonic() - began
    print(f"recovered {took:.2f}s after the kill")
    assert took < limit, f"recovered {took:.1f}s after the kill"
    time.sleep(2.0)
    assert kinds(stack)["restart_started"] == 1, kinds(stack)


def test_alertmanager_restarted_during_the_incident_recovers_once_within_10s(make_stack) -> None:
    """Alertmanager is down when the alert fires and back 2 s later: Prometheus re-sends the firing
    alert every --rules.alert.resend-delay (shipped: 1s), so the repair does not wait a minute."""
    stack = make_stack()
    stack.kill_service("alertmanager0")
    pid = stack.cluster.postmaster_pid()
    began = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: stack.firing("PostgresPostmasterDown"), 20, "the alert to fire with Alertmanager down")
    time.sleep(2.0)
    stack.start_again("alertmanager0")
    _recovered_once_within(stack, pid, began, 10)


def test_prometheus_restarted_after_the_first_failing_scrape_recovers_once_within_10s(make_stack) -> None:
    stack = make_stack()
    pid = stack.cluster.postmaster_pid()
    began = time.monotonic()
    since = time.time()
    os.kill(pid, signal.SIGKILL)
    instance = stack.cluster.name
    wait_for(
        lambda: any(
            t >= since and v == 0 for t, v in stack.samples(f'pg_postmaster_up{{pg_instance="{instance}"}}', 1)
        ),
        20,
        "the first failing scrape",
        interval=0.05,
    )
    stack.kill_service("prometheus")
    stack.start_again("prometheus")
    _recovered_once_within(stack, pid, began, 10)
