"""start, stop and monitor: what the VM agent's startpostgres/stoppostgres/monitorpostgres did, safely.

Actions go through the instance's manager (pgmedic.managers): ``systemctl start|stop UNIT`` for a
systemd unit, ``pg_ctlcluster VER NAME start|stop`` for a postgresql-common cluster, ``pg_ctl`` as the
data directory's owner otherwise; never at all for a server an HA agent owns. A configured
start_script/stop_script or start_command/stop_command replaces the built-in; it runs without a shell,
with the instance described in its environment, and is killed (its whole process group) at the
timeout. When a manager's stop does not finish within stop_timeout, the escalation (immediate
shutdown, then SIGKILL of the verified postmaster) stays pgmedic's own.

Safety rules kept here so every caller gets them: never start while a live postmaster holds the
data directory; never delete postmaster.pid (PostgreSQL replaces a stale one itself); wait, bounded,
for a killed postmaster's zombie and its orphaned children before starting again, since PostgreSQL
refuses to start while either still exists.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import time
from dataclasses import dataclass, field

from . import procfs, signals
from .errors import ActionError
from .failures import Failure, LogMark, classify, without_client_lines
from .instance import Identity, Instance, Probe, Verdict
from .managers import DEFAULT_SOCKET_DIRECTORY, DebianCluster, Manager, ManagerKind, ManagerProblem, StartPolicy
from .runner import RunResult, base_env, run
from .states import State
from .trust import program_problem

log = logging.getLogger(__name__)
REAP_WAIT_SECONDS = 10.0  # how long to wait for a dead postmaster's zombie and orphans
IMMEDIATE_STOP_MAX = 10.0
MANAGER_EXIT_GRACE = 2.0  # after a manager's stop returned: how long its postmaster may take to be gone
EXIT_REFUSED = 2  # an action refused for a configuration or deployment reason (as for a config error)
PG_CTLCLUSTER = "/usr/bin/pg_ctlcluster"
SYSTEMCTL = "/usr/bin/systemctl"
# Where systemd cannot run (a container, the test suite: pid 1 is not systemd), a stand-in systemctl may
# be named here; like every program pgmedic runs as root, it must pass the trust rule.
SYSTEMCTL_ENV = "PGMEDIC_SYSTEMCTL"


@dataclass
class ActionResult:
    action: str
    ok: bool
    message: str
    duration: float = 0.0
    steps: list[str] = field(default_factory=list)
    probe: Probe | None = None
    code: int | None = None  # a monitor's exit code (probe state or the script's own code)
    failure: Failure = Failure.NONE  # why a start failed, as a class decisions read
    manager: Manager | None = None  # who the action went through
    log_mark: LogMark | None = None  # where the server's logs ended before a start (for what came after)
    stopped_at: float | None = None  # epoch seconds when this action's own stop had stopped the server

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        return 0 if self.ok else 1


def script_env(instance: Instance) -> dict[str, str]:
    """What a user script is told about its instance."""
    cfg = instance.config
    pid_file = instance.pid_file()
    port = instance.port(pid_file)
    return {
        **base_env(),
        "PGDATA": instance.data_directory,
        "PGPORT": str(port),
        "PGUSER": cfg.role,
        "PGDATABASE": cfg.database,
        "PGMEDIC_INSTANCE": instance.name,
    }


def _run_script(instance: Instance, action: str, script: str | tuple[str, ...], timeout: float) -> ActionResult:
    """Run a user's script or command (argv) as ``script_user`` (the owner by default), only if nobody
    else can change its program."""
    user = instance.config.script_user
    argv = [script] if isinstance(script, str) else list(script)
    problem = program_problem(argv[0], user)
    if problem:
        return ActionResult(action, False, problem, code=EXIT_REFUSED, failure=Failure.CONFIG_ERROR)
    try:
        result = run(argv, timeout=timeout, env=script_env(instance), user=user)
    except ActionError as exc:
        return ActionResult(action, False, str(exc), code=EXIT_REFUSED, failure=Failure.CONFIG_ERROR)
    code = 1 if result.returncode is None else result.returncode
    return ActionResult(
        action, result.ok, f"{argv[0]}: {result.describe()}", result.duration, [result.describe()], code=code,
        failure=Failure.NONE if result.ok else Failure.TIMEOUT if result.timed_out else Failure.OTHER,
    )  # fmt: skip


def systemctl() -> str:
    """The systemctl to run: PGMEDIC_SYSTEMCTL's stand-in if set (trust-checked when run), else systemd's."""
    return os.environ.get(SYSTEMCTL_ENV) or SYSTEMCTL


def _manager_command(instance: Instance, manager: Manager, verb: str, timeout: float) -> RunResult:
    """``systemctl VERB UNIT`` (as root: systemd decides who the server runs as) or ``pg_ctlcluster VER NAME
    VERB`` (as the owner, which postgresql-common allows and which needs no more)."""
    if manager.kind is ManagerKind.SYSTEMD:
        assert manager.unit is not None
        program = systemctl()
        if os.geteuid() != 0:
            raise ActionError(f"{program} {verb} {manager.unit.name} needs root: run pgmedic as root")
        problem = program_problem(program, "root")
        if problem:
            raise ActionError(problem)
        return run([program, verb, manager.unit.name], timeout=timeout, env=base_env())
    assert manager.cluster is not None
    cluster = manager.cluster
    if verb == "start":
        ensure_run_directory(cluster)
    args = (
        [cluster.version, cluster.name, verb]
        if verb == "start"
        else ["-m", "fast", cluster.version, cluster.name, verb]
    )
    return run(
        [PG_CTLCLUSTER, *args], timeout=timeout, env=base_env(), user=cluster.owner or instance.config.instancename
    )


def ensure_run_directory(cluster: DebianCluster) -> None:
    """/var/run/postgresql as postgresql-common makes it (root's pg_ctlcluster recreates it; systemd's
    tmpfiles do at boot, and a host without systemd has neither): 2775, owned by the cluster's owner. Only
    that standard directory, only when missing, only as root."""
    path = DEFAULT_SOCKET_DIRECTORY
    if (
        os.geteuid() != 0
        or cluster.socket_directory.rstrip("/") not in (path, "/run/postgresql")
        or os.path.isdir(path)
    ):
        return
    try:
        entry = pwd.getpwnam(cluster.owner or "postgres")
        os.makedirs(path, mode=0o2775, exist_ok=True)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o2775)
    except (KeyError, OSError) as exc:
        log.warning("could not create %s for cluster %s: %s", path, cluster.label, exc)


def _manager_of(instance: Instance, action: str) -> Manager | ActionResult:
    """The instance's manager, or the refusal to act: the configured manager is not here, or an HA agent
    owns the server (pgmedic observes only)."""
    try:
        manager = instance.manager()
    except ManagerProblem as exc:
        return ActionResult(action, False, f"refused [{Failure.CONFIG_ERROR}]: {exc}", code=EXIT_REFUSED,
                            failure=Failure.CONFIG_ERROR)  # fmt: skip
    if manager.observe_only:
        return ActionResult(
            action, False, f"refused: observe only: managed by {manager.describe()}; use {manager.kind}'s own tools",
            code=EXIT_REFUSED, failure=Failure.OTHER, manager=manager,
        )  # fmt: skip
    return manager


def _pg_ctl(instance: Instance, args: list[str], timeout: float) -> RunResult:
    pg_ctl = os.path.join(instance.bin_dir(), "pg_ctl")
    return run(
        [pg_ctl, "-D", instance.data_directory, *args],
        timeout=timeout,
        env=base_env(),
        user=instance.config.instancename,
    )


def log_file(instance: Instance, manager: Manager | None = None) -> str:
    """Where the server's stderr goes before its logging collector takes over: the configured file, a
    postgresql-common cluster's own log, else DATA/pgmedic-postmaster.log (pg_ctl's -l)."""
    if instance.config.log_file:
        return instance.config.log_file
    if manager is not None and manager.cluster is not None:
        return manager.cluster.log_file
    return os.path.join(instance.data_directory, "pgmedic-postmaster.log")


# ---- start ---------------------------------------------------------------------------------------


def start(instance: Instance) -> ActionResult:
    """Start the instance unless a live postmaster already holds its data directory.

    A failed start says why in the server's own words (its FATAL lines, from the log written during
    the attempt) and carries the failure's class.
    """
    began = time.monotonic()
    cfg = instance.config
    problem = instance.data_directory_problem()
    if problem:
        return ActionResult("start", False, f"refused [{problem.failure}]: {problem.message}", failure=problem.failure)
    identity = instance.identify()
    if identity.postmaster is not None:
        pid = identity.postmaster.pid
        return ActionResult(  # someone started it meanwhile: a conflict for the engine, plain words for people
            "start", False, f"refused: postmaster {pid} is already running this data directory",
            failure=Failure.PID_FILE_CONFLICT,
        )  # fmt: skip
    if identity.verdict is Verdict.UNVERIFIABLE:
        return ActionResult("start", False, f"refused: {identity.reason}", code=EXIT_REFUSED, failure=Failure.OTHER)
    found = _manager_of(instance, "start")
    if isinstance(found, ActionResult):
        return found
    manager = found
    if manager.cluster is not None and manager.cluster.start is StartPolicy.DISABLED:
        return ActionResult(
            "start", False, f"refused [{Failure.CONFIG_ERROR}]: start.conf of cluster {manager.cluster.label} says "
            f"disabled ({manager.cluster.config_dir}/start.conf): it is never started", code=EXIT_REFUSED,
            failure=Failure.CONFIG_ERROR, manager=manager,
        )  # fmt: skip
    steps = wait_for_leftovers(instance)
    identity = instance.identify()
    if identity.blocks_start and identity.pid_file is not None:
        return ActionResult(
            "start", False, f"refused [{Failure.PID_FILE_CONFLICT}]: {start_conflict(identity)}",
            time.monotonic() - began, steps, failure=Failure.PID_FILE_CONFLICT, manager=manager,
        )  # fmt: skip
    mark = LogMark.take(instance.data_directory, log_file(instance, manager))
    started_at = time.time()
    command = cfg.start_command or cfg.start_script
    if command:
        result = _run_script(instance, "start", command, cfg.start_timeout)
        result.steps[:0] = steps
        result.duration, result.manager, result.log_mark = time.monotonic() - began, manager, mark
        if not result.ok and result.code != EXIT_REFUSED:
            _explain(instance, result, mark, started_at, "start command failed", result.message)
        return result
    what = "pg_ctl start" if manager.kind is ManagerKind.PG_CTL else f"{manager.kind} start"
    try:
        if manager.kind is ManagerKind.PG_CTL:
            args = ["start", "-w", "-t", str(max(1, int(cfg.start_timeout))), "-l", log_file(instance, manager)]
            if cfg.port:
                args += ["-o", f"-p {int(cfg.port)}"]  # pg_ctl hands -o to a shell: only a validated integer goes in
            ran = _pg_ctl(instance, args, cfg.start_timeout + 5)
        else:
            ran = _manager_command(instance, manager, "start", cfg.start_timeout + 5)
    except (ActionError, FileNotFoundError) as exc:
        return ActionResult(
            "start", False, str(exc), time.monotonic() - began, steps, failure=Failure.OTHER, manager=manager
        )
    steps.append(f"{what}: {ran.describe()}")
    result = ActionResult("start", ran.ok, "started" if ran.ok else "", time.monotonic() - began, steps,
                          manager=manager, log_mark=mark)  # fmt: skip
    if not ran.ok:
        fallback = f"{ran.describe()}; see {log_file(instance, manager)}"
        _explain(instance, result, mark, started_at, f"{what} failed", ran.output, ran.timed_out, fallback)
    return result


def _explain(
    instance: Instance, result: ActionResult, mark: LogMark, started_at: float, what: str, output: str,
    timed_out: bool = False, fallback: str = "",
) -> None:  # fmt: skip
    """Fill RESULT's failure class and message (WHAT failed, and why) from the server's own lines written
    since MARK and the command's OUTPUT (never a client connection's), else FALLBACK, else the message it
    has. A clean stop by someone else during the start (after STARTED_AT) is its own class: not a failure
    of the server, and the administrator's decision."""
    stopped = mark.shutdown_requested()
    if stopped is None and instance.clean_stop(after=started_at) is not None:
        stopped = "the server was shut down cleanly (pg_control)"
    reasons = mark.reasons(output)
    if stopped is not None:
        result.failure, reasons = (
            Failure.STOPPED_BY_ADMINISTRATOR,
            [f"stopped by an administrator during the start: {stopped}"],
        )
    else:
        result.failure = Failure.TIMEOUT if timed_out else classify([*reasons, without_client_lines(output)])
    said = "; ".join(reasons) or fallback or result.message
    result.message = f"{what} [{result.failure}]: {said}"
    result.steps.append(f"failure: {result.failure}" + (f": {'; '.join(reasons)}" if reasons else ""))


