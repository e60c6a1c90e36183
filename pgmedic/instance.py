"""The instance model: one place that knows how to tell whether a PostgreSQL instance is alive.

Everything else (exporter, remediator, CLI, actions) calls this module. The facts come from
postmaster.pid, /proc and a fresh SQL connection, in that order of cost:

* the data directory must exist and hold PG_VERSION, else NO_DATA_DIRECTORY;
* postmaster.pid must name this data directory's postmaster by the one identity rule (``identify``):
  a live process, not a zombie, running as the data directory's owner, whose executable is
  postgres/postmaster, whose working directory is this data directory, and the file's own
  data-directory line names this data directory too. Anything else is a stale file (NOT_RUNNING),
  even when the pid belongs to a live postmaster of another cluster (a data directory copied with
  its pid file); where /proc cannot be read to decide, the probe says so (UNVERIFIED) and nobody acts;
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

from psycopg.errors import ConnectionTimeout

from . import procfs, signals
from .config import InstanceConfig
from .connection import call_with_deadline, connect, first_line, login_refused, refusal_text, rejecting_reason
from .failures import Failure
from .managers import Manager, find_manager
from .pgcontrol import ControlState, read_control_state
from .pidfile import PidFile, read_pid_file
from .runner import is_spawned
from .states import EXIT_CODES, Reason, State
from .titles import classify_title

START_TIME_TOLERANCE = 5.0  # seconds between the pid file's start time and the process's
POSTGRES_EXECUTABLES = ("postgres", "postmaster")
CLIENT_SLOTS_SQL = (
    "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
    " - coalesce(current_setting('reserved_connections', true)::int, 0), pg_backend_pid()"
)


class Verdict(enum.StrEnum):
    """What the identity rule says of the pid postmaster.pid names."""

    VERIFIED = "verified"  # this data directory's live postmaster
    NO_PID_FILE = "no_pid_file"
    STALE = "stale"  # the file names no postmaster of this data directory
    UNVERIFIABLE = "unverifiable"  # /proc of that pid is not readable by pgmedic


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

    def handles(self) -> tuple[signals.ProcessHandle, list[signals.ProcessHandle]] | None:
        """Pidfds on this postmaster and its children, each re-checked once its pidfd is open.

        None when the postmaster is no longer the process that was verified (it exited, its pid was
        reused). Children that exit meanwhile are simply left out.
        """
        own = signals.open_handle(self.pid, self.stat.start_ticks, "postmaster", self.data_directory)
        if own is None:
            return None
        kids = []
        for child in self.children():
            handle = signals.open_handle(
                child.pid, child.stat.start_ticks, child.backend_type, self.data_directory, ppid=self.pid
            )
            if handle is not None:
                kids.append(handle)
        return own, kids

    @property
    def data_directory(self) -> str:
        """The data directory as the verified pid file names it (the same directory as the config's)."""
        return self.pid_file.data_directory or ""

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
class Identity:
    """The identity rule's answer for one reading of postmaster.pid."""

    verdict: Verdict
    reason: str
    pid_file: PidFile | None = None
    postmaster: Postmaster | None = None
    # The file names a live process of the owner: PostgreSQL takes it for a running server and refuses
    # to start (its lock-file check is kill(pid, 0)); pgmedic never deletes the file to get past that.
    blocks_start: bool = False


@dataclass(frozen=True)
class Probe:
    state: State
    reason: Reason
    detail: str
    postmaster: Postmaster | None = None
    pid_file: PidFile | None = None
    duration: float = 0.0
    failure: Failure = Failure.NONE  # with NO_DATA_DIRECTORY: missing, or not readable

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]


@dataclass(frozen=True)
class DataDirectoryProblem:
    failure: Failure
    message: str


