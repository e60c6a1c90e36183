"""Chaos drills on a running Stack, and the incident timeline Prometheus and the journal tell.

Each drill does one bad thing to the instance and says what outcome to wait for. The timeline is
read afterwards from the real chain: Prometheus' raw samples (first failing scrape, first firing
evaluation) and the remediator's journal (webhook received, restart started, recovered).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from .sandbox import wait_for
from .stack import Stack


@dataclass
class Drill:
    name: str
    description: str
    run: Callable[[Stack], object]  # does the bad thing; may return a handle to release afterwards
    done: Callable[[Stack, float], bool]  # the expected outcome is visible
    timeout: float
    recovers: bool  # whether the outcome is a recovery by pgmedic
    cleanup: Callable[[object], None] = field(default=lambda handle: None)


def postmaster_pid(stack: Stack) -> int:
    return stack.cluster.postmaster_pid()


def accepting(stack: Stack) -> bool:
    try:
        return stack.cluster.psql("SELECT 1", timeout=3) == "1"
    except Exception:
        return False


def recovered_since(stack: Stack, t0: float) -> bool:
    return any(e["kind"] == "recovered" and e["ts"] >= t0 for e in stack.events()) and accepting(stack)


def _kill9(stack: Stack) -> int:
    pid = postmaster_pid(stack)
    os.kill(pid, signal.SIGKILL)
    return pid


def _sigstop(stack: Stack) -> int:
    pid = postmaster_pid(stack)
    os.kill(pid, signal.SIGSTOP)
    return pid


def _sigcont(pid: object) -> None:
    if isinstance(pid, int):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _kill_checkpointer(stack: Stack) -> int:
    pid = postmaster_pid(stack)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if "checkpointer" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
            os.kill(int(child), signal.SIGKILL)
            return int(child)
    raise RuntimeError("no checkpointer found")


def _exhaust(stack: Stack) -> list[psycopg.Connection]:
    """Fill every non-superuser slot with idle clients of an ordinary role."""
    stack.cluster.psql("DO $$BEGIN CREATE ROLE drill LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    usable = int(stack.cluster.psql("SELECT current_setting('max_connections')::int - "
                                    "current_setting('superuser_reserved_connections')::int"))  # fmt: skip
    dsn = f"host={stack.cluster.socket_dir} port={stack.cluster.port} dbname=postgres user=drill"
    clients = []
    for _ in range(usable):
        try:
            clients.append(psycopg.connect(dsn, connect_timeout=5))
        except psycopg.OperationalError:
            break
    return clients


def _release(clients: object) -> None:
    for c in clients if isinstance(clients, list) else []:
        c.close()


def _firing(alertname: str) -> Callable[[Stack, float], bool]:
    return lambda stack, t0: bool(stack.firing(alertname))


DRILLS = {
    d.name: d
    for d in (
        Drill("kill9", "kill -9 of the postmaster", _kill9, recovered_since, 60, True),
        Drill("sigstop", "kill -STOP of the postmaster (a hang)", _sigstop, recovered_since, 120, True, _sigcont),
        Drill(
            "worker", "kill -9 of the checkpointer: PostgreSQL's own crash-restart cycle", _kill_checkpointer,
            lambda s, t0: bool(s.firing("PostgresCrashRestarted")) and accepting(s), 60, False,
        ),
        Drill(
            "exhaust", "clients take every connection slot", _exhaust, _firing("PostgresConnectionsExhausted"),
            90, False, _release,
        ),
        Drill(
            "exporter", "the exporter stops", lambda s: s.stop_service("exporter"), _firing("PgmedicExporterDown"), 60,
            False,
        ),
    )
}  # fmt: skip


def run_drill(stack: Stack, name: str, wait: bool = True) -> tuple[float, object, bool]:
    """Start drill NAME; with WAIT, block until its outcome (or its timeout). Returns (t0, handle, ok)."""
    drill = DRILLS[name]
    t0 = time.time()
    handle = drill.run(stack)
    if not wait:
        return t0, handle, False
    try:
        wait_for(lambda: drill.done(stack, t0), drill.timeout, f"drill {name}", interval=0.1)
        return t0, handle, True
    except TimeoutError:
        return t0, handle, False


# ---- timeline ------------------------------------------------------------------------------------


def timeline(stack: Stack, t0: float, alertname: str = "PostgresPostmasterDown") -> list[tuple[str, float | None]]:
    """(stage, seconds after t0) from Prometheus' samples and the journal; None for a stage not seen."""
    inst = stack.cluster.name

    def first_sample(expr: str, value: float | None = None) -> float | None:
        for ts, v in stack.samples(expr):
            if ts >= t0 and (value is None or v == value):
                return ts - t0
        return None

    def first_event(kind: str, **match: str) -> float | None:
        for e in stack.events():
            if e["kind"] == kind and e["ts"] >= t0 and all(e.get(k) == v for k, v in match.items()):
                return float(e["ts"]) - t0
        return None

    detected = first_event("crash_detected")
    return [
        ("killed", 0.0),
        *([("crash detected by the fast path", detected)] if detected is not None else []),
        ("first failing scrape", first_sample(f'pg_postmaster_up{{pg_instance="{inst}"}}', 0.0)),
        ("alert firing", first_sample(f'ALERTS{{alertname="{alertname}",alertstate="firing",pg_instance="{inst}"}}')),
        ("webhook received", first_event("notification", result="accepted")),
        ("restart started", first_event("restart_started")),
        ("accepting connections", first_event("recovered")),
    ]


def format_timeline(stages: list[tuple[str, float | None]]) -> str:
    lines = []
    for stage, offset in stages:
        shown = "   (not seen)" if offset is None else f"{offset:+8.2f}s"
        lines.append(f"  {shown}  {stage}")
    return "\n".join(lines)
