"""A fleet's routing from one inventory: Alertmanager routes and Prometheus targets, regenerated, never hand-edited.

Alertmanager cannot template a webhook URL per alert, so "send the alert to the remediator of the host
its instance runs on" needs one route per host. ``pgmedic fleet generate INVENTORY DIR`` writes them
from an inventory of hosts (name, address, ports, token file), together with the Prometheus file_sd
target files that give every series the ``pgmedic_host`` label those routes match on. Adding a host is
one line in the inventory and one run; Prometheus picks the target files up by itself, Alertmanager on
a reload. docs/fleet.md says why this and not each remediator pulling alerts from Alertmanager.

An alert that asks for remediation but names no inventoried host goes to the shipped default receiver
(humans), never to a guessed remediator; and each remediator still ignores an alert for another host.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .assets import alerts_dir
from .errors import ConfigError
from .text import shown

REMEDIATOR_RECEIVER = "pgmedic-remediator"  # the shipped receiver whose route is split per host
HOST_LABEL = "pgmedic_host"  # the host an instance runs on: a target label every series and alert carries
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")
DEFAULTS = {
    "exporter_port": 9188,
    "remediator_port": 9189,
    "scheme": "http",
    "token_file": "/etc/pgmedic/webhook.token",
}
HOST_KEYS = {"name", "address", *DEFAULTS}


@dataclass(frozen=True)
class Host:
    """One host of the fleet: its name (the pgmedic_host label), where its exporter and remediator listen."""

    name: str
    address: str
    exporter_port: int
    remediator_port: int
    scheme: str
    token_file: str

    @property
    def exporter(self) -> str:
        return f"{self.address}:{self.exporter_port}"

    @property
    def remediator(self) -> str:
        return f"{self.address}:{self.remediator_port}"

    @property
    def webhook(self) -> str:
        return f"{self.scheme}://{self.remediator}/api/v1/alerts"


def load_inventory(path: str) -> list[Host]:
    """The hosts of an inventory file; ConfigError naming the file and the entry at the first problem."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(path, None, str(exc).splitlines()[0]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("hosts"), list) or not doc["hosts"]:
        raise ConfigError(path, None, "expected a mapping with a non-empty list under hosts:")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(DEFAULTS):
        raise ConfigError(path, "defaults", f"takes only {', '.join(sorted(DEFAULTS))}")
    hosts: list[Host] = []
    for i, entry in enumerate(doc["hosts"]):
        where = (path, f"hosts[{i}]")
        if not isinstance(entry, dict):
            raise ConfigError(*where, "expected a mapping with name and address")
        unknown = set(entry) - HOST_KEYS
        if unknown:
            known = ", ".join(sorted(HOST_KEYS))
            raise ConfigError(*where, f"unknown key {shown(sorted(unknown)[0])} (known: {known})")
        hosts.append(_host({**DEFAULTS, **defaults, **entry}, where))
    for key in ("name", "exporter", "remediator"):
        seen: set[str] = set()
        for host in hosts:
            value = getattr(host, key)
            if value in seen:
                raise ConfigError(path, "hosts", f"{key} {shown(value)} appears twice")
            seen.add(value)
    return hosts


def _host(entry: dict[str, Any], where: tuple[str, str]) -> Host:
    name, address = entry.get("name"), entry.get("address")
    if not isinstance(name, str) or not _HOST_NAME.match(name):
        raise ConfigError(*where, f"name must be a host name (letters, digits, . _ -), got {shown(name)}")
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ConfigError(*where, f"address must be a host name or IP address, got {shown(address)}")
    ports = {}
    for key in ("exporter_port", "remediator_port"):
        port = entry[key]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(*where, f"{key} must be a port number, got {shown(port)}")
        ports[key] = port
    if entry["scheme"] not in ("http", "https"):
        raise ConfigError(*where, f"scheme must be http or https, got {shown(entry['scheme'])}")
    token = entry["token_file"]
    if not isinstance(token, str) or not os.path.isabs(token):
        raise ConfigError(*where, f"token_file must be an absolute path, got {shown(token)}")
    return Host(name, address, ports["exporter_port"], ports["remediator_port"], entry["scheme"], token)


def alertmanager_config(hosts: list[Host], shipped: dict[str, Any]) -> dict[str, Any]:
    """SHIPPED (alerts/alertmanager.yml) with its remediator route split into one child route per host.

    The parent route keeps the shipped matchers and timings and sends what matches no host to the
    shipped default receiver; each child matches pgmedic_host and sends to that host's remediator,
    with the shipped webhook settings (token, send_resolved, max_alerts) and the host's URL and token.
    """
    doc = copy.deepcopy(shipped)
    route = next(r for r in doc["route"]["routes"] if r["receiver"] == REMEDIATOR_RECEIVER)
    template = next(r for r in doc["receivers"] if r["name"] == REMEDIATOR_RECEIVER)
    doc["receivers"] = [r for r in doc["receivers"] if r["name"] != REMEDIATOR_RECEIVER]
    route["receiver"] = doc["route"]["receiver"]
    route["routes"] = []
    for host in hosts:
        receiver = copy.deepcopy(template)
        receiver["name"] = f"{REMEDIATOR_RECEIVER}-{host.name}"
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = host.webhook
            auth = hook.setdefault("http_config", {}).setdefault("authorization", {"type": "Bearer"})
            auth["credentials_file"] = host.token_file
        doc["receivers"].append(receiver)
        route["routes"].append({"receiver": receiver["name"], "matchers": [f'{HOST_LABEL}="{host.name}"']})
    return doc


def file_sd(hosts: list[Host], service: str) -> list[dict[str, Any]]:
    """Prometheus file_sd targets of SERVICE (exporter or remediator), one group per host with its label."""
    return [{"targets": [getattr(host, service)], "labels": {HOST_LABEL: host.name}} for host in hosts]


def generate(inventory: str, out: str) -> list[Path]:
    """Write alertmanager.yml and file_sd/pgmedic-{exporters,remediators}.json under OUT; the paths."""
    hosts = load_inventory(inventory)
    shipped = yaml.safe_load((alerts_dir() / "alertmanager.yml").read_text())
    target = Path(out)
    (target / "file_sd").mkdir(parents=True, exist_ok=True)
    written = {
        target / "alertmanager.yml": _header(inventory)
        + yaml.safe_dump(alertmanager_config(hosts, shipped), sort_keys=False),
        target / "file_sd" / "pgmedic-exporters.json": json.dumps(file_sd(hosts, "exporter"), indent=2) + "\n",
        target / "file_sd" / "pgmedic-remediators.json": json.dumps(file_sd(hosts, "remediator"), indent=2) + "\n",
    }
    for path, text in written.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # Prometheus re-reads file_sd files on change: never a half-written one
    return list(written)


def _header(inventory: str) -> str:
    return f"# Generated by `pgmedic fleet generate` from {inventory}: edit the inventory, not this file.\n"
