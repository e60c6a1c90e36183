"""Test-only helpers. Real clusters and services come from pgmedic.demo.sandbox, imported from there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pgmedic.demo.sandbox import Cluster

REPO = Path(__file__).resolve().parent.parent  # the source tree (alerts/, grafana/, docs/)


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
