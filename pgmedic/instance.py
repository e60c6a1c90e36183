"""The instance model: one place that knows how to tell whether a PostgreSQL instance is alive.

Everything else (exporter, remediator, CLI, actions) calls this module. The facts come from
postmaster.pid, /proc and a fresh SQL connection, in that order of cost:

* the data directory must exist and hold PG_VERSION, else NO_DATA_DIRECTORY;
* postmaster.pid must name a live process (not a zombie) that really is this data directory's
  postmaster: its start time matches the file's within a few seconds, or else its executable is
  postgres and its working directory is the data directory. A stale file, or one whose pid now
  belongs to another process, means NOT_RUNNING;
* the pid file's status line and a bounded SQL round trip tell ACCEPTING, REJECTING (starting,
  recovering, stopping, full) and NOT_RESPONDING (hung) apart.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import procfs
from .config import InstanceConfig
from .connection import call_with_deadline, connect, first_line, rejecting_reason
from .pidfile import PidFile, read_pid_file
from .runner import is_spawned
from .titles import classify_title

START_TIME_TOLERANCE = 5.0  # seconds between the pid file's start time and the process's


class State(enum.StrEnum):
    ACCEPTING = "accepting"
    REJECTING = "rejecting"
    NOT_RESPONDING = "not_responding"
    NOT_RUNNING = "not_running"
    NO_DATA_DIRECTORY = "no_data_directory"


# Exit codes of `pgmedic monitor`, shared with any supervisor that calls it as a monitor script.
EXIT_CODES = {
    State.ACCEPTING: 0,
    State.REJECTING: 1,
    State.NOT_RESPONDING: 1,
    State.NOT_RUNNING: 3,
    State.NO_DATA_DIRECTORY: 4,
}


@dataclass(frozen=True)
class Child:
    pid: int
    backend_type: str
    stat: procfs.ProcStat


@dataclass(frozen=True)
class Postmaster:
    """A verified, live postmaster of this instance's data directory."""

    pid: int
    pid_file: PidFile
    stat: procfs.ProcStat

    @property
    def start_time(self) -> float:
        return float(self.pid_file.start_time) if self.pid_file.start_time else self.stat.start_time

    def children(self) -> list[Child]:
        """Children that carry a PostgreSQL title, classified by backend type."""
        out = []
        for pid in procfs.children(self.pid):
            title = procfs.read_cmdline(pid)
            stat = procfs.read_stat(pid)
            if title is None or stat is None or stat.is_zombie:
                continue
            kind = classify_title(title)
            if kind is not None:
                out.append(Child(pid, kind, stat))
        return out


@dataclass(frozen=True)
class Probe:
    state: State
    detail: str
    postmaster: Postmaster | None = None
    pid_file: PidFile | None = None
    duration: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]


