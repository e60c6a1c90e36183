"""A fleet on one machine: hosts on their own loopback addresses, an HA Prometheus pair, a clustered
Alertmanager pair, routed by `pgmedic fleet generate` from an inventory.

Each simulated host (127.0.0.11, .12, ...) has its own PostgreSQL cluster, all named ``main`` as on a
real fleet, its own exporter and remediator (``remediator.host`` set to the host's name) and its own
state directory. The two Prometheus servers scrape every host through the generated file_sd files and
send to both Alertmanagers, which gossip with each other on loopback. Only the shipped files, the
generated routing and ports and paths are used: what a user deploys (docs/fleet.md).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..fleet import generate
from .sandbox import (
    Cluster,
    Service,
    free_port,
    http,
    kill_service,
    make_temp_dir,
    make_template,
    new_cluster,
    pgmedic_service,
    start_again,
    start_service,
    wait_for,
    write_config,
)
from .stack import (
    ALERTMANAGER,
    ALERTS_DIR,
    INSTANCE_DEFAULTS,
    PROMETHEUS,
    TOOLS_HINT,
    missing_tools,
    prometheus_flags,
    prometheus_query,
)

FIRST_ADDRESS = 11  # host N listens on 127.0.0.(10 + N)


@dataclass
class Host:
    """One simulated host: its cluster, config and services."""

    name: str
    address: str
    root: Path
    cluster: Cluster
    config: Path
    ports: dict[str, int]
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def remediator_url(self) -> str:
        return f"http://{self.address}:{self.ports['remediator']}"

    def events(self) -> list[dict[str, Any]]:
        """This host's journal (every event, oldest first)."""
        status, body = http("GET", self.remediator_url + "/api/v1/events?limit=10000")
        assert status == 200, f"{self.name}: events {status} {body}"
        events: list[dict[str, Any]] = body["events"]
        return events

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events()]

    def start(self, kind: str) -> None:
        """Start (or start again) this host's exporter or remediator on its address and port."""
        self.services[kind] = pgmedic_service(kind, self.config, self.root, self.ports[kind], self.address)


