"""Decisions and actions.

``decide`` runs inside the HTTP request: it journals each alert and what will be done about it in
one transaction, and only then does the request answer 2xx. A new failure episode (fingerprint +
startsAt) becomes a pending row; a repeat delivery of the same episode is a duplicate and does
nothing. Actions run in one worker thread per instance, never inside the request.

A worker claims an episode under the instance's file lock (so two remediator processes sharing a
state directory never act together), probes first and acts only on a dead or hung instance, within
the restart budget, then waits until the instance accepts connections. An episode left unfinished
by a crash of the remediator is picked up again at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pgmedic import actions
from pgmedic.config import Config, InstanceConfig
from pgmedic.instance import Instance, State
from pgmedic.journal import Journal
from pgmedic.runner import group_alive, on_spawn

from .locks import instance_lock
from .metrics import RemediatorMetrics
from .payload import Alert

log = logging.getLogger(__name__)
POLL = 0.1  # seconds between probes while waiting for an instance to accept connections
IDLE_WAKE = 5.0  # a worker looks for unfinished work at least this often


@dataclass(frozen=True)
class Outcome:
    status: str  # done, skipped, failed
    result: str


class Engine:
    def __init__(self, config: Config, journal: Journal, metrics: RemediatorMetrics) -> None:
        self.config = config
        self.journal = journal
        self.metrics = metrics
        self.notifiers = config.ksys.notifiers
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in config.instances}
        self._acting: set[str] = set()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one worker per instance; each first finishes what a previous run left pending or running."""
        for name in self.config.instances:
            thread = threading.Thread(target=self._worker, args=(name,), name=f"pgmedic-worker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
            self._wake[name].set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout)

    # ---- decisions (in the request) ---------------------------------------------------------------
    def action_for(self, alert: Alert) -> str:
        """The configured mapping for this alert name wins; else the alert's remediation label; else none."""
        return self.config.remediator.actions.get(alert.alertname) or alert.labels.get("remediation") or "none"

    def decide(self, alerts: list[Alert], source: str) -> list[dict[str, Any]]:
        """Journal every alert and its decision in one transaction; wake the workers that have new work."""
        decisions: list[dict[str, Any]] = []
        wake: set[str] = set()
        now = time.time()
        with self.journal.transaction() as db:
            for alert in alerts:
                name = alert.labels.get("pg_instance")
                action = self.action_for(alert)
                base = {
                    "alertname": alert.alertname,
                    "alert_status": alert.status,
                    "fingerprint": alert.fingerprint,
                    "starts_at": alert.starts_at,
                    "source": source,
                }
                if name is None:
                    result, reason = "ignored", "no pg_instance label"
                elif name not in self.config.instances:
                    result, reason = "ignored", "not a configured instance"
                elif alert.status == "resolved":
                    result, reason = "ignored", "resolved"
                elif action not in ("restart", "start"):
                    result, reason = "ignored", f"action {action!r}: nothing to do"
                else:
                    inserted = db.execute(
                        "INSERT OR IGNORE INTO episodes (key, instance, alertname, action, status, starts_at, "
                        "received_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                        (alert.episode, name, alert.alertname, action, alert.starts_at_epoch, now, now),
                    ).rowcount
                    result, reason = ("accepted", f"{action} queued") if inserted else ("duplicate", "already handled")
                    if inserted:
                        wake.add(name)
                known = name if name in self.config.instances else None
                detail = {**base, "result": result, "reason": reason}
                if name is not None and known is None:
                    detail["pg_instance"] = name  # kept as data, never used to act
                if result in ("accepted", "duplicate"):
                    detail["episode"] = alert.episode
                self.journal.add_event(db, known, "notification", **detail)
                decisions.append(
                    {"pg_instance": name, "alertname": alert.alertname, "result": result, "reason": reason}
                )
        for d in decisions:
            self.metrics.notifications.labels(d["result"]).inc()
        for name in wake:
            self._wake[name].set()
        return decisions

    # ---- workers --------------------------------------------------------------------------------
    def _worker(self, name: str) -> None:
        while not self._stop.is_set():
            self._wake[name].wait(IDLE_WAKE)
            self._wake[name].clear()
            if self._stop.is_set():
                return
            try:
                for row in self.journal.query(
                    "SELECT key FROM episodes WHERE instance = ? AND status IN ('pending', 'running') "
                    "ORDER BY received_at",
                    (name,),
                ):
                    if self._stop.is_set():
                        return
                    self._process(name, row["key"])
            except Exception:
                log.exception("worker for %s failed; retrying", name)
                self._stop.wait(1.0)

    def _process(self, name: str, key: str) -> None:
        cfg = self.config.instance(name)
        with instance_lock(self.config.remediator.state_dir, name, timeout=IDLE_WAKE) as held:
            if not held:  # another remediator process is acting on this instance: look again later
                self._wake[name].set()
                return
            with self.journal.transaction() as db:
                row = db.execute("SELECT * FROM episodes WHERE key = ?", (key,)).fetchone()
                if row is None or row["status"] not in ("pending", "running"):
                    return
                if row["status"] == "running":
                    self.journal.add_event(db, name, "episode_resumed", episode=key, reason="remediator restarted")
                db.execute("UPDATE episodes SET status = 'running', updated_at = ? WHERE key = ?", (time.time(), key))
            self._acting.add(name)
            try:
                if row["status"] == "running" and row["action_pgid"]:
                    self._wait_for_orphaned_action(cfg, key, row["action_pgid"])
                outcome = self._remediate(cfg, dict(row))
            finally:
                self._acting.discard(name)
            if outcome is None:  # stopping: the episode stays running and is resumed at the next start
                return
            with self.journal.transaction() as db:
                db.execute(
                    "UPDATE episodes SET status = ?, result = ?, updated_at = ? WHERE key = ?",
                    (outcome.status, outcome.result, time.time(), key),
                )
                self.journal.add_event(db, name, "episode_" + outcome.status, episode=key, result=outcome.result)

    def _remediate(self, cfg: InstanceConfig, episode: dict[str, Any]) -> Outcome | None:
        """Probe, then act within the budget until the instance accepts connections or the budget is spent."""
        name, key = cfg.name, episode["key"]
        instance = Instance(cfg)
        attempts = self._restarts(name, episode=key)
        while not self._stop.is_set():
            self.journal.expire_failed(name, cfg.restart_window)
            state = self.journal.state(name)
            if state.suspended:
                self.metrics.actions.labels(name, episode["action"], "skipped").inc()
                self.journal.event(name, "skipped", episode=key, reason="suspended (maintenance)")
                return Outcome("skipped", "suspended")
            if state.failed:
                self.journal.event(name, "skipped", episode=key, reason="FAILED: resume to re-arm")
                return Outcome("skipped", "instance is FAILED")
            probe = instance.probe()
            if probe.state is State.ACCEPTING:
                if attempts:
                    self._recovered(cfg, episode)
                    return Outcome("done", "recovered")
                self.journal.event(name, "skipped", episode=key, reason="healthy", probe=probe.detail)
                return Outcome("skipped", "healthy")
            if probe.state is State.REJECTING:
                return self._wait_out(instance, episode, probe.detail, attempts)
            used, last = self._budget_used(cfg, state.armed_at)
            if used >= cfg.max_restart:
                self._fail(cfg, key, used)
                return Outcome("failed", f"restart budget spent ({used} in {cfg.restart_window:g}s)")
            delay = cfg.restart_delay * 2 ** (used - 1) if used else 0.0
            wait = last + delay - time.time() if last else 0.0
            if wait > 0:
                self.journal.event(name, "backoff", episode=key, seconds=round(wait, 1), restarts_in_window=used)
                if self._stop.wait(wait):
                    return None
                continue  # probe again: it may have recovered meanwhile
            attempts += 1
            self._act(cfg, instance, episode, probe.state, attempts)
        return None

    def _act(
        self, cfg: InstanceConfig, instance: Instance, episode: dict[str, Any], state: State, attempt: int
    ) -> None:
        name, key = cfg.name, episode["key"]
        action = "restart" if state is State.NOT_RESPONDING else "start"
        self.journal.event(
            name, "restart_started", self.notifiers, episode=key, action=action, attempt=attempt,
            reason=str(state), critical=cfg.critical,
        )  # fmt: skip
        with on_spawn(lambda pgid: self._record_pgid(key, pgid)):
            result = actions.restart(instance) if action == "restart" else actions.start(instance)
        self._record_pgid(key, None)
        self.metrics.action_duration.labels(action).observe(result.duration)
        self.metrics.actions.labels(name, action, "ok" if result.ok else "failed").inc()
        kind = "restarted" if result.ok else "restart_failed"
        self.journal.event(
            name, kind, self.notifiers, episode=key, action=action, attempt=attempt, message=result.message,
            steps=result.steps, duration=round(result.duration, 3),
        )  # fmt: skip
        if result.ok:
            self._wait_accepting(instance, cfg.start_timeout)

    def _record_pgid(self, key: str, pgid: int | None) -> None:
        with self.journal.transaction() as db:
            db.execute("UPDATE episodes SET action_pgid = ? WHERE key = ?", (pgid, key))

    def _wait_accepting(self, instance: Instance, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if instance.probe(timeout=min(2.0, instance.config.monitor_timeout)).state is State.ACCEPTING:
                return True
            self._stop.wait(POLL)
        return False

    def _wait_out(self, instance: Instance, episode: dict[str, Any], detail: str, attempts: int) -> Outcome:
        """Starting, recovering, stopping or full: never restart; wait (bounded) to see it come back."""
        name, key = instance.name, episode["key"]
        if "exhausted" in detail:
            self.journal.event(name, "skipped", episode=key, reason="alive but out of connection slots", probe=detail)
            return Outcome("skipped", "connections exhausted: not a restart case")
        self.journal.event(name, "waiting", episode=key, reason=detail)
        if self._wait_accepting(instance, instance.config.start_timeout):
            if attempts:
                self._recovered(instance.config, episode)
                return Outcome("done", "recovered")
            self.journal.event(name, "skipped", episode=key, reason="recovered by itself")
            return Outcome("skipped", "recovered by itself")
        self.journal.event(name, "skipped", episode=key, reason=f"still not accepting after waiting: {detail}")
        return Outcome("skipped", "still starting or recovering; not restarted")

    def _recovered(self, cfg: InstanceConfig, episode: dict[str, Any]) -> None:
        now = time.time()
        since_alert = now - episode["starts_at"] if episode.get("starts_at") else None
        since_receipt = now - episode["received_at"]
        if since_alert is not None:
            self.metrics.recovery.labels(cfg.name, "alert_start").observe(since_alert)
        self.metrics.recovery.labels(cfg.name, "receipt").observe(since_receipt)
        self.journal.event(
            cfg.name, "recovered", self.notifiers, episode=episode["key"],
            seconds_since_alert_start=None if since_alert is None else round(since_alert, 3),
            seconds_since_receipt=round(since_receipt, 3),
        )  # fmt: skip

    def _fail(self, cfg: InstanceConfig, key: str, used: int) -> None:
        """Budget spent: FAILED, no more actions; KSYS hears of it once, and only for a critical instance."""
        with self.journal.transaction() as db:
            already = db.execute("SELECT failed_at FROM instance_state WHERE instance = ?", (cfg.name,)).fetchone()
            if already is not None and already["failed_at"] is not None:
                return
            self.journal.set_failed(db, cfg.name, f"{used} restarts in {cfg.restart_window:g}s did not bring it back")
            self.journal.add_event(db, cfg.name, "failed", episode=key, restarts=used, window=cfg.restart_window)
            if cfg.critical:
                self.journal.add_event(
                    db, cfg.name, "escalated", self.notifiers, episode=key, restarts=used, window=cfg.restart_window,
                    critical=True, reason="restart budget spent",
                )  # fmt: skip

    def _wait_for_orphaned_action(self, cfg: InstanceConfig, key: str, pgid: int) -> None:
        """A previous run died while a command of this episode ran in its own session: let it finish first,
        bounded by the action's own timeouts, so that nothing is started twice."""
        if not group_alive(pgid):
            return
        self.journal.event(
            cfg.name, "waiting", episode=key, reason=f"action of the previous run (pgid {pgid}) still running"
        )
        deadline = time.monotonic() + cfg.start_timeout + 2 * cfg.stop_timeout + 10
        while group_alive(pgid) and time.monotonic() < deadline and not self._stop.wait(POLL):
            pass

    # ---- budget -------------------------------------------------------------------------------
    def _restarts(self, name: str, since: float = 0.0, episode: str | None = None) -> int:
        sql = "SELECT count(*) FROM events WHERE instance = ? AND kind = 'restart_started' AND ts >= ?"
        args: tuple[Any, ...] = (name, since)
        if episode is not None:
            sql += " AND episode = ?"
            args += (episode,)
        return int(self.journal.query(sql, args)[0][0])

    def _budget_used(self, cfg: InstanceConfig, armed_at: float) -> tuple[int, float]:
        """Restarts in the current window (since the window start or the last resume, ARMED_AT) and the last one's time."""
        since = max(time.time() - cfg.restart_window, armed_at)
        rows = self.journal.query(
            "SELECT count(*), max(ts) FROM events WHERE instance = ? AND kind = 'restart_started' AND ts >= ?",
            (cfg.name, since),
        )
        return int(rows[0][0]), float(rows[0][1] or 0.0)

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """{instance: (state, budget remaining)} for metrics and the status API."""
        out = {}
        for name, cfg in self.config.instances.items():
            self.journal.expire_failed(name, cfg.restart_window)
            st = self.journal.state(name)
            used, _ = self._budget_used(cfg, st.armed_at)
            remaining = 0 if st.failed else max(0, cfg.max_restart - used)
            state = (
                "failed" if st.failed else "suspended" if st.suspended else "acting" if name in self._acting else "ok"
            )
            out[name] = (state, remaining)
        return out
