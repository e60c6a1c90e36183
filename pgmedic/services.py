"""This host's running pgmedic services, and telling them to reload: what ``pgmedic -s`` does.

With the VM agent, ``ksysvmmgr -s`` syncs a change to the running agent at once. pgmedic finds the
exporter and remediator that run with the same configuration file (from /proc: their command line
and, when it names no ``--config``, their PGMEDIC_CONFIG), sends each SIGHUP through a pidfd (the
kernel lets only root or the service's own user do that), and reads its status API until it reports
the reload's outcome.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from . import procfs
from .config import DEFAULT_CONFIG, Config, split_listen
from .signals import open_handle

KINDS = ("exporter", "remediator")
STATUS_WAIT = 5.0  # seconds to wait for a service to report its reload


@dataclass(frozen=True)
class RunningService:
    kind: str
    pid: int
    start_ticks: int
    listen: str  # HOST:PORT its HTTP API answers on

    @property
    def status_url(self) -> str:
        host, port = split_listen(self.listen)
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/api/v1/status"


def _argv(pid: int) -> list[str]:
    data = procfs.read_file(f"{procfs.PROC}/{pid}/cmdline", 65536) or b""
    return [word.decode(errors="replace") for word in data.split(b"\0") if word]


def _environ(pid: int, name: str) -> str | None:
    data = procfs.read_file(f"{procfs.PROC}/{pid}/environ", 1 << 20) or b""
    prefix = name.encode() + b"="
    return next((w[len(prefix) :].decode(errors="replace") for w in data.split(b"\0") if w.startswith(prefix)), None)


def parse_service_argv(argv: list[str]) -> tuple[str, str | None, str | None] | None:
    """(kind, --config, --listen) when ARGV runs `pgmedic [options] exporter|remediator`, else None."""
    start = next(
        (
            i + 1
            for i, word in enumerate(argv)
            if os.path.basename(word) == "pgmedic" and (i == 0 or argv[i - 1] != "-c")
        ),
        None,
    )
    if start is None:
        return None
    options: dict[str, str | None] = {"--config": None, "--listen": None}
    kind = None
    words = iter(argv[start:])
    for word in words:
        key, eq, value = word.partition("=")
        if key in options:
            options[key] = value if eq else next(words, None)
        elif word.startswith("-"):
            continue  # -s, -l N (its number is skipped as a non-command word below)
        elif word in KINDS:
            kind = word
            continue
        elif kind is None and not word.isdigit():
            return None  # another command: start, monitor, query …
    return (kind, options["--config"], options["--listen"]) if kind else None


def running_services(config: Config) -> list[RunningService]:
    """The exporter and remediator processes on this host that run CONFIG's main file."""
    target = os.path.realpath(config.path)
    found = []
    for name in os.listdir(procfs.PROC):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        parsed = parse_service_argv(_argv(pid))
        if parsed is None:
            continue
        kind, path, listen = parsed
        path = path or _environ(pid, "PGMEDIC_CONFIG") or DEFAULT_CONFIG
        cwd = procfs.read_link(pid, "cwd") or "/"
        stat = procfs.read_stat(pid)
        if stat is None or os.path.realpath(os.path.join(cwd, path)) != target:
            continue
        section = config.exporter if kind == "exporter" else config.remediator
        found.append(RunningService(kind, pid, stat.start_ticks, listen or section.listen))
    return sorted(found, key=lambda s: (s.kind, s.pid))


def _status(service: RunningService) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(service.status_url, timeout=2) as response:
            body = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    config = body.get("config") if isinstance(body, dict) else None
    return config if isinstance(config, dict) else None


def reload_service(service: RunningService, reason: str) -> tuple[bool, str]:
    """SIGHUP SERVICE and wait (bounded) for its status to show the outcome: (ok, one line)."""
    who = f"{service.kind} (pid {service.pid})"
    before = _status(service) or {}
    handle = open_handle(service.pid, service.start_ticks, f"pgmedic {service.kind}", "this configuration")
    if handle is None:
        return False, f"{who}: exited before it could be told to reload"
    try:
        sent = time.time()
        handle.send(signal.SIGHUP, reason)
    except PermissionError:
        return False, f"{who}: not permitted to signal it (run as root or as the user it runs as)"
    finally:
        handle.close()
    deadline = time.monotonic() + STATUS_WAIT
    while time.monotonic() < deadline:
        now = _status(service) or {}
        last = now.get("last_reload")
        if isinstance(last, dict) and isinstance(last.get("at"), int | float) and last["at"] >= sent - 0.001:
            if not last.get("ok"):
                return False, f"{who}: refused the new configuration, keeps the previous one: {last.get('error')}"
            if before and now.get("generation") == before.get("generation"):
                time.sleep(0.05)  # read while the reload was being recorded: look again
                continue
            listed = now.get("instances")
            instances = [str(name) for name in listed] if isinstance(listed, list) else []
            return True, f"{who}: reloaded, {len(instances)} instance(s): {', '.join(instances) or '-'}"
        time.sleep(0.1)
    reachable = "" if before else " (its status API did not answer before either)"
    return (
        False,
        f"{who}: signalled, but {service.status_url} did not report the reload within {STATUS_WAIT:g}s{reachable}",
    )
