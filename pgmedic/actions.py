"""start, stop and monitor: what the VM agent's startpostgres/stoppostgres/monitorpostgres did, safely.

Built-in actions drive ``pg_ctl`` as the data directory's owner. A configured start_script,
stop_script or monitor_script replaces the built-in; it runs without a shell, with the instance
described in its environment, and is killed (its whole process group) at the timeout.

Safety rules kept here so every caller gets them: never start while a live postmaster holds the
data directory; never delete postmaster.pid (PostgreSQL replaces a stale one itself); wait, bounded,
for a killed postmaster's zombie and its orphaned children before starting again, since PostgreSQL
refuses to start while either still exists.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from . import procfs, signals
from .errors import ActionError
from .failures import Failure, LogMark, classify
from .instance import Identity, Instance, Probe, Verdict
from .runner import RunResult, base_env, run
from .states import State
from .trust import program_problem

REAP_WAIT_SECONDS = 10.0  # how long to wait for a dead postmaster's zombie and orphans
IMMEDIATE_STOP_MAX = 10.0
EXIT_REFUSED = 2  # an action refused for a configuration or deployment reason (as for a config error)


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

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        return 0 if self.ok else 1


def script_env(instance: Instance) -> dict[str, str]:
    """What a user script is told about its instance."""
    cfg = instance.config
    pid_file = instance.pid_file()
    port = cfg.port_for(pid_file)
    return {
        **base_env(),
        "PGDATA": instance.data_directory,
        "PGPORT": str(port),
        "PGUSER": cfg.role,
        "PGDATABASE": cfg.database,
        "PGMEDIC_INSTANCE": instance.name,
    }


def _run_script(instance: Instance, action: str, script: str, timeout: float) -> ActionResult:
    """Run a user's script as ``script_user`` (the owner by default), only if nobody else can change it."""
    user = instance.config.script_user
    problem = program_problem(script, user)
    if problem:
        return ActionResult(action, False, problem, code=EXIT_REFUSED, failure=Failure.CONFIG_ERROR)
    try:
        result = run([script], timeout=timeout, env=script_env(instance), user=user)
    except ActionError as exc:
        return ActionResult(action, False, str(exc), code=EXIT_REFUSED, failure=Failure.CONFIG_ERROR)
    code = 1 if result.returncode is None else result.returncode
    return ActionResult(
        action, result.ok, f"{script}: {result.describe()}", result.duration, [result.describe()], code=code,
        failure=Failure.NONE if result.ok else Failure.TIMEOUT if result.timed_out else Failure.OTHER,
    )  # fmt: skip


def _pg_ctl(instance: Instance, args: list[str], timeout: float) -> RunResult:
    pg_ctl = os.path.join(instance.bin_dir(), "pg_ctl")
    return run(
        [pg_ctl, "-D", instance.data_directory, *args],
        timeout=timeout,
        env=base_env(),
        user=instance.config.instancename,
    )


def log_file(instance: Instance) -> str:
    """Where the server's stderr goes before its logging collector takes over."""
    return instance.config.log_file or os.path.join(instance.data_directory, "pgmedic-postmaster.log")


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
    steps = wait_for_leftovers(instance)
    identity = instance.identify()
    if identity.blocks_start and identity.pid_file is not None:
        return ActionResult(
            "start", False, f"refused [{Failure.PID_FILE_CONFLICT}]: {start_conflict(identity)}",
            time.monotonic() - began, steps, failure=Failure.PID_FILE_CONFLICT,
        )  # fmt: skip
    mark = LogMark.take(instance.data_directory, log_file(instance))
    if cfg.start_script:
        result = _run_script(instance, "start", cfg.start_script, cfg.start_timeout)
        result.steps[:0] = steps
        result.duration = time.monotonic() - began
        if not result.ok and result.code != EXIT_REFUSED:
            _explain(result, mark, "start script failed", result.message)
        return result
    args = ["start", "-w", "-t", str(max(1, int(cfg.start_timeout))), "-l", log_file(instance)]
    if cfg.port:
        args += ["-o", f"-p {int(cfg.port)}"]  # pg_ctl hands -o to a shell: only a validated integer goes in
    try:
        ran = _pg_ctl(instance, args, cfg.start_timeout + 5)
    except (ActionError, FileNotFoundError) as exc:
        return ActionResult("start", False, str(exc), time.monotonic() - began, steps, failure=Failure.OTHER)
    steps.append(f"pg_ctl start: {ran.describe()}")
    if ran.ok:
        return ActionResult("start", True, "started", time.monotonic() - began, steps)
    result = ActionResult("start", False, "", time.monotonic() - began, steps)
    fallback = f"{ran.describe()}; see {log_file(instance)}"
    _explain(result, mark, "pg_ctl start failed", ran.output, timed_out=ran.timed_out, fallback=fallback)
    return result


def _explain(
    result: ActionResult, mark: LogMark, what: str, output: str, timed_out: bool = False, fallback: str = ""
) -> None:
    """Fill RESULT's failure class and message (WHAT failed, and why) from the server log lines written
    since MARK, else FALLBACK, else the message it has."""
    reasons = mark.reasons()
    result.failure = Failure.TIMEOUT if timed_out else classify([*reasons, output])
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
    """Stop: fast shutdown, then immediate, then SIGKILL of the verified postmaster and its children.

    Every signal goes through a pidfd on the postmaster verified by the identity rule, so a pid file
    that names another cluster's postmaster, or a pid reused meanwhile, is never hit.
    """
    began = time.monotonic()
    cfg = instance.config
    if cfg.stop_script:
        return _run_script(instance, "stop", cfg.stop_script, cfg.stop_timeout)
    identity = instance.identify()
    postmaster = identity.postmaster
    if postmaster is None:
        if identity.verdict is Verdict.UNVERIFIABLE:
            return ActionResult(
                "stop", False, f"refused: {identity.reason}", time.monotonic() - began, code=EXIT_REFUSED
            )
        message = "not running" + (f" (stale postmaster.pid: {identity.reason})" if identity.pid_file else "")
        return ActionResult("stop", True, message, time.monotonic() - began)
    handles = postmaster.handles()
    if handles is None:
        return ActionResult("stop", True, "not running (the postmaster exited meanwhile)", time.monotonic() - began)
    own, children = handles
    steps: list[str] = []
    try:
        immediate = max(2.0, min(cfg.stop_timeout, IMMEDIATE_STOP_MAX))
        for mode, timeout in (("fast", cfg.stop_timeout), ("immediate", immediate)):
            steps.append(own.send(SHUTDOWN_SIGNALS[mode], f"{mode} shutdown: {reason}"))
            if own.wait_exit(timeout):
                instance.wait_until_gone([postmaster.pid], REAP_WAIT_SECONDS)
                steps.append(f"postmaster {postmaster.pid} exited after {mode} shutdown")
                return ActionResult("stop", True, f"stopped ({mode})", time.monotonic() - began, steps)
            steps.append(f"postmaster {postmaster.pid} still running {timeout:g}s after {mode} shutdown")
        steps.append(_kill(instance, own, children, reason))
    finally:
        for handle in (own, *children):
            handle.close()
    if instance.postmaster() is None:
        return ActionResult("stop", True, "stopped (SIGKILL)", time.monotonic() - began, steps)
    return ActionResult("stop", False, "postmaster survived SIGKILL", time.monotonic() - began, steps)


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
