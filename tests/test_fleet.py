"""`pgmedic fleet generate`: one inventory, and every remediable alert reaches its own host's remediator
(checked with amtool against the generated routing), every target carries its pgmedic_host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_alerts import tool

INVENTORY = """
defaults:
  token_file: /etc/pgmedic/webhook.token
hosts:
  - {name: db-1, address: 10.0.0.11}
  - {name: db-2, address: 10.0.0.12, scheme: https}
  - {name: db-3, address: db-3.example, remediator_port: 9290, token_file: /etc/pgmedic/db-3.token}
"""


def generate(tmp_path: Path, inventory: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "fleet.yaml").write_text(inventory)
    argv = [sys.executable, "-m", "pgmedic", "fleet", "generate", str(tmp_path / "fleet.yaml"), str(tmp_path / "out")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def route(config: Path, *labels: str) -> str:
    argv = [tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def test_each_hosts_remediable_alerts_reach_its_own_remediator_and_nothing_else_does(tmp_path: Path) -> None:
    assert generate(tmp_path, INVENTORY).returncode == 0
    config = tmp_path / "out" / "alertmanager.yml"
    check = subprocess.run([tool("amtool"), "check-config", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    for host in ("db-1", "db-2", "db-3"):
        labels = ["alertname=PostgresPostmasterDown", "remediation=restart", "pg_instance=main", f"pgmedic_host={host}"]
        assert route(config, *labels) == f"pgmedic-remediator-{host}"
    # No host, an unknown host, or nothing to remediate: the humans' receiver, never a guessed remediator.
    assert route(config, "remediation=restart", "pg_instance=main") == "default"
    assert route(config, "remediation=restart", "pg_instance=main", "pgmedic_host=db-9") == "default"
    assert route(config, "remediation=none", "pg_instance=main", "pgmedic_host=db-1") == "default"
    text = config.read_text()
    assert "https://10.0.0.12:9189/api/v1/alerts" in text and "http://db-3.example:9290/api/v1/alerts" in text
    assert "/etc/pgmedic/db-3.token" in text
    exporters = json.loads((tmp_path / "out" / "file_sd" / "pgmedic-exporters.json").read_text())
    assert exporters[2] == {"targets": ["db-3.example:9188"], "labels": {"pgmedic_host": "db-3"}}
    remediators = json.loads((tmp_path / "out" / "file_sd" / "pgmedic-remediators.json").read_text())
    assert [g["targets"] for g in remediators] == [["10.0.0.11:9189"], ["10.0.0.12:9189"], ["db-3.example:9290"]]


@pytest.mark.parametrize(
    ("inventory", "message"),
    [
        ("hosts: []", "expected a mapping with a non-empty list under hosts:"),
        ("hosts:\n  - {name: db-1}", "hosts[0]: address must be a host name or IP address, got None"),
        ("hosts:\n  - {name: 'db 1', address: a}", "hosts[0]: name must be a host name"),
        ("hosts:\n  - {name: a, address: x}\n  - {name: a, address: y}", "hosts: name 'a' appears twice"),
        ("hosts:\n  - {name: a, address: x, exporter_port: 0}", "hosts[0]: exporter_port must be a port number"),
        ("hosts:\n  - {name: a, address: x, token_file: rel}", "hosts[0]: token_file must be an absolute path"),
        ("hosts:\n  - {name: a, address: x, colour: blue}", "hosts[0]: unknown key 'colour'"),
        ("hosts: [", "fleet.yaml"),
    ],
)
def test_a_bad_inventory_gets_one_line_naming_file_and_entry_and_writes_nothing(
    tmp_path: Path, inventory: str, message: str
) -> None:
    result = generate(tmp_path, inventory)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(tmp_path / "fleet.yaml") in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
