"""Test-only helpers. Real clusters and services come from pgmedic.demo.sandbox, imported from there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pgmedic.demo.sandbox import (
    Cluster,
    Service,
    free_port,
    http,
    pgmedic_service,
    wait_for,
    write_config,
    write_secret,
)
from tests.ksys_sink import KsysSink

REPO = Path(__file__).resolve().parent.parent  # the source tree (alerts/, grafana/, docs/)
TOKEN = "s3cret-token"  # the remediator's bearer token in tests


def pgmedic(cluster: Cluster | None, *args: str, timeout: float = 120, config: Path | None = None):
    """Run the pgmedic CLI as a user would, against CLUSTER's config."""
    cfg = config or (cluster.config_path if cluster else None)
    env = dict(os.environ)
    argv = [sys.executable, "-m", "pgmedic", *(["--config", str(cfg)] if cfg else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def rfc3339(ts: float | None = None) -> str:
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"


def alert_payload(
    alertname: str, pg_instance: str | None, *, status: str = "firing", starts_at: str | None = None,
    fingerprint: str = "f00dfeed", remediation: str = "restart", **labels: str,
) -> dict[str, Any]:  # fmt: skip
    """An Alertmanager version 4 webhook payload with one alert."""
    alert_labels = {"alertname": alertname, "severity": "critical", "remediation": remediation, **labels}
    if pg_instance is not None:
        alert_labels["pg_instance"] = pg_instance
    return {
        "version": "4",
        "groupKey": '{}/{remediation="restart"}:' + f'{{alertname="{alertname}"}}',
        "status": status,
        "receiver": "pgmedic-remediator",
        "groupLabels": {"alertname": alertname},
        "commonLabels": alert_labels,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": alert_labels,
                "annotations": {"summary": "test"},
                "startsAt": starts_at or rfc3339(),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


class Rig:
    """A cluster, its config and a running remediator (or two), for one test."""

    def __init__(self, cluster: Cluster, tmp: Path, services: list, ksys: KsysSink) -> None:
        self.cluster, self.tmp, self.services, self.ksys = cluster, tmp, services, ksys
        self.token_file = tmp / "webhook.token"
        write_secret(self.token_file, TOKEN + "\n")
        self.state = tmp / "state"
        self.config = tmp / "pgmedic.yaml"
        self.remediators: list[Service] = []

    def configure(self, remediator: dict[str, Any] | None = None, **instance: Any) -> None:
        defaults = {"restart_delay": "0.2s", "max_restart": 3, "restart_window": "15m", "critical": True}
        self.cluster.extra.update({**defaults, **instance})
        write_config(
            self.config, [self.cluster], self.state,
            remediator={"token_file": str(self.token_file), **(remediator or {})},
            ksys={"webhook": self.ksys.url, "timeout": "2s"},
        )  # fmt: skip

    def start(self) -> Service:
        service = pgmedic_service("remediator", self.config, self.tmp, free_port())
        self.services.append(service)
        self.remediators.append(service)
        return service

    @property
    def url(self) -> str:
        return self.remediators[0].url

    def post(self, payload: dict | bytes, token: str | None = TOKEN, url: str | None = None) -> tuple[int, Any]:
        return http("POST", (url or self.url) + "/api/v1/alerts", payload, token)

    def events(self) -> list[dict]:
        status, body = http("GET", self.url + "/api/v1/events?limit=10000")
        assert status == 200
        return body["events"]

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events() if e["kind"] not in ("ksys_delivered", "ksys_failed")]

    def wait_event(self, kind: str, timeout: float = 60) -> dict:
        return wait_for(lambda: next((e for e in self.events() if e["kind"] == kind), None), timeout, kind)