def start_conflict(identity: Identity) -> str:
    """One line: why PostgreSQL will refuse to start while postmaster.pid names a live process."""
    assert identity.pid_file is not None
    pid = identity.pid_file.pid
    cwd = procfs.read_link(pid, "cwd")
    exe = procfs.read_link(pid, "exe")
    what = f"a live {os.path.basename(exe.split(' ')[0]) if exe else 'process'} of the owner"
    where = f" in {cwd.removesuffix(' (deleted)')}" if cwd else ""
    return (
        f"postmaster.pid names pid {pid}, {what}{where} ({identity.reason}); PostgreSQL refuses to start while "
        "that process runs, and pgmedic never deletes postmaster.pid: stop that process or remove the file by hand"
    )


def wait_for_leftovers(instance: Instance) -> list[str]:
    """Before a start: wait, bounded, for a dead postmaster's zombie and orphaned children to go.

    A killed postmaster stays a zombie until its parent (init, or pgmedic as child subreaper) reaps
    it, and ``kill -0`` succeeds on a zombie, so PostgreSQL reads the pid file as a live server. Its
    orphaned children still hold the old shared memory, which also blocks a new postmaster.
    """
    steps = []
    pids = []
    pid_file = instance.pid_file()
    if pid_file is not None:
        stat = procfs.read_stat(pid_file.pid)
        if stat is not None and stat.is_zombie:
            pids.append(pid_file.pid)
    pids += orphans(instance)
    if pids:
        began = time.monotonic()
        gone = instance.wait_until_gone(pids, REAP_WAIT_SECONDS)
        steps.append(
            f"waited {time.monotonic() - began:.1f}s for {len(pids)} leftover process(es) of the old server"
            + ("" if gone else " (some remain; starting anyway)")
        )
    return steps


