"""Test-only helpers. Real clusters and services come from pgmedic.demo.sandbox, imported from there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pgmedic.demo.sandbox import (
    Cluster,
    Service,
    alert_payload,
    free_port,
    http,
    pgmedic_service,
    rfc3339,
    wait_for,
    write_config,
    write_secret,
)
from tests.ksys_sink import KsysSink

__all__ = ["TOKEN", "Rig", "alert_payload", "pgmedic", "rfc3339"]  # the payload helpers live in the sandbox

REPO = Path(__file__).resolve().parent.parent  # the source tree (alerts/, grafana/, docs/)
TOKEN = "s3cret-token"  # the remediator's bearer token in tests


def pgmedic(cluster: Cluster | None, *args: str, timeout: float = 120, config: Path | None = None):
    """Run the pgmedic CLI as a user would, against CLUSTER's config."""
    cfg = config or (cluster.config_path if cluster else None)
    env = dict(os.environ)
    argv = [sys.executable, "-m", "pgmedic", *(["--config", str(cfg)] if cfg else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


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
