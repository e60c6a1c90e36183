"""Chaos drills on a running Stack, and the incident timeline Prometheus and the journal tell.

Each drill does one bad thing to the instance and says what outcome to wait for. The timeline is
read afterwards from the real chain: Prometheus' raw samples (first failing scrape, first firing
evaluation) and the remediator's journal (webhook received, restart started, recovered).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from .. import procfs
from ..config import load_config
from ..instance import Instance
from ..signals import ProcessHandle, open_handle
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


def _verified(stack: Stack) -> tuple[ProcessHandle, list[ProcessHandle]]:
    """Pidfds on the stack's postmaster and children, verified by the identity rule like pgmedic's own."""
    instance = Instance(load_config(str(stack.config_path)).instance(stack.cluster.name))
    postmaster = instance.postmaster()
    handles = postmaster.handles() if postmaster is not None else None
    if handles is None:
        raise RuntimeError(f"drill: no verified postmaster of {stack.cluster.data}")
    return handles


def _signal(stack: Stack, sig: signal.Signals, backend_type: str = "postmaster") -> tuple[int, int]:
    """Send SIG to the postmaster (or its child of BACKEND_TYPE); (pid, start ticks) of the target."""
    own, children = _verified(stack)
    try:
        target = own if backend_type == "postmaster" else next(c for c in children if c.role == backend_type)
        stat = procfs.read_stat(target.pid)
        target.send(sig, "drill")
        return target.pid, stat.start_ticks if stat else 0
    except StopIteration:
        raise RuntimeError(f"drill: no {backend_type} found") from None
    finally:
        for handle in (own, *children):
            handle.close()


def _kill9(stack: Stack) -> tuple[int, int]:
    return _signal(stack, signal.SIGKILL)


def _sigstop(stack: Stack) -> tuple[int, int]:
    return _signal(stack, signal.SIGSTOP)


def _sigcont(stopped: object) -> None:
    """Let a stopped postmaster go on, if it still is the process that was stopped."""
    if isinstance(stopped, tuple):
        handle = open_handle(stopped[0], stopped[1], "postmaster", "drill")
        if handle is not None:
            handle.send(signal.SIGCONT, "drill ends")
            handle.close()


def _kill_checkpointer(stack: Stack) -> tuple[int, int]:
    return _signal(stack, signal.SIGKILL, "checkpointer")


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