@dataclass
class Fleet:
    root: Path
    hosts: dict[str, Host]
    token: str
    services: dict[str, Service] = field(default_factory=dict)  # prometheus0/1, alertmanager0/1

    def url(self, name: str) -> str:
        return self.services[name].url

    def query(self, expr: str, prometheus: str = "prometheus0") -> list[dict[str, Any]]:
        return prometheus_query(self.url(prometheus), expr)

    def firing(self, alertname: str, prometheus: str = "prometheus0") -> list[dict[str, str]]:
        """Labels of ALERTNAME firing now, as PROMETHEUS evaluates it."""
        expr = f'ALERTS{{alertname="{alertname}",alertstate="firing"}}'
        return [r["metric"] for r in self.query(expr, prometheus)]

    def kill(self, name: str) -> None:
        """SIGKILL one of the central services (a crash) and wait until it is gone."""
        kill_service(self.services[name])

    def start_again(self, name: str) -> None:
        self.services[name] = start_again(self.services[name], self.root)

    def wait_ready(self, timeout: float = 90) -> None:
        """Until both Prometheus servers scrape every exporter and remediator and both Alertmanagers
        see each other."""
        targets = 2 * len(self.hosts)

        def ready() -> bool:
            try:
                for prometheus in ("prometheus0", "prometheus1"):
                    up = self.query('sum(up{job=~"pgmedic-exporter|pgmedic-remediator"})', prometheus)
                    if not up or float(up[0]["value"][1]) != targets:
                        return False
                for am in ("alertmanager0", "alertmanager1"):
                    status, body = http("GET", self.url(am) + "/api/v2/status")
                    if status != 200 or len(body["cluster"]["peers"]) != 2:
                        return False
                return True
            except (RuntimeError, OSError, KeyError, TypeError):
                return False

        wait_for(ready, timeout, "both Prometheus to scrape every host and the Alertmanagers to cluster", 0.25)

    def close(self) -> None:
        for service in reversed(list(self.services.values())):
            with contextlib.suppress(Exception):
                service.stop()
        for host in self.hosts.values():
            for service in host.services.values():
                with contextlib.suppress(Exception):
                    service.stop()
            host.cluster.destroy()
            shutil.rmtree(host.root, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


def build_fleet(hosts: int = 3) -> Fleet:
    """Start HOSTS simulated hosts and the central pair of each; on any failure tear everything down."""
    missing = missing_tools()
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: {TOOLS_HINT}")
    root = make_temp_dir("pgmedic-fleet-")
    token = "pgmedic-fleet-" + str(time.time_ns())
    token_file = root / "webhook.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    fleet = Fleet(root, {}, token)
    try:
        template = make_template(root / "template-base")
        for n in range(1, hosts + 1):
            fleet.hosts[f"host-{n}"] = _host(f"host-{n}", f"127.0.0.{FIRST_ADDRESS + n - 1}", template, token_file)
        inventory = root / "fleet.yaml"
        inventory.write_text(yaml.safe_dump({
            "defaults": {"token_file": str(token_file)},
            "hosts": [
                {"name": h.name, "address": h.address, "exporter_port": h.ports["exporter"],
                 "remediator_port": h.ports["remediator"]}
                for h in fleet.hosts.values()
            ],
        }))  # fmt: skip
        generated = root / "generated"
        generate(str(inventory), str(generated))
        _start_alertmanagers(fleet, generated / "alertmanager.yml")
        for i in range(2):
            _start_prometheus(fleet, i, generated / "file_sd")
        fleet.wait_ready()
        return fleet
    except BaseException:
        fleet.close()
        raise


def _host(name: str, address: str, template: Path, token_file: Path) -> Host:
    cluster = new_cluster(template, "main")
    try:
        cluster.extra.update(INSTANCE_DEFAULTS)
        root = make_temp_dir(f"pgmedic-{name}-")
        host = Host(
            name, address, root, cluster, root / "pgmedic.yaml", {"exporter": free_port(), "remediator": free_port()}
        )
        write_config(
            host.config, [cluster], root / "state",
            remediator={"token_file": str(token_file), "host": name},
        )  # fmt: skip
        host.start("exporter")
        host.start("remediator")
        return host
    except BaseException:
        cluster.destroy()
        raise


def _start_alertmanagers(fleet: Fleet, config: Path) -> None:
    """Two Alertmanagers gossiping on loopback. A short peer timeout: the second waits 1 s, not 15 s,
    for the first one's notification log before it delivers too (the remediator takes both)."""
    web = [free_port(), free_port()]
    gossip = [free_port(), free_port()]
    for i in range(2):
        data = fleet.root / f"alertmanager{i}"
        data.mkdir()
        argv = [
            ALERTMANAGER, f"--config.file={config}", f"--storage.path={data}", f"--web.listen-address=127.0.0.1:{web[i]}",
            f"--cluster.listen-address=127.0.0.1:{gossip[i]}", f"--cluster.peer=127.0.0.1:{gossip[1 - i]}",
            "--cluster.peer-timeout=1s", "--cluster.settle-timeout=2s", "--cluster.pushpull-interval=2s",
            "--cluster.reconnect-interval=1s", "--log.level=warn",
        ]  # fmt: skip
        fleet.services[f"alertmanager{i}"] = start_service(f"alertmanager{i}", argv, fleet.root, web[i])


def _start_prometheus(fleet: Fleet, i: int, file_sd: Path) -> None:
    """One of the HA pair: the shipped config and rules, targets from the generated file_sd files, both
    Alertmanagers, and a replica label that alerts leave behind (so both servers' alerts are one)."""
    doc: dict[str, Any] = yaml.safe_load((ALERTS_DIR / "prometheus.yml").read_text())
    doc["global"]["external_labels"] = {"replica": str(i)}
    doc["rule_files"] = [str(ALERTS_DIR / "pgmedic.rules.yml")]
    ams = [fleet.url(f"alertmanager{n}").removeprefix("http://") for n in range(2)]
    doc["alerting"] = {
        "alert_relabel_configs": [{"action": "labeldrop", "regex": "replica"}],
        "alertmanagers": [{"static_configs": [{"targets": ams}]}],
    }
    files = {"pgmedic-exporter": "pgmedic-exporters.json", "pgmedic-remediator": "pgmedic-remediators.json"}
    for job in doc["scrape_configs"]:
        job.pop("static_configs", None)
        job["file_sd_configs"] = [{"files": [str(file_sd / files[job["job_name"]])]}]
    data = fleet.root / f"prometheus{i}"
    data.mkdir()
    (data / "prometheus.yml").write_text(yaml.safe_dump(doc))
    port = free_port()
    argv = [
        PROMETHEUS, f"--config.file={data / 'prometheus.yml'}", f"--storage.tsdb.path={data / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d", "--log.level=warn",
        *prometheus_flags(ALERTS_DIR),
    ]  # fmt: skip
    fleet.services[f"prometheus{i}"] = start_service(f"prometheus{i}", argv, fleet.root, port)
