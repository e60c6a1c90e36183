"""Decisions and actions.

``decide`` runs inside the HTTP request: it journals each alert and what will be done about it in
one transaction, and only then does the request answer 2xx. A new failure episode (fingerprint +
startsAt) becomes a pending row; a repeat delivery is a duplicate while the episode is in progress,
and a re-probe (recheck) once it has ended. Actions run in one worker thread per instance, never
inside the request. The fast path (fastpath.py) opens episodes the same way, for crashes it sees.

A worker claims an episode under the instance's file lock (so two remediator processes, or an
administrator's `pgmedic start|stop`, never act together), probes first and acts only on a dead or
hung instance, within the restart budget, then waits until the instance accepts connections; every
wait ends the moment the instance gets worse. An episode left unfinished by a crash of the
remediator is picked up again at the next start.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgmedic import actions
from pgmedic.actions import ActionResult
from pgmedic.config import Config, InstanceConfig, Mode
from pgmedic.failures import NOT_RETRIED, Failure, LogMark
from pgmedic.fleet import HOST_LABEL
from pgmedic.instance import Instance, Probe, Verdict
from pgmedic.journal import FAST_PATH, EpisodeOpened, Journal
from pgmedic.locks import held_elsewhere, instance_lock
from pgmedic.managers import Manager, ManagerKind, ManagerProblem, StartPolicy
from pgmedic.runner import group_alive, on_spawn
from pgmedic.states import Reason, State, Would
from pgmedic.text import shown

from .fastpath import CRASH_ALERT, FastPath
from .metrics import RemediatorMetrics
from .payload import Alert

log = logging.getLogger(__name__)
POLL = 0.1  # seconds between probes while waiting for an instance to accept connections
IDLE_WAKE = 5.0  # a worker looks for unfinished work at least this often
FAST_PATH_ALERT_LAG = 120.0  # how long after a crash its alert may start (scrape + evaluation intervals)
LABEL_KEPT = 256  # characters of an alert's label values kept in the journal and the answer
MANAGER_AGE = 10.0  # seconds a manager finding is kept for the same postmaster (status API, idle looks)
SYSTEMD_GRACE = 5.0  # beyond a unit's RestartSec: how long systemd gets to restart its server itself


def bounded(text: str) -> str:
    """TEXT cut to LABEL_KEPT characters: a hostile sender's megabyte labels must not be stored whole."""
    return text if len(text) <= LABEL_KEPT else text[:LABEL_KEPT] + "…"


def perform(instance: Instance, action: str, reason: str) -> ActionResult:
    """The real actions: start, or restart (stop with escalation, then start)."""
    return actions.restart(instance, reason) if action == "restart" else actions.start(instance)