class Instance:
    """One configured instance: its files, its postmaster, its probe."""

    def __init__(self, config: InstanceConfig) -> None:
        self.config = config
        self.name = config.name
        self.data_directory = config.data_directory

    # ---- files ----------------------------------------------------------------------------------
    def data_directory_problem(self) -> str | None:
        """Why the data directory cannot hold a cluster, or None when it looks usable."""
        path = Path(self.data_directory)
        try:
            if not path.is_dir():
                return f"data directory {path} does not exist"
            if not (path / "PG_VERSION").is_file():
                return f"{path} is not a PostgreSQL data directory (no PG_VERSION)"
        except PermissionError:
            return f"data directory {path} is not readable by pgmedic"
        return None

    def major_version(self) -> int | None:
        """The major version from DATA/PG_VERSION (10, 15, …), readable even when the server is down."""
        try:
            return int((Path(self.data_directory) / "PG_VERSION").read_text().strip().split(".")[0])
        except (OSError, ValueError):
            return None

    def pid_file(self) -> PidFile | None:
        try:
            return read_pid_file(self.data_directory)
        except PermissionError:
            return None

    def bin_dir(self) -> str:
        """Where pg_ctl lives: bin_dir, else the Debian/RHEL path for PG_VERSION, else $PATH."""
        if self.config.bin_dir:
            return self.config.bin_dir
        version = self.major_version()
        if version is not None:
            for candidate in (f"/usr/lib/postgresql/{version}/bin", f"/usr/pgsql-{version}/bin"):
                if os.path.isfile(os.path.join(candidate, "pg_ctl")):
                    return candidate
        found = shutil.which("pg_ctl")
        if found:
            return os.path.dirname(found)
        raise FileNotFoundError("pg_ctl not found: set bin_dir for this instance")

    # ---- processes ------------------------------------------------------------------------------
    def postmaster(self, pid_file: PidFile | None = None) -> Postmaster | None:
        """The live postmaster named by postmaster.pid, or None (no file, stale file, reused pid, zombie)."""
        pid_file = pid_file or self.pid_file()
        if pid_file is None:
            return None
        stat = procfs.read_stat(pid_file.pid)
        if stat is None or stat.is_zombie:
            return None
        if not self._is_our_postmaster(pid_file, stat):
            return None
        return Postmaster(pid_file.pid, pid_file, stat)

    def _is_our_postmaster(self, pid_file: PidFile, stat: procfs.ProcStat) -> bool:
        if pid_file.start_time is not None and abs(stat.start_time - pid_file.start_time) <= START_TIME_TOLERANCE:
            return True
        exe = procfs.read_link(stat.pid, "exe") or ""
        cwd = procfs.read_link(stat.pid, "cwd")
        if os.path.basename(exe).split(" ")[0] not in ("postgres", "postmaster") or cwd is None:
            return False
        return os.path.realpath(cwd) == os.path.realpath(self.data_directory)

    def stale_pid_file(self) -> bool:
        """postmaster.pid exists but no live postmaster owns it."""
        pid_file = self.pid_file()
        return pid_file is not None and self.postmaster(pid_file) is None

    def wait_until_gone(self, pids: list[int], timeout: float) -> bool:
        """Wait, bounded, until none of PIDS is alive; zombies count as gone once reaped or not ours."""
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in pids if _alive_or_zombie(p)]
            if not alive:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # ---- probe ----------------------------------------------------------------------------------
    def probe(self, timeout: float | None = None) -> Probe:
        """Classify the instance now; never takes longer than TIMEOUT (default monitor_timeout)."""
        timeout = self.config.monitor_timeout if timeout is None else timeout
        start = time.monotonic()
        problem = self.data_directory_problem()
        if problem:
            return Probe(State.NO_DATA_DIRECTORY, problem, duration=time.monotonic() - start)
        pid_file = self.pid_file()
        postmaster = self.postmaster(pid_file)

        def done(state: State, detail: str) -> Probe:
            return Probe(state, detail, postmaster, pid_file, time.monotonic() - start)

        if postmaster is None:
            if pid_file is None:
                return done(State.NOT_RUNNING, "no postmaster.pid: the server is not running")
            return done(
                State.NOT_RUNNING, f"stale postmaster.pid: pid {pid_file.pid} is not this instance's postmaster"
            )
        if pid_file.status in ("starting", "stopping"):
            return done(State.REJECTING, f"postmaster {postmaster.pid} is {pid_file.status}")
        remaining = timeout - (time.monotonic() - start)
        try:
            call_with_deadline(lambda: self.select_one(pid_file, max(remaining, 0.1)), remaining, "pgmedic-probe")
        except TimeoutError:
            stopped = " (the postmaster is stopped, SIGSTOP)" if postmaster.stat.is_stopped else ""
            return done(State.NOT_RESPONDING, f"no answer to SQL within {timeout:.1f}s{stopped}")
        except Exception as exc:
            reason = rejecting_reason(exc)
            if reason:
                return done(State.REJECTING, f"postmaster {postmaster.pid} is up but {reason}")
            if self.postmaster() is None:  # it died while we were asking
                return done(State.NOT_RUNNING, "the postmaster exited during the probe")
            return done(State.REJECTING, f"postmaster {postmaster.pid} is up but SQL failed: {first_line(exc)}")
        return done(State.ACCEPTING, f"postmaster {postmaster.pid} is accepting connections")

    def select_one(self, pid_file: PidFile | None, timeout: float) -> None:
        """Connect afresh and run SELECT 1 (raises on any failure)."""
        with connect(self.config, pid_file, timeout) as conn:
            conn.execute("SELECT 1").fetchone()


def _alive_or_zombie(pid: int) -> bool:
    """True while PID exists at all, zombie included; reaps it first when it is our own adopted child."""
    stat = procfs.read_stat(pid)
    if stat is None:
        return False
    if stat.is_zombie and stat.ppid == os.getpid() and not is_spawned(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return procfs.read_stat(pid) is not None
    return True
