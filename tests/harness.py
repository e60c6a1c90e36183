"""Test helpers: real clusters and services come from pgmedic.sandbox; the rest is test-only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pgmedic.sandbox import (  # noqa: F401 - re-exported for the tests
    INSTALL_HINT,
    REPO,
    Cluster,
    Service,
    as_owner,
    chown_owner,
    free_port,
    http,
    make_temp_dir,
    make_template,
    make_trusted_dir,
    new_cluster,
    owner,
    pg_bin_dir,
    pgmedic_service,
    start_service,
    wait_for,
    write_config,
    write_secret,
)


def pgmedic(cluster: Cluster | None, *args: str, timeout: float = 120, config: Path | None = None):
    """Run the pgmedic CLI as a user would, against CLUSTER's config."""
    cfg = config or (cluster.config_path if cluster else None)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
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