class Decision(enum.Enum):
    """What was decided for one delivered alert (the `result` of its notification event)."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    RECHECK = "recheck"
    IGNORED = "ignored"


OPENED_DECISION = {
    EpisodeOpened.NEW: (Decision.ACCEPTED, "queued"),
    # Still firing after its episode ended: the instance may have failed again before Prometheus saw
    # it up (the alert keeps its startsAt). The worker re-probes it and acts only if it is down.
    EpisodeOpened.REQUEUED: (Decision.RECHECK, "episode ended but the alert still fires: re-probing"),
    EpisodeOpened.IN_PROGRESS: (Decision.DUPLICATE, "already being handled"),
}


class Ended(enum.StrEnum):
    """How an episode ended (the episode's status in the journal)."""

    DONE = "done"  # acted and recovered
    SKIPPED = "skipped"  # nothing to do, or not allowed to act
    FAILED = "failed"  # the restart budget is spent
    # Shut down cleanly by someone (pg_ctl, systemctl, pg_ctlcluster, pgmedic stop), also during the
    # remediator's own start or wait: their decision, never undone.
    STOPPED_BY_ADMINISTRATOR = "stopped_by_administrator"


@dataclass(frozen=True)
class Outcome:
    status: Ended
    result: str


class Wait(enum.Enum):
    """How a watched wait ended."""

    ACCEPTING = "accepting"
    WORSE = "worse"  # its premise broke: decide again now
    TIMEOUT = "timeout"
    STOPPING = "stopping"  # the remediator is shutting down


# How bad each state is, for "did it get worse while we waited?". Not responding counts with starting:
# a probe's SQL timeout alone right after a start is not a reason to cut a wait short.
SEVERITY = {
    State.ACCEPTING: 0,
    State.REJECTING: 1,
    State.NOT_RESPONDING: 1,
    State.NOT_RUNNING: 2,
    State.NO_DATA_DIRECTORY: 3,
    State.UNVERIFIED: 3,
}


@dataclass(frozen=True)
class Watch:
    """After a recovery: keep an eye on the postmaster until the alert can see a new failure."""

    instance: str
    episode: str
    until: float  # monotonic deadline (remediator.recovery_watch)


class Engine:
    def __init__(
        self,
        config: Config,
        journal: Journal,
        metrics: RemediatorMetrics,
        instance_for: Callable[[InstanceConfig], Instance] = Instance,
        run_action: Callable[[Instance, str, str], ActionResult] | None = None,
    ) -> None:
        """INSTANCE_FOR and RUN_ACTION default to the real instance model and actions; the fast tests
        give a scripted instance and action instead, to drive budget, backoff and dedupe in-process."""
        self.config = config
        self.journal = journal
        self.metrics = metrics
        self.instance_for = instance_for
        self.run_action = run_action or perform
        self.notifiers = config.ksys.notifiers
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in config.instances}
        self._acting: set[str] = set()
        self._watch: dict[str, Watch] = {}  # instance -> its watch after the last recovery
        # instance -> when the remediator's own stop (of a restart) last stopped its server: a clean
        # shutdown up to then was ours, not an administrator's.
        self._own_stop: dict[str, float] = {}
        # instance -> where the server's logs ended before this episode run's last start: a shutdown
        # request written since is someone's stop (an immediate one leaves no clean pg_control).
        self._last_start: dict[str, LogMark] = {}
        self._instances: dict[str, Instance] = {}  # instance models by name (see _instance)
        self.fast_path = FastPath(self)
        self._workers: dict[str, threading.Thread] = {}
        self._workers_lock = threading.Lock()
        self._started = threading.Event()

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one worker per instance; each first finishes what a previous run left pending or running."""
        self._started.set()
        for name in self.config.instances:
            self._start_worker(name)
        self.fast_path.start()

    def reconfigure(self, config: Config) -> None:
        """Put CONFIG in force: workers start for added instances and end, once idle, for removed ones.

        An episode in flight finishes under the configuration it started with (its worker read the
        instance's settings when it claimed it); the next one reads the new settings.
        """
        added = [name for name in config.instances if name not in self.config.instances]
        for name in added:
            self._wake.setdefault(name, threading.Event())
        with self._workers_lock:
            self.config, self.notifiers = config, config.ksys.notifiers
        for name in list(self._wake):
            self._wake[name].set()  # removed instances' workers see it and end
        if self._started.is_set():
            for name in added:
                self._start_worker(name)
            self.fast_path.poke()

    def _start_worker(self, name: str) -> None:
        """One worker per instance: a removed instance's worker that has not ended yet serves it again."""
        with self._workers_lock:
            self._wake[name].set()
            if name in self._workers:
                return
            thread = threading.Thread(target=self._worker, args=(name,), name=f"pgmedic-worker-{name}", daemon=True)
            self._workers[name] = thread
            thread.start()

    def _serving(self, name: str) -> bool:
        """Whether the worker of NAME goes on; a worker whose instance was removed by a reload ends here."""
        with self._workers_lock:
            if name in self.config.instances:
                return True
            self._workers.pop(name, None)
            return False

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.fast_path.stop(timeout)
        for event in self._wake.values():
            event.set()
        for thread in list(self._workers.values()):
            thread.join(timeout)

    @property
    def acting(self) -> frozenset[str]:
        """Instances a worker is acting on right now."""
        return frozenset(self._acting)

    def open_crash_episode(self, name: str, pid: int, start_ticks: int, detected: float, note: str | None) -> None:
        """The fast path saw NAME's postmaster PID crash: an episode for the worker, like an alert's."""
        key = f"{FAST_PATH}:{pid}:{start_ticks}"
        with self.journal.batch() as batch:
            opened = batch.open_episode(key, name, FAST_PATH, "start", detected)
            detail: dict[str, Any] = {"episode": key, "pid": pid, "source": FAST_PATH}
            detail["detection_seconds"] = round(time.time() - detected, 6)
            if note:
                detail["note"] = note
            batch.add_event(name, "crash_detected", (), **detail)
        if opened is EpisodeOpened.NEW:
            self._wake[name].set()

    # ---- decisions (in the request) ---------------------------------------------------------------
    def action_for(self, alert: Alert) -> str:
        """The configured mapping for this alert name wins; else the alert's remediation label; else none."""
        return self.config.remediator.actions.get(alert.alertname) or alert.labels.get("remediation") or "none"

    def decide(self, alerts: list[Alert], source: str) -> list[dict[str, Any]]:
        """Journal every alert and its decision in one transaction; wake the workers that have new work."""
        decisions: list[dict[str, Any]] = []
        wake: set[str] = set()
        resolved: set[str] = set()
        with self.journal.batch() as batch:
            for alert in alerts:
                name = alert.labels.get("pg_instance")
                action = self.action_for(alert)
                episode = alert.episode
                base = {
                    "alertname": bounded(alert.alertname),
                    "alert_status": alert.status,
                    "fingerprint": bounded(alert.fingerprint),
                    "starts_at": bounded(alert.starts_at),
                    "source": source,
                }
                host = alert.labels.get(HOST_LABEL)
                if host is not None:
                    base[HOST_LABEL] = bounded(host)
                if name is None:
                    result, reason = Decision.IGNORED, "no pg_instance label"
                elif host is not None and host != self.config.remediator.host:
                    result, reason = (
                        Decision.IGNORED,
                        f"wrong host: for {shown(bounded(host))}, this is {self.config.remediator.host}",
                    )
                elif name not in self.config.instances:
                    result, reason = Decision.IGNORED, "not a configured instance"
                elif alert.status == "resolved":
                    result, reason = Decision.IGNORED, "resolved"
                    resolved.add(alert.episode)
                elif action not in ("restart", "start"):
                    result, reason = Decision.IGNORED, f"action {shown(action)}: nothing to do"
                else:
                    episode = self._fast_path_episode(name, alert) or alert.episode
                    if episode != alert.episode:
                        base["via"] = FAST_PATH  # the crash the fast path already handles
                    opened = batch.open_episode(episode, name, bounded(alert.alertname), action, alert.starts_at_epoch)
                    result, reason = OPENED_DECISION[opened]
                    if result is not Decision.DUPLICATE:
                        wake.add(name)
                known = name if name in self.config.instances else None
                detail: dict[str, Any] = {**base, "result": result.value, "reason": reason}
                if name is not None and known is None:
                    detail["pg_instance"] = bounded(name)  # kept as data (cut), never used to act
                    if len(name) > LABEL_KEPT:
                        detail["pg_instance_length"] = len(name)
                if result in (Decision.ACCEPTED, Decision.DUPLICATE, Decision.RECHECK):
                    detail["episode"] = episode
                batch.add_event(known, "notification", (), **detail)
                decisions.append(
                    {
                        "pg_instance": None if name is None else bounded(name),
                        "alertname": bounded(alert.alertname),
                        "result": result.value,
                        "reason": reason,
                    }
                )
        for d in decisions:
            self.metrics.notifications.labels(d["result"]).inc()
        for watched in list(self._watch.values()):
            if watched.episode in resolved:  # Prometheus has seen the recovery: its alerts see again
                self._watch.pop(watched.instance, None)
        for name in wake:
            self._wake[name].set()
        return decisions

    def _fast_path_episode(self, name: str, alert: Alert) -> str | None:
        """The fast-path episode this crash alert follows: one detected shortly before the alert started
        (Prometheus sees a crash a scrape and an evaluation after the fast path does)."""
        if alert.alertname != CRASH_ALERT or alert.starts_at_epoch is None:
            return None
        if not self.config.instance(name).fast_path_on(self.config.remediator):
            return None
        lag = max(FAST_PATH_ALERT_LAG, self.config.remediator.recovery_watch)
        return self.journal.fast_path_episode(name, alert.starts_at_epoch - lag, alert.starts_at_epoch + 5.0)

    # ---- workers --------------------------------------------------------------------------------
    def _worker(self, name: str) -> None:
        while not self._stop.is_set():
            if not self._serving(name):
                return
            self._look_at_manager(name)
            self._idle(name)
            self._wake[name].clear()
            if self._stop.is_set() or not self._serving(name):
                return
            try:
                self.journal.expire_failed(name, self.config.instance(name).restart_window)  # housekeeping
                for key in self.journal.open_episodes(name):
                    if self._stop.is_set():
                        return
                    self._process(name, key)
            except Exception:
                log.exception("worker for %s failed; retrying", name)
                self._stop.wait(1.0)

    def _look_at_manager(self, name: str) -> None:
        """Find who manages NAME's running server now and then (cheap while it is the same postmaster), so
        that after a crash the remediator still knows the unit it ran in."""
        try:
            self._instance(name).manager(max_age=MANAGER_AGE)
        except (ManagerProblem, OSError) as exc:  # a configured manager missing: the episode says so when it acts
            log.debug("manager of %s: %s", name, exc)

    def _idle(self, name: str) -> None:
        """Wait for work; right after a recovery, also watch the postmaster until the alert can see again.

        Between a recovery and the next scrape that sees the instance up, the alert still fires with
        its old startsAt: a new crash in that window would raise no new alert. So the worker keeps
        looking (cheaply: the pid file and /proc) until Prometheus resolves the alert or
        ``remediator.recovery_watch`` passes, and reopens the episode the moment the server dies again.
        """
        watched = self._watch.get(name)
        if watched is None:
            self._wake[name].wait(IDLE_WAKE)
            return
        instance = self._instance(name)
        while not self._wake[name].wait(POLL):
            if self._watch.get(name) is not watched:  # the alert resolved
                return
            if time.monotonic() >= watched.until:
                self._watch.pop(name, None)
                return
            identity = instance.identify()
            if identity.verdict in (Verdict.VERIFIED, Verdict.UNVERIFIABLE):
                continue
            self._watch.pop(name, None)
            # Only a crash reopens: a clean shutdown leaves no pid file, and an exit during someone's
            # action (an administrator's `pgmedic stop`, which holds the lock) is not a failure.
            if identity.verdict is Verdict.STALE and not held_elsewhere(self.config.remediator.state_dir, name):
                self.journal.reopen_episode(watched.episode, f"the postmaster died again ({identity.reason})")
            return

    def _process(self, name: str, key: str) -> None:
        cfg = self.config.instance(name)
        with instance_lock(self.config.remediator.state_dir, name, timeout=IDLE_WAKE) as held:
            if not held:  # another remediator process is acting on this instance: look again later
                self._wake[name].set()
                return
            row = self.journal.claim_episode(key)
            if row is None:
                return
            self._acting.add(name)
            try:
                if row["status"] == "running" and row["action_pgid"]:
                    self._wait_for_orphaned_action(cfg, key, row["action_pgid"])
                outcome = self._remediate(cfg, row)
            finally:
                self._acting.discard(name)
            if outcome is None:  # stopping: the episode stays running and is resumed at the next start
                return
            self.journal.finish_episode(name, key, outcome.status, outcome.result)
            fast = cfg.fast_path_on(self.config.remediator)  # the fast path sees a new crash by itself
            if outcome.status is Ended.DONE and self.config.remediator.recovery_watch > 0 and not fast:
                self._watch[name] = Watch(name, key, time.monotonic() + self.config.remediator.recovery_watch)

    def _remediate(self, cfg: InstanceConfig, episode: dict[str, Any]) -> Outcome | None:
        """Probe, then act within the budget until the instance accepts connections or the budget is spent.

        Every wait in here watches its premise: it ends the moment the instance gets worse (the
        postmaster died, the data directory vanished, it was suspended), and the loop decides again at
        once, within the same episode and budget.
        """
        name, key = cfg.name, episode["key"]
        instance = self._instance(name)
        attempts = self.journal.restarts_in_episode(name, key, since=episode.get("reopened_at") or 0.0)
        reopened = bool(episode.get("reopened_at")) and not attempts
        last_failure = Failure.NONE  # of this run's last attempt, for the escalation
        self._last_start.pop(name, None)
        waited_for_manager = False  # a unit that restarts its server itself has had its chance
        while not self._stop.is_set():
            self.journal.expire_failed(name, cfg.restart_window)
            state = self.journal.state(name)
            if state.suspended:
                self.metrics.actions.labels(name, episode["action"], "skipped", Failure.NONE).inc()
                self.journal.event(name, "skipped", episode=key, reason="suspended (maintenance)")
                return Outcome(Ended.SKIPPED, "suspended")
            if state.failed:
                self.journal.event(name, "skipped", episode=key, reason="FAILED: resume to re-arm")
                return Outcome(Ended.SKIPPED, "instance is FAILED")
            probe = instance.probe()
            if probe.state is State.ACCEPTING:
                if attempts:
                    self._recovered(cfg, episode)
                    return Outcome(Ended.DONE, "recovered")
                self.journal.event(name, "skipped", episode=key, reason="healthy", probe=probe.detail)
                return Outcome(Ended.SKIPPED, "healthy")
            if probe.state is State.REJECTING:
                outcome = self._wait_out(instance, episode, probe, attempts)
                if outcome is not None:
                    return outcome
                continue  # it got worse while we waited: decide again
            if probe.state is State.UNVERIFIED:  # never act on a process pgmedic could not identify
                self.journal.event(name, "skipped", episode=key, reason="postmaster not verifiable", probe=probe.detail)
                return Outcome(Ended.SKIPPED, "postmaster not verifiable")
            observing = cfg.mode_in(self.config.remediator) is Mode.OBSERVE
            if probe.state is State.NO_DATA_DIRECTORY:  # no start can cure it: no attempt, no budget spent
                if observing:
                    return self._observed(cfg, key, Would.ESCALATE, probe, failure=str(probe.failure))
                return self._fail_now(cfg, key, probe.failure, probe.detail)
            if probe.state is State.NOT_RUNNING:
                stopped = self._stopped_cleanly(instance)
                if stopped is not None:
                    return self._stopped_by_administrator(cfg, episode, stopped)
            try:
                manager = instance.manager()
            except ManagerProblem as exc:
                return self._fail_now(cfg, key, Failure.CONFIG_ERROR, str(exc))
            refusal = self._not_ours_to_start(manager)
            if refusal is not None:
                self.journal.event(
                    name, "skipped", episode=key, reason=refusal, manager=str(manager.kind), probe=probe.detail
                )
                return Outcome(Ended.SKIPPED, refusal)
            if probe.state is State.NOT_RUNNING and not waited_for_manager and _restarts_itself(manager):
                waited_for_manager = True
                outcome = self._give_systemd_its_chance(instance, episode, manager, attempts)
                if outcome is not None:
                    return outcome
                continue
            if reopened:
                self.journal.event(name, "episode_reopened", episode=key, reason=str(probe.state), probe=probe.detail)
                reopened = False
            used, last_end = self.journal.restart_budget_used(name, cfg.restart_window, state.armed_at)
            if observing:  # the decision, journaled instead of taken
                if used >= cfg.max_restart:
                    return self._observed(cfg, key, Would.ESCALATE, probe, reason="restart budget spent")
                would = Would.RESTART if probe.state is State.NOT_RESPONDING else Would.START
                return self._observed(cfg, key, would, probe, restarts_in_window=used)
            if used >= cfg.max_restart:
                self._fail(cfg, key, used, last_failure)
                return Outcome(Ended.FAILED, f"restart budget spent ({used} in {cfg.restart_window:g}s)")
            delay = cfg.restart_delay * 2 ** (used - 1) if used else 0.0
            wait = last_end + delay - time.time() if last_end else 0.0
            if wait > 0:
                self.journal.event(name, "backoff", episode=key, seconds=round(wait, 1), restarts_in_window=used)
                if self._watch_wait(instance, wait, premise=probe.state) is Wait.STOPPING:
                    return None
                continue  # probe again: it may have recovered, or been suspended, meanwhile
            attempts += 1
            acted, last_failure = self._act(cfg, instance, episode, probe.state, attempts, manager)
            if acted is Wait.STOPPING:
                return None
            if isinstance(acted, Outcome):
                return acted
        return None

    def _act(
        self, cfg: InstanceConfig, instance: Instance, episode: dict[str, Any], state: State, attempt: int,
        manager: Manager,
    ) -> tuple[Wait | Outcome | None, Failure]:  # fmt: skip
        """One start or restart (through the instance's MANAGER), then the wait for it to accept
        connections. A failure no retry can cure (NOT_RETRIED) ends the episode FAILED at once, and a clean
        stop by an administrator during it ends it stopped_by_administrator (the Outcome)."""
        name, key = cfg.name, episode["key"]
        action = "restart" if state is State.NOT_RESPONDING else "start"
        self.journal.event(
            name, "restart_started", self.notifiers, episode=key, action=action, attempt=attempt,
            reason=str(state), critical=cfg.critical, manager=str(manager.kind), managed_by=manager.found,
        )  # fmt: skip
        before = instance.pid_file()
        with on_spawn(lambda pgid: self.journal.record_action_pgid(key, pgid)):
            result = self.run_action(instance, action, f"episode {key}: {state}")
        self.journal.record_action_pgid(key, None)
        if result.stopped_at is not None:
            self._own_stop[name] = result.stopped_at
        if result.log_mark is not None:
            self._last_start[name] = result.log_mark
        self.fast_path.poke()  # watch the postmaster this action started
        self.metrics.action_duration.labels(action).observe(result.duration)
        self.metrics.actions.labels(name, action, "ok" if result.ok else "failed", result.failure).inc()
        kind = "restarted" if result.ok else "restart_failed"
        failure = {} if result.ok else {"failure": str(result.failure)}
        self.journal.event(
            name, kind, self.notifiers, episode=key, action=action, attempt=attempt, message=result.message,
            steps=result.steps, duration=round(result.duration, 3), **failure,
        )  # fmt: skip
        if not result.ok:
            if result.failure is Failure.STOPPED_BY_ADMINISTRATOR:
                return self._stopped_by_administrator(cfg, episode, result.message), result.failure
            if result.failure in NOT_RETRIED:
                return self._fail_now(cfg, key, result.failure, result.message), result.failure
            return None, result.failure
        # Started: it is at least starting. A pid file still naming the old server is not yet news.
        waited = self._watch_wait(instance, cfg.start_timeout, State.REJECTING, before.pid if before else None)
        if waited is Wait.WORSE:
            self.journal.event(name, "wait_ended", episode=key, reason="the instance failed again after the start")
        return waited, Failure.NONE

    def _watch_wait(self, instance: Instance, seconds: float, premise: State, old_pid: int | None = None) -> Wait:
        """Wait up to SECONDS for the instance to accept connections, re-probing every POLL.

        PREMISE is the state the wait started from. The wait ends at once when the instance gets
        worse than that (``SEVERITY``: the postmaster died, the data directory vanished) or is
        suspended. A server that is starting, recovering or stopping is waited for, never interrupted.
        Until a postmaster has been seen, no pid file or one still naming OLD_PID (the server that died
        before the start) means "not written yet", not "died": a start script may return early.
        """
        deadline = time.monotonic() + seconds
        probe_timeout = min(2.0, instance.config.monitor_timeout)
        was_suspended = self.journal.state(instance.name).suspended
        seen_postmaster = False
        while True:
            if self._stop.is_set():
                return Wait.STOPPING
            if not was_suspended and self.journal.state(instance.name).suspended:
                return Wait.WORSE
            probe = instance.probe(timeout=probe_timeout)
            if probe.state is State.ACCEPTING:
                return Wait.ACCEPTING
            seen_postmaster = seen_postmaster or probe.postmaster is not None
            not_yet = (
                probe.state is State.NOT_RUNNING
                and not seen_postmaster
                and (probe.pid_file is None or probe.pid_file.pid == old_pid)
            )
            if SEVERITY[probe.state] > SEVERITY[premise] and not not_yet:
                return Wait.WORSE
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Wait.TIMEOUT
            self._stop.wait(min(POLL, remaining))

    def _wait_out(self, instance: Instance, episode: dict[str, Any], probe: Probe, attempts: int) -> Outcome | None:
        """Starting, recovering, stopping or full: never restart; wait (bounded) to see it come back.

        None when it got worse meanwhile (the caller decides again) or when the remediator stops.
        """
        name, key, detail = instance.name, episode["key"], probe.detail
        if probe.reason is Reason.FULL:
            self.journal.event(name, "skipped", episode=key, reason="alive but out of connection slots", probe=detail)
            return Outcome(Ended.SKIPPED, "connections exhausted: not a restart case")
        self.journal.event(name, "waiting", episode=key, reason=detail)
        waited = self._watch_wait(instance, instance.config.start_timeout, premise=State.REJECTING)
        if waited is Wait.ACCEPTING:
            if attempts:
                self._recovered(instance.config, episode)
                return Outcome(Ended.DONE, "recovered")
            self.journal.event(name, "skipped", episode=key, reason="recovered by itself")
            return Outcome(Ended.SKIPPED, "recovered by itself")
        if waited is Wait.WORSE:
            self.journal.event(name, "wait_ended", episode=key, reason=f"got worse while {detail}")
            return None
        if waited is Wait.STOPPING:
            return None
        self.journal.event(name, "skipped", episode=key, reason=f"still not accepting after waiting: {detail}")
        return Outcome(Ended.SKIPPED, "still starting or recovering; not restarted")

    def _recovered(self, cfg: InstanceConfig, episode: dict[str, Any]) -> None:
        now = time.time()
        since_alert = now - episode["starts_at"] if episode.get("starts_at") else None
        since_receipt = now - episode["received_at"]
        if since_alert is not None:
            since = FAST_PATH if episode.get("alertname") == FAST_PATH else "alert_start"  # since the crash was seen
            self.metrics.recovery.labels(cfg.name, since).observe(since_alert)
        self.metrics.recovery.labels(cfg.name, "receipt").observe(since_receipt)
        self.journal.event(
            cfg.name, "recovered", self.notifiers, episode=episode["key"],
            seconds_since_alert_start=None if since_alert is None else round(since_alert, 3),
            seconds_since_receipt=round(since_receipt, 3),
        )  # fmt: skip

    def _stopped_cleanly(self, instance: Instance) -> str | None:
        """Why the instance, not running, was stopped by someone (one line), or None: its server shut down
        cleanly after the remediator's own last stop (pg_control), or logged a shutdown request since the
        remediator's last start in this episode."""
        name = instance.name
        mark = self._last_start.get(name)
        requested = mark.shutdown_requested() if mark is not None else None
        if requested is not None:
            return f"the server {requested} during the remediator's start or wait"
        clean = instance.clean_stop(after=self._own_stop.get(name, 0.0))
        if clean is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(clean.time))
            return f"the server was shut down cleanly at {when} (pg_control) and left no postmaster.pid"
        return None

    def _stopped_by_administrator(self, cfg: InstanceConfig, episode: dict[str, Any], how: str) -> Outcome:
        """A clean stop is an administrator's decision: no start, no retry. KSYS hears it for a critical
        instance, once per episode (not again at each recheck of the still firing alert)."""
        first = not episode.get("reopened_at")
        notify = self.notifiers if cfg.critical and first else ()
        self.journal.event(
            cfg.name, "stopped_by_administrator", notify, episode=episode["key"], reason=how, critical=cfg.critical
        )
        return Outcome(Ended.STOPPED_BY_ADMINISTRATOR, "stopped by an administrator: not started again")

    @staticmethod
    def _not_ours_to_start(manager: Manager) -> str | None:
        """Why the remediator must not start this instance on its own (one line), or None."""
        if manager.observe_only:
            return f"observe only: managed by {manager.describe()}"
        cluster = manager.cluster
        if cluster is not None and cluster.start is StartPolicy.DISABLED:
            return f"start.conf of cluster {cluster.label} says disabled: never started"
        if cluster is not None and cluster.start is StartPolicy.MANUAL:
            return f"start.conf of cluster {cluster.label} says manual: only an explicit `pgmedic start` starts it"
        return None

    def _give_systemd_its_chance(
        self, instance: Instance, episode: dict[str, Any], manager: Manager, attempts: int
    ) -> Outcome | None:
        """A unit with Restart= restarts its server by itself: wait RestartSec and a grace for it first, so
        that pgmedic and systemd never race; act (through systemctl) only if it did not."""
        assert manager.unit is not None
        name, key = instance.name, episode["key"]
        seconds = min(manager.unit.restart_sec + SYSTEMD_GRACE, instance.config.start_timeout)
        self.journal.event(
            name, "waiting", episode=key, manager=str(manager.kind),
            reason=f"{manager.unit.name} has Restart={manager.unit.restart}: systemd gets {seconds:g}s to restart it",
        )  # fmt: skip
        waited = self._watch_wait(instance, seconds, premise=State.NOT_RUNNING)
        if waited is Wait.STOPPING:
            return None
        if waited is Wait.ACCEPTING:
            if attempts:
                self._recovered(instance.config, episode)
                return Outcome(Ended.DONE, "recovered")
            self.journal.event(name, "skipped", episode=key, reason=f"restarted by systemd ({manager.unit.name})")
            return Outcome(Ended.SKIPPED, "restarted by its manager")
        return None

    def _observed(self, cfg: InstanceConfig, key: str, would: Would, probe: Probe, **detail: Any) -> Outcome:
        """Observe mode: what would have been done, journaled as a `would_*` event; nothing is done,
        no budget is spent and KSYS hears nothing (the instance's state stays as it is)."""
        self.journal.event(
            cfg.name, f"would_{would}", episode=key, reason=str(probe.state), probe=probe.detail, **detail
        )
        self.metrics.observed.labels(cfg.name, would).inc()
        return Outcome(Ended.SKIPPED, f"observe mode: would {would}")

    def _fail(self, cfg: InstanceConfig, key: str, used: int, last: Failure) -> None:
        """Budget spent: FAILED, no more actions; KSYS hears of it once, and only for a critical instance,
        with the class of the last attempt's failure when this run saw one."""
        self.journal.mark_failed(
            cfg.name, f"{used} restarts in {cfg.restart_window:g}s did not bring it back",
            self.notifiers if cfg.critical else None,
            episode=key, restarts=used, window=cfg.restart_window, critical=cfg.critical, reason="restart budget spent",
            **({"failure": str(last)} if last is not Failure.NONE else {}),
        )  # fmt: skip

    def _fail_now(self, cfg: InstanceConfig, key: str, failure: Failure, why: str) -> Outcome:
        """A failure no start can cure (the data directory missing or unreadable, a configuration error):
        FAILED at once without (more) attempts; KSYS hears the real reason once, for a critical instance."""
        self.journal.mark_failed(
            cfg.name, why, self.notifiers if cfg.critical else None,
            episode=key, critical=cfg.critical, reason=why, failure=str(failure),
        )  # fmt: skip
        return Outcome(Ended.FAILED, f"{failure}: not restarted")

    def _wait_for_orphaned_action(self, cfg: InstanceConfig, key: str, pgid: int) -> None:
        """A previous run died while a command of this episode ran in its own session: let it finish first,
        bounded by the action's own timeouts, so that nothing is started twice. A suspension ends the
        wait (the loop then takes no action)."""
        if not group_alive(pgid):
            return
        self.journal.event(
            cfg.name, "waiting", episode=key, reason=f"action of the previous run (pgid {pgid}) still running"
        )
        deadline = time.monotonic() + cfg.start_timeout + 2 * cfg.stop_timeout + 10
        while group_alive(pgid) and time.monotonic() < deadline and not self._stop.wait(POLL):
            if self.journal.state(cfg.name).suspended:
                return

    # ---- read side ---------------------------------------------------------------------------
    def modes(self) -> dict[str, Mode]:
        """{instance: act or observe} under the configuration in force."""
        config = self.config
        return {name: cfg.mode_in(config.remediator) for name, cfg in config.instances.items()}

    def manager_of(self, name: str) -> dict[str, str]:
        """{manager, managed_by} of instance NAME for the status API: who starts and stops it."""
        try:
            manager = self._instance(name).manager(max_age=MANAGER_AGE)
        except ManagerProblem as exc:
            return {"manager": "unknown", "managed_by": str(exc)}
        return {"manager": str(manager.kind), "managed_by": manager.found}

    def _instance(self, name: str) -> Instance:
        """NAME's instance model, kept while its configuration stays the same: it remembers who managed the
        server when it last ran (a unit's cgroup), which a look after a crash can no longer see."""
        cfg = self.config.instance(name)
        instance = self._instances.get(name)
        if instance is None or instance.config != cfg:
            instance = self._instances[name] = self.instance_for(cfg)
        return instance

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """{instance: (state, budget remaining)} for metrics and the status API. Only reads: a FAILED
        state whose window has passed reads as re-armed here, and the worker records the re-arming."""
        out = {}
        for name, cfg in self.config.instances.items():
            st = self.journal.state(name)
            failed = st.failed_within(cfg.restart_window)
            used, _ = self.journal.restart_budget_used(name, cfg.restart_window, st.armed_at)
            remaining = 0 if failed else max(0, cfg.max_restart - used)
            state = "failed" if failed else "suspended" if st.suspended else "acting" if name in self._acting else "ok"
            out[name] = (state, remaining)
        return out


def _restarts_itself(manager: Manager) -> bool:
    return manager.kind is ManagerKind.SYSTEMD and manager.unit is not None and manager.unit.restarts_itself
