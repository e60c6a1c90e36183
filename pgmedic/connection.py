"""Fresh, bounded SQL connections to an instance.

Every probe opens a new connection: a cached one can stay open while every new client is refused,
which is exactly the failure a health check exists to see. libpq cannot time out a connection in
less than 2 s, so callers that need a hard deadline run the attempt through ``call_with_deadline``,
which abandons (never blocks on) an attempt stuck on a frozen postmaster; libpq's own
``connect_timeout`` then closes it shortly after.
"""

from __future__ import annotations

import math
import re
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import pq

if TYPE_CHECKING:
    from .config import InstanceConfig
    from .pidfile import PidFile
from .states import Reason

T = TypeVar("T")
APPLICATION_NAME = "pgmedic"
_QUOTED = str.maketrans({"\\": "\\\\", "'": "\\'"})  # within a libpq connection string's quotes
DEFAULT_SOCKET_DIR = "/var/run/postgresql"

# Server answers that mean "alive, but not letting clients in right now".
# How the server says it refuses connections for now: SQLSTATE first, then libpq's own wording (a
# refusal during startup may come before any SQLSTATE). Classified once, here, into an enum.
_FULL_SQLSTATE = "53300"  # too_many_connections
_REFUSAL_TEXTS = (
    ("starting up", Reason.STARTING),
    ("shutting down", Reason.STOPPING),
    ("in recovery mode", Reason.RECOVERING),
    ("not yet accepting connections", Reason.RECOVERING),
    ("too many clients", Reason.FULL),
    ("connection slots are reserved", Reason.FULL),
)
_REFUSAL_WORDS = {
    Reason.STARTING: "starting up",
    Reason.STOPPING: "shutting down",
    Reason.RECOVERING: "recovering, not yet accepting connections",
    Reason.FULL: "connection slots exhausted",
}


def connect_kwargs(cfg: InstanceConfig, pid_file: PidFile | None, timeout: float) -> dict[str, Any]:
    """libpq parameters for a probe: where the running postmaster says it listens, else the config."""
    host = cfg.host
    if host is None and pid_file is not None:
        host = pid_file.socket_directory or (
            pid_file.listen_address if pid_file.listen_address not in (None, "*", "0.0.0.0", "::") else None
        )
    port = cfg.port_for(pid_file)
    ms = max(1, int(timeout * 1000))
    return {
        "host": host or DEFAULT_SOCKET_DIR,
        "port": port,
        "dbname": cfg.database,
        "user": cfg.role,
        "application_name": APPLICATION_NAME,
        "connect_timeout": max(2, math.ceil(timeout)),
        "options": f"-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={ms * 2}",
        "autocommit": True,
    }


def connect(cfg: InstanceConfig, pid_file: PidFile | None, timeout: float) -> psycopg.Connection:
    """Open a new autocommit connection with connect, statement and lock timeouts set."""
    return psycopg.connect(**connect_kwargs(cfg, pid_file, timeout))


def open_pgconn(
    cfg: InstanceConfig, pid_file: PidFile | None, deadline: float, meanwhile: Callable[[], None] | None = None
) -> pq.abc.PGconn:
    """A raw libpq connection, opened without blocking and abandoned at DEADLINE (time.monotonic()).

    For the exporter's hot path: no psycopg Connection around it, and no thread needed to bound the
    attempt. MEANWHILE runs once, at the first wait for the server (the startup packet sent). Raises
    psycopg.OperationalError with libpq's message, or TimeoutError.
    """
    params = connect_kwargs(cfg, pid_file, max(0.001, deadline - time.monotonic()))
    params.pop("autocommit")
    pgconn = pq.PGconn.connect_start(conninfo(params).encode())
    try:
        while True:
            status = pgconn.connect_poll()
            if status == pq.PollingStatus.OK:
                return pgconn
            if status == pq.PollingStatus.FAILED:
                raise psycopg.OperationalError(pgconn.get_error_message())
            if meanwhile is not None and status == pq.PollingStatus.READING:
                meanwhile()
                meanwhile = None
            wait_socket(pgconn.socket, deadline, write=status == pq.PollingStatus.WRITING)
    except BaseException:
        pgconn.finish()
        raise


def conninfo(params: dict[str, Any]) -> str:
    """A libpq connection string of PARAMS (None left out), each value quoted as libpq reads it.

    psycopg's make_conninfo parses and validates its result with libpq first: the exporter builds one
    each scrape, from values it made itself (tests/test_exporter.py checks both agree).
    """
    return " ".join(f"{key}='{str(value).translate(_QUOTED)}'" for key, value in params.items() if value is not None)


def wait_socket(fd: int, deadline: float, write: bool = False) -> None:
    """Block (without the GIL) until FD is readable (or writable), or raise TimeoutError at DEADLINE.

    poll(), not select(): the exporter keeps thousands of /proc descriptors open, far beyond select()'s 1024.
    """
    remaining = deadline - time.monotonic()
    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    if remaining <= 0 or not poller.poll(remaining * 1000):
        raise TimeoutError("no answer before the scrape timeout")


def call_with_deadline(fn: Callable[[], T], timeout: float, name: str = "pgmedic-deadline") -> T:
    """Run FN in a daemon thread and return its result, or raise TimeoutError after TIMEOUT seconds."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:.1f}s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def rejecting_reason(exc: BaseException) -> Reason | None:
    """If EXC is the server refusing connections for now, why: starting, stopping, recovering or full."""
    if getattr(exc, "sqlstate", None) == _FULL_SQLSTATE:
        return Reason.FULL
    text = str(exc)
    found = next((reason for needle, reason in _REFUSAL_TEXTS if needle in text), None)
    if found is None and getattr(exc, "sqlstate", None) == "57P03":  # cannot_connect_now
        return Reason.RECOVERING
    return found


# The server answered, ran authentication and said no: it accepts connections, pgmedic's role may not log
# in (pg_isready's "accepting" too). Debian's clusters allow their owner in only by peer authentication, so
# pgmedic as root sees this while the server is perfectly healthy.
_LOGIN_REFUSED = re.compile(
    r"authentication failed|no pg_hba\.conf entry|pg_hba\.conf rejects|role \"[^\"]*\" does not exist"
    r"|database \"[^\"]*\" does not exist|is not permitted to log in|no password supplied"
)


def login_refused(exc: BaseException) -> bool:
    """Whether EXC is the server refusing pgmedic's login (authentication, role, database), not connections."""
    return getattr(exc, "sqlstate", None) in ("28000", "28P01", "3D000") or bool(_LOGIN_REFUSED.search(str(exc)))


def refusal_text(reason: Reason) -> str:
    """The words for a refusal in a probe's detail."""
    return _REFUSAL_WORDS.get(reason, str(reason))


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (libpq's are multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
