"""Changes without gaps: SIGHUP reloads both services, `pgmedic -s` syncs them, a broken file changes nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pgmedic.demo.sandbox import Cluster, Service, free_port, http, pgmedic_service, wait_for, write_secret
from tests.harness import alert_payload, pgmedic
from tests.test_exporter import has, scrape, value

TOKEN = "reload-token"


class Host:
    """One configuration directory (main file + instances.d/) with a running exporter and remediator."""

    def __init__(self, tmp: Path, services: list) -> None:
        self.dir = tmp / "etc"
        self.dir.mkdir()
        self.config = self.dir / "pgmedic.yaml"
        token = write_secret(tmp / "token", TOKEN)
        main = {"remediator": {"state_dir": str(tmp / "state"), "token_file": str(token), "recovery_watch": "0s"}}
        self.config.write_text(yaml.safe_dump(main))
        self.tmp, self.services = tmp, services
        self.exporter: Service | None = None
        self.remediator: Service | None = None

    def cli(self, *args: str) -> Any:
        return pgmedic(None, *args, config=self.config)

    def add(self, cluster: Cluster, *flags: str) -> Any:
        attrs = {**cluster.instance_attrs(), "restart_delay": "0.2s"}
        return self.cli(*flags, "add", "instance", cluster.name, *(f"{k}={v}" for k, v in attrs.items()))

    def start(self) -> None:
        self.exporter = pgmedic_service("exporter", self.config, self.tmp, free_port())
        self.remediator = pgmedic_service("remediator", self.config, self.tmp, free_port())
        self.services += [self.exporter, self.remediator]

    def post(self, payload: dict) -> tuple[int, Any]:
        assert self.remediator is not None
        return http("POST", self.remediator.url + "/api/v1/alerts", payload, TOKEN)

    def status(self, service: Service) -> dict:
        code, body = http("GET", service.url + "/api/v1/status")
        assert code == 200, body
        return body["config"]

    def events(self) -> list[dict]:
        assert self.remediator is not None
        return http("GET", self.remediator.url + "/api/v1/events?limit=10000")[1]["events"]


def test_an_instance_added_with_s_is_scraped_and_remediated_without_a_restart(
    make_cluster: Callable[..., Cluster], tmp_path: Path, services: list
) -> None:
    a, b = make_cluster("alpha"), make_cluster("beta")
    host = Host(tmp_path, services)
    assert host.add(a).returncode == 0
    host.start()
    assert host.exporter and host.remediator
    pids = (host.exporter.proc.pid, host.remediator.proc.pid)

    silent = host.add(b)
    assert silent.returncode == 0, silent.stderr
    assert f"the exporter (pid {pids[0]})" in silent.stdout and "still run the previous configuration" in silent.stdout
    samples, _ = scrape(host.exporter, timeout_header=5)
    assert not has(samples, "pg_up", pg_instance="beta"), "without -s the services keep the old configuration"
    assert host.cli("delete", "instance", "beta").returncode == 0

    synced = host.add(b, "-s")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"sync: exporter (pid {pids[0]}): reloaded, 2 instance(s): alpha, beta" in synced.stdout, synced.stdout
    assert f"sync: remediator (pid {pids[1]}): reloaded, 2 instance(s): alpha, beta" in synced.stdout
    samples, _ = scrape(host.exporter, timeout_header=5)
    assert value(samples, "pg_up", pg_instance="beta") == 1
    assert value(samples, "pgmedic_config_last_reload_successful") == 1

    old = b.postmaster_pid()
    os.kill(old, signal.SIGKILL)
    status, body = host.post(alert_payload("PostgresPostmasterDown", "beta"))
    assert status == 200 and body["decisions"][0]["result"] == "accepted", body
    wait_for(lambda: any(e["kind"] == "recovered" and e["instance"] == "beta" for e in host.events()), 30, "recovery")
    b.wait_accepting()
    assert b.postmaster_pid() != old
    assert (host.exporter.proc.pid, host.remediator.proc.pid) == pids and all(s.proc.poll() is None for s in services)

    removed = host.cli("-s", "delete", "instance", "beta")
    assert removed.returncode == 0 and "reloaded, 1 instance(s): alpha" in removed.stdout, removed.stdout
    samples, _ = scrape(host.exporter, timeout_header=5)
    assert not has(samples, "pg_up", pg_instance="beta")
    status, body = host.post(alert_payload("PostgresPostmasterDown", "beta", fingerprint="gone"))
    assert body["decisions"][0]["reason"] == "not a configured instance"


def test_a_broken_config_on_sighup_keeps_the_old_one_and_nothing_is_dropped(
    make_cluster: Callable[..., Cluster], tmp_path: Path, services: list
) -> None:
    a = make_cluster("alpha")
    host = Host(tmp_path, services)
    assert host.add(a).returncode == 0
    host.start()
    assert host.exporter and host.remediator
    good = host.config.read_text()
    failures: list[str] = []
    stop = threading.Event()

    def scrape_and_post() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                samples, _ = scrape(host.exporter, timeout_header=5)  # type: ignore[arg-type]
                if value(samples, "pg_up", pg_instance="alpha") != 1:
                    failures.append("pg_up 0 during a reload")
                code, _ = host.post(
                    alert_payload("PostgresPostmasterDown", "alpha", status="resolved", fingerprint=f"r{n}")
                )
                if code != 200:
                    failures.append(f"webhook answered {code}")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    load = threading.Thread(target=scrape_and_post)
    load.start()
    try:
        for _ in range(5):  # good reloads under load: no scrape, no webhook lost
            for service in (host.exporter, host.remediator):
                service.proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        host.config.write_text(good + "exporter: [unclosed\n")
        for service in (host.exporter, host.remediator):
            before = host.status(service)["generation"]
            service.proc.send_signal(signal.SIGHUP)
            last = wait_for(
                lambda s=service: (st := host.status(s))["last_reload"]["ok"] is False and st, 10, "the refused reload"
            )
            assert str(host.config) in last["last_reload"]["error"] and "line" in last["last_reload"]["error"]
            assert last["generation"] == before, "the old configuration stays in force"
            assert "reload refused" in service.log() and str(host.config) in service.log()
        time.sleep(0.5)
    finally:
        stop.set()
        load.join(30)
    assert not failures, failures[:5]
    assert all(s.proc.poll() is None for s in (host.exporter, host.remediator)), "SIGHUP never stops a service"
    samples, _ = scrape(host.exporter, timeout_header=5)
    assert value(samples, "pgmedic_config_last_reload_successful") == 0
    assert value(samples, "pg_up", pg_instance="alpha") == 1
    _, metrics = http("GET", host.remediator.url + "/metrics")
    assert "pgmedic_config_last_reload_successful 0.0" in metrics
    host.config.write_text(good)
    synced = host.cli("-s", "suspend", "instance", "alpha")
    assert synced.returncode == 0 and synced.stdout.count("reloaded, 1 instance(s): alpha") == 2, synced.stdout
    samples, _ = scrape(host.exporter, timeout_header=5)
    assert value(samples, "pgmedic_config_last_reload_successful") == 1
