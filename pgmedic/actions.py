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

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

from . import procfs
from .errors import ActionError
from .instance import Instance, Probe, State
from .runner import RunResult, run

REAP_WAIT_SECONDS = 10.0  # how long to wait for a dead postmaster's zombie and orphans
IMMEDIATE_STOP_MAX = 10.0
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass
class ActionResult:
    action: str
    ok: bool
    message: str
    duration: float = 0.0
    steps: list[str] = field(default_factory=list)
    probe: Probe | None = None
    code: int | None = None  # a monitor's exit code (probe state or the script's own code)

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        return 0 if self.ok else 1


def base_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def script_env(instance: Instance) -> dict[str, str]:
    """What a user script is told about its instance."""
    cfg = instance.config
    pid_file = instance.pid_file()
    port = (pid_file.port if pid_file and pid_file.port else None) or cfg.port or 5432
    return {
        **base_env(),
        "PGDATA": instance.data_directory,
        "PGPORT": str(port),
        "PGUSER": cfg.role,
        "PGDATABASE": cfg.database,
        "PGMEDIC_INSTANCE": instance.name,
    }


def _run_script(instance: Instance, action: str, script: str, timeout: float) -> ActionResult:
    result = run([script], timeout=timeout, env=script_env(instance))
    code = 1 if result.returncode is None else result.returncode
    return ActionResult(
        action, result.ok, f"{script}: {result.describe()}", result.duration, [result.describe()], code=code
    )


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
    """Start the instance unless a live postmaster already holds its data directory."""
    began = time.monotonic()
    cfg = instance.config
    problem = instance.data_directory_problem()
    if problem:
        return ActionResult("start", False, f"refused: {problem}")
    running = instance.postmaster()
    if running is not None:
        return ActionResult("start", False, f"refused: postmaster {running.pid} is already running this data directory")
    steps = wait_for_leftovers(instance)
    if cfg.start_script:
        result = _run_script(instance, "start", cfg.start_script, cfg.start_timeout)
        result.steps[:0] = steps
        result.duration = time.monotonic() - began
        return result
    args = ["start", "-w", "-t", str(max(1, int(cfg.start_timeout))), "-l", log_file(instance)]
    if cfg.port:
        args += ["-o", f"-p {int(cfg.port)}"]  # pg_ctl hands -o to a shell: only a validated integer goes in
    try:
        result = _pg_ctl(instance, args, cfg.start_timeout + 5)
    except (ActionError, FileNotFoundError) as exc:
        return ActionResult("start", False, str(exc), time.monotonic() - began, steps)
    steps.append(f"pg_ctl start: {result.describe()}")
    if result.ok:
        return ActionResult("start", True, "started", time.monotonic() - began, steps)
    return ActionResult(
        "start",
        False,
        f"pg_ctl start failed ({result.describe()}); see {log_file(instance)}",
        time.monotonic() - began,
        steps,
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
    target = os.path.realpath(instance.data_directory)
    out = []
    for name in os.listdir(procfs.PROC):
        if not name.isdigit():
            continue
        pid = int(name)
        cwd = procfs.read_link(pid, "cwd")
        if cwd and os.path.realpath(cwd) == target:
            exe = os.path.basename(procfs.read_link(pid, "exe") or "")
            if exe.startswith(("postgres", "postmaster")):
                out.append(pid)
    return out


# ---- stop ----------------------------------------------------------------------------------------


def stop(instance: Instance) -> ActionResult:
    """Stop: fast shutdown, then immediate, then SIGKILL of the verified postmaster and its children."""
    began = time.monotonic()
    cfg = instance.config
    if cfg.stop_script:
        return _run_script(instance, "stop", cfg.stop_script, cfg.stop_timeout)
    postmaster = instance.postmaster()
    if postmaster is None:
        return ActionResult("stop", True, "not running", time.monotonic() - began)
    steps: list[str] = []
    immediate = max(2.0, min(cfg.stop_timeout, IMMEDIATE_STOP_MAX))
    for mode, timeout in (("fast", cfg.stop_timeout), ("immediate", immediate)):
        try:
            result = _pg_ctl(instance, ["stop", "-w", "-m", mode, "-t", str(max(1, int(timeout)))], timeout + 5)
        except (ActionError, FileNotFoundError) as exc:
            return ActionResult("stop", False, str(exc), time.monotonic() - began, steps)
        steps.append(f"pg_ctl stop -m {mode}: {result.describe()}")
        if instance.postmaster() is None:
            instance.wait_until_gone([postmaster.pid], REAP_WAIT_SECONDS)
            return ActionResult("stop", True, f"stopped ({mode})", time.monotonic() - began, steps)
    steps.append(kill_postmaster(instance))
    if instance.postmaster() is None:
        return ActionResult("stop", True, "stopped (SIGKILL)", time.monotonic() - began, steps)
    return ActionResult("stop", False, "postmaster survived SIGKILL", time.monotonic() - began, steps)


def kill_postmaster(instance: Instance) -> str:
    """SIGKILL the verified postmaster and all its children, then wait until they are really gone."""
    postmaster = instance.postmaster()
    if postmaster is None:
        return "SIGKILL: nothing to kill"
    victims = [postmaster.pid] + [c.pid for c in postmaster.children()]
    # Re-verify right before the signal: the pid must still be the same process (same start time).
    current = procfs.read_stat(postmaster.pid)
    if current is None or current.start_ticks != postmaster.stat.start_ticks:
        return "SIGKILL: postmaster already gone"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    began = time.monotonic()
    gone = instance.wait_until_gone(victims, REAP_WAIT_SECONDS)
    took = time.monotonic() - began
    left = "" if gone else " (some still exist)"
    return f"SIGKILL of postmaster {postmaster.pid} and {len(victims) - 1} children; gone after {took:.1f}s{left}"


def restart(instance: Instance) -> ActionResult:
    """Stop (with escalation) then start; one result with both sets of steps."""
    began = time.monotonic()
    stopped = stop(instance)
    if not stopped.ok:
        return ActionResult(
            "restart", False, f"stop failed: {stopped.message}", time.monotonic() - began, stopped.steps
        )
    started = start(instance)
    return ActionResult(
        "restart",
        started.ok,
        started.message if started.ok else f"start failed: {started.message}",
        time.monotonic() - began,
        [*stopped.steps, *started.steps],
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
