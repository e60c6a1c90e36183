"""The fast path on real clusters: a crash is repaired the instant it happens, once, and nothing else
(a clean stop, maintenance, a silence) ever makes it start a server."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgmedic.demo.sandbox import (
    Cluster,
    Service,
    free_port,
    http,
    pgmedic_service,
    start_service,
    wait_for,
    write_config,
    write_secret,
)
from tests.harness import alert_payload, pgmedic, rfc3339

TOKEN = "fast-token"


class Rig:
    def __init__(self, cluster: Cluster, tmp: Path, services: list) -> None:
        self.cluster, self.tmp, self.services = cluster, tmp, services
        self.token = write_secret(tmp / "token", TOKEN)
        self.config = tmp / "pgmedic.yaml"
        self.remediator: Service | None = None

    def start(self, **remediator: Any) -> None:
        for key, value in {"restart_delay": "0.2s", "max_restart": 3, "critical": True}.items():
            self.cluster.extra.setdefault(key, value)
        write_config(
            self.config, [self.cluster], self.tmp / "state",
            remediator={"token_file": str(self.token), "fast_path": True, **remediator},
        )  # fmt: skip
        self.remediator = pgmedic_service("remediator", self.config, self.tmp, free_port())
        self.services.append(self.remediator)
        time.sleep(1.5)  # the fast path verifies and watches the postmaster within a second

    def events(self) -> list[dict[str, Any]]:
        assert self.remediator is not None
        return http("GET", self.remediator.url + "/api/v1/events?limit=10000")[1]["events"]

    def kinds(self) -> Counter[str]:
        return Counter(e["kind"] for e in self.events() if not e["kind"].startswith("ksys_"))

    def event(self, kind: str, timeout: float = 15) -> dict[str, Any]:
        return wait_for(lambda: next((e for e in self.events() if e["kind"] == kind), None), timeout, kind)

    def kill(self) -> tuple[int, float]:
        pid = self.cluster.postmaster_pid()
        os.kill(pid, signal.SIGKILL)
        return pid, time.monotonic()


@pytest.fixture
def rig(cluster: Cluster, tmp_path: Path, services: list) -> Rig:
    return Rig(cluster, tmp_path, services)


def accepting_again(cluster: Cluster, old: int) -> bool:
    try:
        return cluster.postmaster_pid() != old and cluster.psql("SELECT 1", timeout=3) == "1"
    except (OSError, RuntimeError, ValueError):
        return False


def test_kill9_is_repaired_by_the_fast_path_once_although_the_alert_also_arrives(rig: Rig) -> None:
    rig.start()
    pid, began = rig.kill()
    wait_for(lambda: accepting_again(rig.cluster, pid), 15, "the fast path's repair", interval=0.02)
    took = time.monotonic() - began
    crash = rig.event("crash_detected")
    assert crash["pid"] == pid and crash["source"] == "fast_path" and "detection_seconds" in crash
    assert took < 3, f"repaired {took:.2f}s after the kill"
    assert rig.remediator is not None
    status, body = http(
        "POST",
        rig.remediator.url + "/api/v1/alerts",
        alert_payload("PostgresPostmasterDown", "main", starts_at=rfc3339()),
        TOKEN,
    )
    assert status == 200
    decision = body["decisions"][0]
    assert decision["result"] in ("duplicate", "recheck"), decision
    time.sleep(1.0)
    note = [e for e in rig.events() if e["kind"] == "notification"][-1]
    assert note["episode"] == crash["episode"] and note["via"] == "fast_path", note
    k = rig.kinds()
    assert k["restart_started"] == 1 and k["recovered"] == 1, k
    _, metrics = http("GET", rig.remediator.url + "/metrics")
    assert 'pgmedic_recovery_seconds_count{pg_instance="main",since="fast_path"} 1.0' in metrics


def test_clean_stops_never_start_it(rig: Rig) -> None:
    rig.start()
    result = rig.cluster.pg_ctl("stop", "-m", "fast", "-w")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: any(e["kind"] == "postmaster_exited" for e in rig.events()), 10, "the exit to be journaled")
    assert (
        rig.cluster.pg_ctl(
            "start", "-w", "-o", f"-p {rig.cluster.port}", "-l", str(rig.cluster.root / "l.log")
        ).returncode
        == 0
    )
    time.sleep(1.5)  # followed: the new postmaster is watched
    stopped = pgmedic(None, "stop", "main", config=rig.config)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    time.sleep(2.0)
    exits = [e for e in rig.events() if e["kind"] == "postmaster_exited"]
    assert len(exits) == 2 and all("clean shutdown" in e["reason"] for e in exits), exits
    assert "restart_started" not in rig.kinds()
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 3


def test_suspended_means_no_start(rig: Rig) -> None:
    rig.start()
    assert pgmedic(None, "suspend", "instance", "main", config=rig.config).returncode == 0
    rig.kill()
    exited = rig.event("postmaster_exited")
    assert "suspended" in exited["reason"]
    time.sleep(1.5)
    assert "restart_started" not in rig.kinds()


def test_a_postmaster_restarted_by_someone_else_is_followed(rig: Rig) -> None:
    rig.start()
    first = rig.cluster.postmaster_pid()
    rig.cluster.pg_ctl(
        "restart", "-m", "fast", "-w", "-o", f"-p {rig.cluster.port}", "-l", str(rig.cluster.root / "l.log")
    )
    assert rig.cluster.postmaster_pid() != first
    time.sleep(1.5)
    pid, _ = rig.kill()
    wait_for(lambda: accepting_again(rig.cluster, pid), 15, "the repair of the new postmaster")
    assert rig.event("crash_detected")["pid"] == pid


def test_a_crash_loop_spends_the_budget_and_escalates_once(rig: Rig) -> None:
    rig.cluster.extra.update({"max_restart": 2})
    rig.start()
    for _ in range(3):
        pid, _ = rig.kill()
        wait_for(lambda p=pid: accepting_again(rig.cluster, p) or rig.kinds()["failed"], 15, "a repair or FAILED")
        time.sleep(1.2)  # the new postmaster is watched
    wait_for(lambda: rig.kinds()["escalated"] == 1, 15, f"the escalation: {rig.kinds()}")
    k = rig.kinds()
    assert k["restart_started"] == 2 and k["failed"] == 1 and k["escalated"] == 1, k
    assert pgmedic(None, "monitor", "main", config=rig.config).returncode == 5


@pytest.fixture
def alertmanager(tmp_path: Path, services: list) -> Iterator[str]:
    port = free_port()
    directory = tmp_path / "am"
    directory.mkdir()
    (directory / "am.yml").write_text(yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
    argv = [
        "prometheus-alertmanager", f"--config.file={directory / 'am.yml'}", f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
    ]  # fmt: skip
    services.append(start_service("alertmanager", argv, tmp_path, port))
    yield f"http://127.0.0.1:{port}"


def test_an_active_alertmanager_silence_means_no_start(rig: Rig, alertmanager: str) -> None:
    silence = {
        "matchers": [{"name": "pg_instance", "value": "main", "isRegex": False, "isEqual": True}],
        "startsAt": rfc3339(time.time() - 60), "endsAt": rfc3339(time.time() + 3600),
        "createdBy": "test", "comment": "maintenance",
    }  # fmt: skip
    status, body = http("POST", alertmanager + "/api/v2/silences", json.loads(json.dumps(silence)))
    assert status == 200, body
    rig.start(alertmanager_url=alertmanager)
    rig.kill()
    exited = rig.event("postmaster_exited")
    assert "silenced" in exited["reason"] and body["silenceID"] in exited["reason"], exited
    time.sleep(1.5)
    assert "restart_started" not in rig.kinds()


def test_an_unreachable_alertmanager_does_not_stop_the_fast_path(rig: Rig) -> None:
    rig.start(alertmanager_url=f"http://127.0.0.1:{free_port()}")
    pid, _ = rig.kill()
    wait_for(lambda: accepting_again(rig.cluster, pid), 15, "the repair")
    crash = rig.event("crash_detected")
    assert "could not check Alertmanager silences" in crash["note"]