class Instance:
    """One configured instance: its files, its postmaster, its probe."""

    def __init__(self, config: InstanceConfig) -> None:
        self.config = config
        self.name = config.name
        self.data_directory = config.data_directory
        # The last verified (pid, start ticks, pid file's data directory) and its reason: a process
        # cannot change its executable or (a postmaster) its working directory, so the exporter
        # re-reads /proc links only when the postmaster changes.
        self._verified: tuple[tuple[int, int, str | None], str] | None = None
        # The last finding of the manager: (postmaster (pid, start ticks) or None, monotonic time, manager).
        self._manager: tuple[tuple[int, int] | None, float, Manager] | None = None

    # ---- files ----------------------------------------------------------------------------------
    def data_directory_problem(self) -> DataDirectoryProblem | None:
        """Why the data directory cannot hold a cluster, or None when it looks usable."""
        path = Path(self.data_directory)
        try:
            if not path.is_dir():
                return DataDirectoryProblem(Failure.DATA_DIRECTORY_MISSING, f"data directory {path} does not exist")
            if not (path / "PG_VERSION").is_file():
                return DataDirectoryProblem(
                    Failure.DATA_DIRECTORY_MISSING, f"{path} is not a PostgreSQL data directory (no PG_VERSION)"
                )
        except PermissionError:
            return DataDirectoryProblem(Failure.PERMISSION_DENIED, f"data directory {path} is not readable by pgmedic")
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

    def clean_stop(self, after: float = 0.0) -> ControlState | None:
        """The server's own record of a clean shutdown (smart or fast) since this host booted and after
        AFTER (epoch seconds), while no postmaster.pid is left: an administrator's decision, not a failure.

        A shutdown before the boot is the host's (the VM was shut down or moved), and the server is to be
        started again; a crash, kill -9 or an immediate shutdown never reads as clean (pgmedic.pgcontrol).
        """
        if self.pid_file() is not None:
            return None
        state = read_control_state(self.data_directory)
        if state is None or not state.shut_down_cleanly or state.time <= max(procfs.boot_time(), after):
            return None
        return state

    def port(self, pid_file: PidFile | None) -> int:
        """The server's port: the running postmaster's, else the configured one, else its postgresql-common
        cluster's (as last found), else 5432."""
        cached = self._manager
        cluster = cached[2].cluster if cached is not None else None
        if (pid_file is None or not pid_file.port) and not self.config.port and cluster is not None:
            return cluster.port
        return self.config.port_for(pid_file)

    # ---- manager --------------------------------------------------------------------------------
    def manager(self, max_age: float = 0.0, postmaster: Postmaster | None = None, verified: bool = False) -> Manager:
        """Who manages this instance (pgmedic.managers): found now, or remembered for MAX_AGE seconds while
        the postmaster is the same one. POSTMASTER is the verified postmaster when VERIFIED says the caller
        already applied the identity rule. Raises ManagerProblem when the configured manager is not here."""
        if not verified:
            postmaster = self.postmaster()
        key = (postmaster.pid, postmaster.stat.start_ticks) if postmaster is not None else None
        now = time.monotonic()
        cached = self._manager
        if cached is not None and cached[0] == key and now - cached[1] < max_age:
            return cached[2]
        found = find_manager(
            self.config, postmaster.pid if postmaster is not None else None, remembered=cached[2] if cached else None
        )
        self._manager = (key, now, found)
        return found

    # ---- processes ------------------------------------------------------------------------------
    def postmaster(self, pid_file: PidFile | None = None) -> Postmaster | None:
        """The verified live postmaster named by postmaster.pid, or None (see ``identify``)."""
        return self.identify(pid_file).postmaster

    def identify(self, pid_file: PidFile | None = None) -> Identity:
        """Apply the one identity rule to the pid postmaster.pid names (read now unless PID_FILE is given).

        Verified only if the process is alive and not a zombie, runs as the data directory's owner,
        its executable is postgres/postmaster, its working directory is this data directory, and the
        file's data-directory line names this data directory. The start time in the file is compared
        too, but a mismatch alone is not disqualifying: a clock stepped after the server started (NTP
        at boot) makes it differ for a server that is certainly ours, and the three facts above
        already exclude every other process.
        """
        pid_file = pid_file or self.pid_file()
        if pid_file is None:
            return Identity(Verdict.NO_PID_FILE, "no postmaster.pid")
        pid = pid_file.pid
        stat = procfs.read_stat(pid)
        if stat is None:
            return Identity(Verdict.STALE, f"pid {pid} is not running", pid_file)
        cached = self._verified
        if cached is not None and cached[0] == (pid, stat.start_ticks, pid_file.data_directory) and not stat.is_zombie:
            return Identity(Verdict.VERIFIED, cached[1], pid_file, Postmaster(pid, pid_file, stat))
        proc_uid, data_uid = procfs.owner_uid(pid), _owner_uid(self.data_directory)
        same_owner = proc_uid is not None and proc_uid == data_uid

        def stale(reason: str) -> Identity:
            return Identity(Verdict.STALE, reason, pid_file, blocks_start=same_owner)

        if stat.is_zombie:
            return stale(f"pid {pid} has exited and is not yet reaped (a zombie)")
        if proc_uid is None:
            return Identity(Verdict.STALE, f"pid {pid} is not running", pid_file)
        if not same_owner:
            return stale(f"pid {pid} runs as uid {proc_uid}, not as the data directory's owner (uid {data_uid})")
        target = os.path.realpath(self.data_directory)
        named = pid_file.data_directory
        exe, cwd = procfs.read_link(pid, "exe"), procfs.read_link(pid, "cwd")
        if exe is None or cwd is None:
            if procfs.read_stat(pid) is None:
                return Identity(Verdict.STALE, f"pid {pid} is not running", pid_file)
            return Identity(
                Verdict.UNVERIFIABLE,
                f"cannot read /proc/{pid}/cwd as uid {os.geteuid()}: run pgmedic as root or as the owner "
                f"{self.config.instancename} to verify the postmaster",
                pid_file,
            )
        cwd = cwd.removesuffix(" (deleted)")
        if os.path.basename(exe).split(" ")[0] not in POSTGRES_EXECUTABLES:
            return stale(f"pid {pid} is {exe.split(' ')[0]}, not a postgres server")
        if os.path.realpath(cwd) != target:
            return stale(f"pid {pid} is the postmaster of another data directory, {cwd}")
        if named is None or os.path.realpath(named) != target:
            return stale(f"postmaster.pid names data directory {named}, not {self.data_directory}")
        reason = f"postmaster {pid} verified"
        if pid_file.start_time is not None and abs(stat.start_time - pid_file.start_time) > START_TIME_TOLERANCE:
            reason += f" (its start time differs from postmaster.pid's by {stat.start_time - pid_file.start_time:.0f}s)"
        self._verified = ((pid, stat.start_ticks, named), reason)
        return Identity(Verdict.VERIFIED, reason, pid_file, Postmaster(pid, pid_file, stat))

    def stale_pid_file(self) -> bool:
        """postmaster.pid exists but no live postmaster of this data directory owns it."""
        return self.identify().verdict is Verdict.STALE

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
            return Probe(
                State.NO_DATA_DIRECTORY, Reason.NO_DATA_DIRECTORY, problem.message, duration=time.monotonic() - start,
                failure=problem.failure,
            )  # fmt: skip
        identity = self.identify()
        pid_file, postmaster = identity.pid_file, identity.postmaster

        def done(state: State, reason: Reason, detail: str) -> Probe:
            return Probe(state, reason, detail, postmaster, pid_file, time.monotonic() - start)

        if identity.verdict is Verdict.NO_PID_FILE:
            return done(State.NOT_RUNNING, Reason.NO_PID_FILE, "no postmaster.pid: the server is not running")
        if identity.verdict is Verdict.UNVERIFIABLE:
            return done(State.UNVERIFIED, Reason.UNVERIFIABLE, identity.reason)
        if postmaster is None or pid_file is None:
            assert pid_file is not None
            return done(
                State.NOT_RUNNING,
                Reason.STALE_PID_FILE,
                f"stale postmaster.pid: pid {pid_file.pid} is not this instance's postmaster ({identity.reason})",
            )
        if pid_file.status in ("starting", "stopping"):
            reason = Reason.STARTING if pid_file.status == "starting" else Reason.STOPPING
            return done(State.REJECTING, reason, f"postmaster {postmaster.pid} is {pid_file.status}")
        remaining = timeout - (time.monotonic() - start)
        try:
            usable, own = call_with_deadline(
                lambda: self.client_slots(pid_file, max(remaining, 0.1)), remaining, "pgmedic-probe"
            )
        except (TimeoutError, ConnectionTimeout):  # ours or libpq's connect_timeout, whichever fires first
            stopped = " (the postmaster is stopped, SIGSTOP)" if postmaster.stat.is_stopped else ""
            return done(State.NOT_RESPONDING, Reason.HUNG, f"no answer to SQL within {timeout:.1f}s{stopped}")
        except Exception as exc:
            refusal = rejecting_reason(exc)
            if refusal is not None:
                return done(State.REJECTING, refusal, f"postmaster {postmaster.pid} is up but {refusal_text(refusal)}")
            if self.postmaster() is None:  # it died while we were asking
                return done(State.NOT_RUNNING, Reason.EXITED, "the postmaster exited during the probe")
            if login_refused(exc):
                return done(
                    State.ACCEPTING, Reason.LOGIN_REFUSED,
                    f"postmaster {postmaster.pid} accepts connections but refused pgmedic's login as "
                    f"{self.config.role}: {first_line(exc)} (allow it in pg_hba.conf, or run pgmedic as {self.config.instancename})",
                )  # fmt: skip
            detail = f"postmaster {postmaster.pid} is up but SQL failed: {first_line(exc)}"
            return done(State.REJECTING, Reason.SQL_ERROR, detail)
        # pgmedic's own connection may use the superuser reserve: ordinary clients can be refused while
        # it still gets in. Count them from /proc against the slots they may use.
        clients = sum(1 for c in postmaster.children() if c.backend_type == "client_backend" and c.pid != own)
        if clients >= usable:
            return done(State.REJECTING, Reason.FULL, f"full: {clients} of {usable} client slots taken")
        return done(State.ACCEPTING, Reason.ACCEPTING, f"postmaster {postmaster.pid} is accepting connections")

    def client_slots(self, pid_file: PidFile | None, timeout: float) -> tuple[int, int]:
        """Connect afresh and ask how many connections ordinary clients may use (max_connections minus
        the superuser reserve and, 16+, reserved_connections) and our own backend's pid. Raises on any
        failure: a connection that works is the probe's first finding."""
        with connect(self.config, pid_file, timeout) as conn:
            row = conn.execute(CLIENT_SLOTS_SQL).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


def _owner_uid(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


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
