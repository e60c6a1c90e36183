"""The whole chain on loopback: a throwaway cluster, the exporter, the remediator, Prometheus and
Alertmanager, configured from the shipped alerts/ files with only ports and paths filled in.

Used by ``pgmedic demo``, the end-to-end tests and bench/mttr.py, so all three exercise exactly
what a user deploys. Every listener is on 127.0.0.1; Alertmanager's cluster port is switched off.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..assets import alerts_dir
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

ALERTS_DIR = alerts_dir()  # the shipped files, from the source tree or the installed package
PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"
TOOLS_HINT = "apt-get install -y prometheus prometheus-alertmanager postgresql (or run `make demo`)"
PROMETHEUS_FLAGS_FILE = "prometheus.flags"  # in alerts/: the flags a remediating Prometheus needs
INSTANCE_DEFAULTS = {"start_timeout": "30s", "stop_timeout": "3s", "monitor_timeout": "2s", "restart_delay": "1s"}


def missing_tools() -> list[str]:
    return [tool for tool in (PROMETHEUS, ALERTMANAGER) if shutil.which(tool) is None]


def prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query of the Prometheus at URL: the result vector or matrix; RuntimeError if it failed."""
    status, body = http("GET", url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if status != 200 or body.get("status") != "success":
        raise RuntimeError(f"query {expr!r} on {url} failed: {status} {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@dataclass
class Stack:
    root: Path
    cluster: Cluster  # the main instance; `clusters` holds it and any extra ones
    config_path: Path
    token: str
    alerts_dir: Path
    services: dict[str, Service] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    config_top: dict[str, Any] = field(default_factory=dict)  # the config's sections besides the instances

    # ---- URLs and queries -----------------------------------------------------------------------
    def url(self, name: str) -> str:
        return self.services[name].url

    @property
    def alertmanagers(self) -> list[Service]:
        return [s for n, s in self.services.items() if n.startswith("alertmanager")]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Prometheus instant query; returns the result vector or matrix."""
        return prometheus_query(self.url("prometheus"), expr)

    def samples(self, expr: str, minutes: int = 10) -> list[tuple[float, float]]:
        """Raw samples of one series selector over the last minutes, oldest first."""
        result = self.query(f"{expr}[{minutes}m]")
        out = [(float(t), float(v)) for series in result for t, v in series["values"]]
        return sorted(out)

    def firing(self, alertname: str) -> list[dict[str, str]]:
        return [r["metric"] for r in self.query(f'ALERTS{{alertname="{alertname}",alertstate="firing"}}')]

    def firing_alerts(self) -> list[dict[str, str]]:
        """The labels of every alert firing now."""
        return [r["metric"] for r in self.query('ALERTS{alertstate="firing"}')]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        status, body = http("GET", self.url("remediator") + f"/api/v1/events?since={since}&limit=10000")
        return body["events"] if status == 200 else []

    def wait_ready(self, timeout: float = 60) -> None:
        """Until Prometheus scrapes both pgmedic targets and has loaded the rules."""

        def ready() -> bool:
            try:
                up = {r["metric"]["job"]: r["value"][1] for r in self.query("up")}
                rules = self.query("count(ALERTS) or vector(0)") is not None
                return up.get("pgmedic-exporter") == "1" and up.get("pgmedic-remediator") == "1" and rules
            except (RuntimeError, OSError, KeyError):
                return False

        wait_for(ready, timeout, "Prometheus to scrape the exporter and the remediator", interval=0.25)

    def watch(self, cluster: Cluster) -> None:
        """Add CLUSTER to the configuration and have the exporter reload it (SIGHUP); destroyed with the stack."""
        self.clusters[cluster.name] = cluster
        write_config(self.config_path, list(self.clusters.values()), self.root / "state", **self.config_top)
        self.services["exporter"].proc.send_signal(signal.SIGHUP)

    def stop_service(self, name: str) -> None:
        self.services[name].stop()

    def kill_service(self, name: str) -> None:
        """SIGKILL one service (a crash, not a shutdown) and wait until it is gone."""
        kill_service(self.services[name])

    def start_again(self, name: str) -> None:
        """Start a killed or stopped service again with the same command line, port and data."""
        self.services[name] = start_again(self.services[name], self.root)

    def close(self) -> None:
        for service in reversed(list(self.services.values())):
            with contextlib.suppress(Exception):
                service.stop()
        for cluster in self.clusters.values() or [self.cluster]:
            cluster.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


def _alertmanager_config(
    shipped: Path, webhook: str, token_file: Path, extra_receivers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The shipped routing with the remediator's URL and the token path filled in.

    EXTRA_RECEIVERS ({pg_instance: webhook URL}) sends one instance's alerts elsewhere, ahead of the
    shipped routes: bench/mttr.py's naive chain shares the pipeline and differs only in the receiver.
    """
    doc: dict[str, Any] = yaml.safe_load(shipped.read_text())
    for receiver in doc.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook
            auth = hook.get("http_config", {}).get("authorization")
            if auth is not None:
                auth["credentials_file"] = str(token_file)
    remediation = next(r for r in doc["route"]["routes"] if r["receiver"] == "pgmedic-remediator")
    for instance, url in (extra_receivers or {}).items():
        doc["receivers"].append({"name": f"other-{instance}", "webhook_configs": [{"url": url, "send_resolved": True}]})
        route = {
            **remediation,
            "receiver": f"other-{instance}",
            "matchers": [f'pg_instance="{instance}"'],
            "continue": False,
        }
        doc["route"]["routes"].insert(0, route)
    return doc


def prometheus_flags(alerts_dir: Path) -> list[str]:
    """The shipped Prometheus flags (alerts/prometheus.flags, one per line, # comments)."""
    path = alerts_dir / PROMETHEUS_FLAGS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _prometheus_config(
    shipped: Path, rules: Path, exporter: int, remediator: int, alertmanagers: list[int]
) -> dict[str, Any]:
    """The shipped Prometheus config with the targets, the Alertmanagers and the rule path filled in."""
    doc: dict[str, Any] = yaml.safe_load(shipped.read_text())
    doc["rule_files"] = [str(rules)]
    doc["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [f"127.0.0.1:{p}" for p in alertmanagers]}]}]
    ports = {"pgmedic-exporter": exporter, "pgmedic-remediator": remediator}
    for job in doc["scrape_configs"]:
        if job["job_name"] in ports:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return doc


def build_stack(
    name: str = "demo",
    *,
    alerts_dir: Path = ALERTS_DIR,
    instance: dict[str, Any] | None = None,
    ksys: dict[str, Any] | None = None,
    alertmanagers: int = 1,
    webhook: str | None = None,
    prometheus_overrides: dict[str, Any] | None = None,
    extra_instances: dict[str, str] | None = None,
    more_instances: dict[str, dict[str, Any]] | None = None,
    major: int | None = None,
    prepare: Callable[[Cluster], None] | None = None,
) -> Stack:
    """Start the chain; on any failure everything already started is torn down again.

    WEBHOOK replaces the remediator as Alertmanager's receiver. EXTRA_INSTANCES ({name: webhook URL})
    adds clusters served by the same exporter, Prometheus and Alertmanager whose alerts go to that
    URL instead (bench/mttr.py's naive chain). MORE_INSTANCES ({name: instance attributes}) adds
    clusters served by the shipped chain with settings of their own (bench/mttr.py's fast-path
    chain). PROMETHEUS_OVERRIDES is merged into the global section (the fast profile). MAJOR picks the
    PostgreSQL version (the distribution's by default; see pgmedic.demo.pgversions). PREPARE gets the
    main cluster before anything watches it, to restart it with settings or storage of its own.
    """
    missing = missing_tools()
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: {TOOLS_HINT}")
    root = make_temp_dir(f"pgmedic-{name}-")
    clusters: dict[str, Cluster] = {}
    stack = None
    try:
        template = make_template(root / "template-base", major)
        for cluster_name in (name, *(extra_instances or {}), *(more_instances or {})):
            cluster = clusters[cluster_name] = new_cluster(template, cluster_name)
            own = (more_instances or {}).get(cluster_name, {})
            cluster.extra.update({**INSTANCE_DEFAULTS, **(instance or {}), **own})
        cluster = clusters[name]
        if prepare is not None:
            prepare(cluster)
        token = "pgmedic-" + str(time.time_ns())
        token_file = root / "webhook.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        top = {"remediator": {"token_file": str(token_file)}, **({"ksys": ksys} if ksys else {})}
        config_path = write_config(root / "pgmedic.yaml", list(clusters.values()), root / "state", **top)
        stack = Stack(root, cluster, config_path, token, alerts_dir, clusters=clusters, config_top=top)
        ports = {"exporter": free_port(), "remediator": free_port(), "prometheus": free_port()}
        stack.services["exporter"] = pgmedic_service("exporter", config_path, root, ports["exporter"])
        stack.services["remediator"] = pgmedic_service("remediator", config_path, root, ports["remediator"])
        am_ports = []
        for i in range(alertmanagers):
            port = free_port()
            am_dir = root / f"alertmanager{i}"
            am_dir.mkdir()
            am_config = am_dir / "alertmanager.yml"
            hook = webhook or f"http://127.0.0.1:{ports['remediator']}/api/v1/alerts"
            routing = _alertmanager_config(alerts_dir / "alertmanager.yml", hook, token_file, extra_instances)
            am_config.write_text(yaml.safe_dump(routing))
            argv = [
                ALERTMANAGER, f"--config.file={am_config}", f"--storage.path={am_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn",
            ]  # fmt: skip
            stack.services[f"alertmanager{i}"] = start_service(f"alertmanager{i}", argv, root, port)
            am_ports.append(port)
        prom_dir = root / "prometheus"
        prom_dir.mkdir()
        prom = _prometheus_config(
            alerts_dir / "prometheus.yml",
            alerts_dir / "pgmedic.rules.yml",
            ports["exporter"],
            ports["remediator"],
            am_ports,
        )
        prom["global"].update(prometheus_overrides or {})
        (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(prom))
        argv = [
            PROMETHEUS, f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--storage.tsdb.retention.time=1d",
            "--log.level=warn", *prometheus_flags(alerts_dir),
        ]  # fmt: skip
        stack.services["prometheus"] = start_service("prometheus", argv, root, ports["prometheus"])
        stack.wait_ready()
        return stack
    except BaseException:
        if stack is not None:
            stack.close()
        else:
            for made in clusters.values():
                made.destroy()
            shutil.rmtree(root, ignore_errors=True)
        raise
