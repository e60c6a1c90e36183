"""Run a command as an instance's owner, without a shell, with a timeout that kills its process group.

PostgreSQL refuses to run as root, so every action runs as the data directory's owner: through
``runuser`` when pgmedic is root, directly when pgmedic already is that user, and otherwise not at
all (a clear error). Output goes to a temporary file, not a pipe: a server started in the background
may keep inherited descriptors open for its whole life, and a pipe would then never reach EOF.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import ActionError

log = logging.getLogger(__name__)
RUNUSER = "/usr/sbin/runuser"
_spawned: set[int] = set()  # children run() is waiting for: a subreaper's reaper must leave them alone
_spawned_lock = threading.Lock()
_hooks = threading.local()


@contextmanager
def on_spawn(callback: Callable[[int], None]) -> Iterator[None]:
    """Within this block (this thread only), call CALLBACK with each spawned process group id.

    The remediator records it, so that after a crash it can tell whether an action it started is
    still running (and wait for it) rather than guess.
    """
    previous = getattr(_hooks, "callback", None)
    _hooks.callback = callback
    try:
        yield
    finally:
        _hooks.callback = previous


def group_alive(pgid: int) -> bool:
    """Whether any process of process group PGID still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


def base_env() -> dict[str, str]:
    """The little of pgmedic's environment a command it runs is given (no secrets, no PG* of ours)."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


KILL_GRACE_SECONDS = 2.0
OUTPUT_LIMIT = 16_384


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int | None  # None when killed at the timeout
    output: str
    duration: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line: how it ended and the last line it printed."""
        how = "timed out" if self.timed_out else f"exit {self.returncode}"
        last = next((ln for ln in reversed(self.output.strip().splitlines()) if ln.strip()), "")
        return f"{how} after {self.duration:.1f}s" + (f": {last.strip()}" if last else "")


def as_user(argv: Sequence[str], user: str) -> list[str]:
    """Prefix ARGV so it runs as USER: runuser when root, unchanged when we are USER, else ActionError."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ActionError(f"no OS user named {user!r}") from None
    euid = os.geteuid()
    if euid == entry.pw_uid:
        return list(argv)
    if euid == 0:
        runuser = RUNUSER if os.path.exists(RUNUSER) else "runuser"
        return [runuser, "-u", user, "--", *argv]
    me = pwd.getpwuid(euid).pw_name
    raise ActionError(f"pgmedic runs as {me!r}; it must run as root or as the owner {user!r} to act")


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
) -> RunResult:
    """Run ARGV (optionally as USER) and wait at most TIMEOUT seconds; then kill its whole process group.

    STDIN, when given, is fed from a temporary file (no pipe that a stuck reader could block on).
    """
    full = as_user(argv, user) if user else list(argv)
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as inp:
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        try:
            proc = subprocess.Popen(
                full,
                stdin=inp if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd or "/",
                start_new_session=True,  # its own process group, so a timeout can kill all of it
                close_fds=True,
            )
        except OSError as exc:
            raise ActionError(f"cannot run {full[0]}: {exc.strerror}") from None
        with _spawned_lock:
            _spawned.add(proc.pid)
        callback = getattr(_hooks, "callback", None)
        if callback is not None:
            callback(proc.pid)  # its own session: the process group id is its pid
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code = None
        finally:
            with _spawned_lock:
                _spawned.discard(proc.pid)
        out.seek(0)
        text = out.read()[-OUTPUT_LIMIT:].decode(errors="replace")
    return RunResult(tuple(full), code, text, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, then SIGKILL what is left after a grace period.

    The group is the one run() created (start_new_session), and it is signalled only while its
    leader, our child, is not yet reaped: an unreaped leader keeps the group id from being reused, so
    the signal cannot reach anybody else's processes. The leader is reaped last.
    """
    leader = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(leader, select.POLLIN)
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            log.warning("signal %s to process group %d of %s (timed out)", sig.name, proc.pid, proc.args)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            if poller.poll(wait * 1000):  # the leader exited (a zombie until reaped below)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # what else of the group lingers
                break
    finally:
        os.close(leader)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def is_spawned(pid: int) -> bool:
    """Whether PID is a child that run() is still waiting for."""
    with _spawned_lock:
        return pid in _spawned