def orphans(instance: Instance) -> list[int]:
    """Live postgres processes whose working directory is this data directory, but no postmaster."""
    if instance.postmaster() is not None:
        return []
    out = []
    for pid in procfs.pids_in_directory(instance.data_directory):
        exe = os.path.basename(procfs.read_link(pid, "exe") or "")
        if exe.startswith(("postgres", "postmaster")):
            out.append(pid)
    return out


# ---- stop ----------------------------------------------------------------------------------------

# The signals pg_ctl sends for each shutdown mode; pgmedic sends them itself, through a pidfd on the
# verified postmaster, because pg_ctl signals whatever pid postmaster.pid names.
SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def stop(instance: Instance, reason: str = "pgmedic stop") -> ActionResult:
    """Stop: the manager's stop (or a fast shutdown), then immediate, then SIGKILL of the verified
    postmaster and its children.

    Every signal of pgmedic's own goes through a pidfd on the postmaster verified by the identity rule,
    so a pid file that names another cluster's postmaster, or a pid reused meanwhile, is never hit.
    """
    began = time.monotonic()
    cfg = instance.config
    command = cfg.stop_command or cfg.stop_script
    if command:
        return _run_script(instance, "stop", command, cfg.stop_timeout)
    identity = instance.identify()
    postmaster = identity.postmaster
    if postmaster is None:
        if identity.verdict is Verdict.UNVERIFIABLE:
            return ActionResult(
                "stop", False, f"refused: {identity.reason}", time.monotonic() - began, code=EXIT_REFUSED
            )
        message = "not running" + (f" (stale postmaster.pid: {identity.reason})" if identity.pid_file else "")
        return ActionResult("stop", True, message, time.monotonic() - began)
    found = _manager_of(instance, "stop")
    if isinstance(found, ActionResult):
        return found
    manager = found
    handles = postmaster.handles()
    if handles is None:
        return ActionResult("stop", True, "not running (the postmaster exited meanwhile)", time.monotonic() - began)
    own, children = handles
    steps: list[str] = []

    def stopped(how: str) -> ActionResult:
        instance.wait_until_gone([postmaster.pid], REAP_WAIT_SECONDS)
        steps.append(f"postmaster {postmaster.pid} exited after {how}")
        return ActionResult("stop", True, f"stopped ({how})", time.monotonic() - began, steps, manager=manager,
                            stopped_at=time.time())  # fmt: skip

    try:
        immediate = max(2.0, min(cfg.stop_timeout, IMMEDIATE_STOP_MAX))
        modes = [("fast", cfg.stop_timeout), ("immediate", immediate)]
        if manager.kind in (ManagerKind.SYSTEMD, ManagerKind.PG_CTLCLUSTER):
            asked = time.monotonic()
            try:
                ran = _manager_command(instance, manager, "stop", cfg.stop_timeout)
                steps.append(f"{manager.kind} stop: {ran.describe()}")
            except ActionError as exc:
                steps.append(f"{manager.kind} stop: {exc}")
            if own.wait_exit(MANAGER_EXIT_GRACE):
                return stopped(f"{manager.kind} stop")
            steps.append(f"postmaster {postmaster.pid} still running after {manager.kind} stop: pgmedic escalates")
            # What is left of stop_timeout for a fast shutdown of its own (the manager's may not have reached
            # this server: one started outside the unit); none left means straight to immediate.
            left = cfg.stop_timeout - (time.monotonic() - asked)
            modes = [("fast", left), *modes[1:]] if left >= 1.0 else modes[1:]
        for mode, timeout in modes:
            steps.append(own.send(SHUTDOWN_SIGNALS[mode], f"{mode} shutdown: {reason}"))
            if own.wait_exit(timeout):
                return stopped(mode)
            steps.append(f"postmaster {postmaster.pid} still running {timeout:.3g}s after {mode} shutdown")
        steps.append(_kill(instance, own, children, reason))
    finally:
        for handle in (own, *children):
            handle.close()
    if instance.postmaster() is None:
        return ActionResult("stop", True, "stopped (SIGKILL)", time.monotonic() - began, steps, manager=manager,
                            stopped_at=time.time())  # fmt: skip
    return ActionResult("stop", False, "postmaster survived SIGKILL", time.monotonic() - began, steps, manager=manager)


def _kill(instance: Instance, own: signals.ProcessHandle, children: list[signals.ProcessHandle], reason: str) -> str:
    # Children first: once the postmaster is gone they are reparented, but their pidfds still name them.
    for handle in (*children, own):
        handle.send(signal.SIGKILL, f"last resort: {reason}")
    began = time.monotonic()
    exited = signals.wait_all_exited([own, *children], REAP_WAIT_SECONDS)
    gone = exited and instance.wait_until_gone([h.pid for h in (own, *children)], REAP_WAIT_SECONDS)
    took = time.monotonic() - began
    left = "" if gone else " (some still exist)"
    return f"SIGKILL of postmaster {own.pid} and {len(children)} children; gone after {took:.1f}s{left}"


def restart(instance: Instance, reason: str = "pgmedic restart") -> ActionResult:
    """Stop (with escalation) then start; one result with both sets of steps."""
    began = time.monotonic()
    stopped = stop(instance, reason)
    if not stopped.ok:
        return ActionResult(
            "restart", False, f"stop failed: {stopped.message}", time.monotonic() - began, stopped.steps,
            failure=Failure.OTHER,
        )  # fmt: skip
    started = start(instance)
    return ActionResult(
        "restart",
        started.ok,
        started.message if started.ok else f"start failed: {started.message}",
        time.monotonic() - began,
        [*stopped.steps, *started.steps],
        failure=started.failure,
        manager=started.manager or stopped.manager,
        log_mark=started.log_mark,
        stopped_at=stopped.stopped_at,
    )


# ---- monitor -------------------------------------------------------------------------------------


def monitor(instance: Instance) -> ActionResult:
    """The probe (or the user's monitor script, whose exit code is taken as it is)."""
    cfg = instance.config
    if cfg.monitor_script:
        return _run_script(instance, "monitor", cfg.monitor_script, cfg.monitor_timeout)
    probe = instance.probe()
    return ActionResult(
        "monitor",
        probe.state is State.ACCEPTING,
        f"{probe.state}: {probe.detail}",
        probe.duration,
        probe=probe,
        code=probe.exit_code,
    )
