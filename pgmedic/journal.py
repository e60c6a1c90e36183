"""The journal: pgmedic's durable memory, one SQLite database (WAL mode) in the state directory.

It holds every notification, decision, action, result and KSYS delivery as an append-only event
timeline, plus the small amount of state the remediator and the CLI share: which instances are
suspended or FAILED, which failure episodes were already acted on, and which KSYS deliveries are
still owed. SQLite serialises writers across threads and processes, so the CLI and a running
remediator can both write; ``synchronous=FULL`` makes a commit survive a crash or power loss.
"""

from __future__ import annotations

import contextlib
import enum
import grp
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .store import make_private, open_private
from .trust import private_dir_problem

JOURNAL_FILE = "journal.sqlite"
FAST_PATH = "fast_path"  # the alertname of episodes the fast path opened (no alert behind them)
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    instance TEXT,
    kind TEXT NOT NULL,
    episode TEXT,                     -- the failure episode this event belongs to, if any
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_instance ON events (instance, kind, ts);
CREATE INDEX IF NOT EXISTS events_episode ON events (episode);
CREATE TABLE IF NOT EXISTS episodes (
    key TEXT PRIMARY KEY,             -- alert fingerprint + startsAt: one failure episode
    instance TEXT,
    alertname TEXT,
    action TEXT NOT NULL,
    status TEXT NOT NULL,             -- pending, running, done, skipped, failed, stopped_by_administrator
    starts_at REAL,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    result TEXT,
    action_pgid INTEGER,              -- process group of the command running for it right now
    reopened_at REAL                  -- when it was last reopened (the instance failed again, same alert)
);
CREATE INDEX IF NOT EXISTS episodes_status ON episodes (status);
CREATE TABLE IF NOT EXISTS instance_state (
    instance TEXT PRIMARY KEY,
    suspended INTEGER NOT NULL DEFAULT 0,
    failed_at REAL,
    failed_reason TEXT,
    armed_at REAL NOT NULL DEFAULT 0  -- restarts before this time no longer count against the budget
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notifier TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    delivered_at REAL,
    last_error TEXT
);
"""


@dataclass(frozen=True)
class InstanceState:
    instance: str
    suspended: bool = False
    failed_at: float | None = None
    failed_reason: str | None = None
    armed_at: float = 0.0

    @property
    def failed(self) -> bool:
        return self.failed_at is not None

    def failed_within(self, window: float) -> bool:
        """FAILED and the restart window since it failed has not passed yet (after that it re-arms)."""
        return self.failed_at is not None and time.time() - self.failed_at < window


class Journal:
    """A handle on the journal; cheap to create, safe to share between threads."""

    def __init__(self, state_dir: str, group: str | None = None) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, JOURNAL_FILE)
        ensure_state_dir(state_dir, group)
        # Created private before SQLite opens it: SQLite gives its -wal and -shm files the database
        # file's mode, so all three stay 0600 (0640 with the group) whatever the umask.
        os.close(open_private(self.path, os.O_RDWR | os.O_CREAT, group))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                make_private(self.path + suffix, group)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(episodes)")}
            if "reopened_at" not in columns:  # a journal written by an older pgmedic
                db.execute("ALTER TABLE episodes ADD COLUMN reopened_at REAL")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction, committed on success, rolled back on error."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        db = self._connect()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    # ---- events ---------------------------------------------------------------------------------
    @staticmethod
    def add_event(
        db: sqlite3.Connection, instance: str | None, kind: str, notify: tuple[str, ...] = (), **detail: Any
    ) -> int:
        """Append one event inside an open transaction; returns its id.

        NOTIFY names the KSYS notifiers that must receive it: their deliveries are queued in the
        same transaction, so an event is never recorded without its notification or the reverse.
        """
        now = time.time()
        cur = db.execute(
            "INSERT INTO events (ts, instance, kind, episode, detail) VALUES (?, ?, ?, ?, ?)",
            (now, instance, kind, detail.get("episode"), json.dumps(detail, sort_keys=True, default=str)),
        )
        event_id = int(cur.lastrowid or 0)
        if notify:
            payload = json.dumps(event_document(event_id, now, instance, kind, detail), sort_keys=True, default=str)
            for notifier in notify:
                db.execute(
                    "INSERT INTO outbox (notifier, payload, next_attempt) VALUES (?, ?, ?)", (notifier, payload, now)
                )
        return event_id

    def event(self, instance: str | None, kind: str, notify: tuple[str, ...] = (), **detail: Any) -> int:
        with self._transaction() as db:
            return self.add_event(db, instance, kind, notify, **detail)

    def events(
        self, since_id: int = 0, instance: str | None = None, limit: int = 1000, max_bytes: int | None = None
    ) -> list[dict[str, Any]]:
        """Events after SINCE_ID, oldest first: at most LIMIT of them, and (with MAX_BYTES) no more detail
        text than that (the first event always comes, so paging by `id` always moves on)."""
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [since_id]
        if instance is not None:
            sql += " AND instance = ?"
            args.append(instance)
        out: list[dict[str, Any]] = []
        size = 0
        db = self._connect()
        try:
            for r in db.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)):
                size += len(r["detail"])
                if max_bytes is not None and out and size > max_bytes:
                    break
                out.append(
                    {
                        **json.loads(r["detail"]),
                        "id": r["id"],
                        "ts": r["ts"],
                        "instance": r["instance"],
                        "kind": r["kind"],
                    }
                )
        finally:
            db.close()
        return out

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """Writes that commit together or not at all (the decisions on one webhook delivery)."""
        with self._transaction() as db:
            yield Batch(self, db)

    def ping(self) -> None:
        """Raise unless the journal can be read (the health check)."""
        self._query("SELECT 1")

    # ---- episodes -------------------------------------------------------------------------------
    def fast_path_episode(self, instance: str, detected_from: float, detected_to: float) -> str | None:
        """The latest fast-path episode of INSTANCE detected within [DETECTED_FROM, DETECTED_TO], if any."""
        rows = self._query(
            "SELECT key FROM episodes WHERE instance = ? AND alertname = ? AND received_at BETWEEN ? AND ? "
            "ORDER BY received_at DESC LIMIT 1",
            (instance, FAST_PATH, detected_from, detected_to),
        )
        return str(rows[0]["key"]) if rows else None

    def last_episode(self, instance: str) -> dict[str, Any] | None:
        """The instance's most recently updated episode (key, action, status, result, updated_at)."""
        rows = self._query(
            "SELECT key, action, status, result, updated_at FROM episodes WHERE instance = ? "
            "ORDER BY updated_at DESC LIMIT 1",
            (instance,),
        )
        return dict(rows[0]) if rows else None

    OPEN = ("pending", "running")

    def open_episodes(self, instance: str) -> list[str]:
        """Keys of the instance's pending or running episodes, oldest first."""
        rows = self._query(
            "SELECT key FROM episodes WHERE instance = ? AND status IN ('pending', 'running') ORDER BY received_at",
            (instance,),
        )
        return [r["key"] for r in rows]

    def claim_episode(self, key: str) -> dict[str, Any] | None:
        """Mark a pending (or, after a crash, running) episode running; its row, or None if it is not open."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM episodes WHERE key = ?", (key,)).fetchone()
            if row is None or row["status"] not in self.OPEN:
                return None
            if row["status"] == "running":
                self.add_event(db, row["instance"], "episode_resumed", episode=key, reason="remediator restarted")
            db.execute("UPDATE episodes SET status = 'running', updated_at = ? WHERE key = ?", (time.time(), key))
            return dict(row)

    def finish_episode(self, instance: str, key: str, status: str, result: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE episodes SET status = ?, result = ?, updated_at = ? WHERE key = ?",
                (status, result, time.time(), key),
            )
            self.add_event(db, instance, "episode_" + status, episode=key, result=result)

    @staticmethod
    def _requeue_ended(db: sqlite3.Connection, key: str, now: float) -> bool:
        """Within DB's transaction: make an ended (done, skipped or stopped by an administrator) episode
        pending again; True if it was."""
        return bool(
            db.execute(
                "UPDATE episodes SET status = 'pending', reopened_at = ?, updated_at = ? "
                "WHERE key = ? AND status IN ('done', 'skipped', 'stopped_by_administrator')",
                (now, now, key),
            ).rowcount
        )

    def reopen_episode(self, key: str, reason: str) -> bool:
        """Reopen an ended episode because its instance failed again before the alert could show it."""
        with self._transaction() as db:
            row = db.execute("SELECT instance FROM episodes WHERE key = ?", (key,)).fetchone()
            if row is None or not self._requeue_ended(db, key, time.time()):
                return False
            self.add_event(db, row["instance"], "failed_again", episode=key, reason=reason)
            return True

    def record_action_pgid(self, key: str, pgid: int | None) -> None:
        """The process group of the command acting for KEY right now (None when it ended)."""
        with self._transaction() as db:
            db.execute("UPDATE episodes SET action_pgid = ? WHERE key = ?", (pgid, key))

    def restarts_in_episode(self, instance: str, key: str, since: float = 0.0) -> int:
        """How many actions episode KEY started since SINCE."""
        rows = self._query(
            "SELECT count(*) FROM events WHERE instance = ? AND kind = 'restart_started' AND episode = ? AND ts >= ?",
            (instance, key, since),
        )
        return int(rows[0][0])

    def restart_budget_used(self, instance: str, window: float, armed_at: float) -> tuple[int, float]:
        """Actions started in the current window (since its start or the last re-arm, ARMED_AT), and when
        the last one ended (or started, if it never ended): backoff counts from there."""
        since = max(time.time() - window, armed_at)
        rows = self._query(
            "SELECT sum(kind = 'restart_started'), max(ts) FROM events WHERE instance = ? "
            "AND kind IN ('restart_started', 'restarted', 'restart_failed') AND ts >= ?",
            (instance, since),
        )
        return int(rows[0][0] or 0), float(rows[0][1] or 0.0)

    # ---- instance state -------------------------------------------------------------------------
    def state(self, instance: str) -> InstanceState:
        rows = self._query("SELECT * FROM instance_state WHERE instance = ?", (instance,))
        if not rows:
            return InstanceState(instance)
        r = rows[0]
        return InstanceState(instance, bool(r["suspended"]), r["failed_at"], r["failed_reason"], r["armed_at"])

    @staticmethod
    def _ensure_state(db: sqlite3.Connection, instance: str) -> None:
        db.execute("INSERT OR IGNORE INTO instance_state (instance) VALUES (?)", (instance,))

    def set_suspended(self, instance: str, suspended: bool, who: str, notify: tuple[str, ...] = ()) -> bool:
        """Suspend or resume; resume also clears FAILED and re-arms the restart budget. True if it changed."""
        with self._transaction() as db:
            self._ensure_state(db, instance)
            before = db.execute("SELECT * FROM instance_state WHERE instance = ?", (instance,)).fetchone()
            if suspended:
                db.execute("UPDATE instance_state SET suspended = 1 WHERE instance = ?", (instance,))
                self.add_event(db, instance, "suspended", notify, by=who)
                return not before["suspended"]
            db.execute(
                "UPDATE instance_state SET suspended = 0, failed_at = NULL, failed_reason = NULL, armed_at = ? "
                "WHERE instance = ?",
                (time.time(), instance),
            )
            self.add_event(db, instance, "resumed", notify, by=who, was_failed=before["failed_at"] is not None)
            return bool(before["suspended"]) or before["failed_at"] is not None

    def prune(self, older_than: float) -> dict[str, int]:
        """Delete history older than OLDER_THAN seconds: events, finished episodes, delivered KSYS rows.

        Pending or running episodes and undelivered notifications are kept whatever their age: they
        are work, not history. Returns how many rows went from each table.
        """
        cutoff = time.time() - older_than
        with self._transaction() as db:
            counts = {
                "events": db.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount,
                "episodes": db.execute(
                    "DELETE FROM episodes WHERE updated_at < ? AND status NOT IN ('pending', 'running')", (cutoff,)
                ).rowcount,
                "outbox": db.execute(
                    "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?", (cutoff,)
                ).rowcount,
            }
        return counts

    def _set_failed(self, db: sqlite3.Connection, instance: str, reason: str) -> None:
        self._ensure_state(db, instance)
        db.execute(
            "UPDATE instance_state SET failed_at = ?, failed_reason = ? WHERE instance = ?",
            (time.time(), reason, instance),
        )

    def mark_failed(self, instance: str, why: str, escalate: tuple[str, ...] | None, **detail: Any) -> bool:
        """FAILED because of WHY, with a `failed` event; with ESCALATE (the KSYS notifiers) an `escalated`
        event for them too.

        Once only: False when the instance already is FAILED, so KSYS hears of one failure once.
        """
        with self._transaction() as db:
            row = db.execute("SELECT failed_at FROM instance_state WHERE instance = ?", (instance,)).fetchone()
            if row is not None and row["failed_at"] is not None:
                return False
            self._set_failed(db, instance, why)
            self.add_event(db, instance, "failed", **detail)
            if escalate is not None:
                self.add_event(db, instance, "escalated", escalate, **detail)
            return True

    # ---- KSYS outbox ----------------------------------------------------------------------------
    def due_deliveries(self, notifiers: tuple[str, ...], limit: int) -> list[Delivery]:
        """Undelivered notifications for NOTIFIERS whose next attempt is due, oldest first."""
        if not notifiers:
            return []
        marks = ", ".join("?" for _ in notifiers)
        rows = self._query(
            f"SELECT id, notifier, payload, attempts FROM outbox WHERE delivered_at IS NULL AND next_attempt <= ? "
            f"AND notifier IN ({marks}) ORDER BY id LIMIT ?",
            (time.time(), *notifiers, limit),
        )
        return [Delivery(r["id"], r["notifier"], r["payload"], r["attempts"]) for r in rows]

    def delivery_done(self, delivery: Delivery, error: str | None, retry_in: float) -> None:
        """Record one attempt: delivered (ERROR None) or failed, to be retried in RETRY_IN seconds."""
        attempts = delivery.attempts + 1
        with self._transaction() as db:
            if error is None:
                db.execute(
                    "UPDATE outbox SET delivered_at = ?, attempts = ?, last_error = NULL WHERE id = ?",
                    (time.time(), attempts, delivery.id),
                )
                self.add_event(db, None, "ksys_delivered", notifier=delivery.notifier, outbox=delivery.id)
                return
            db.execute(
                "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                (attempts, time.time() + retry_in, error, delivery.id),
            )
            self.add_event(
                db, None, "ksys_failed", notifier=delivery.notifier, outbox=delivery.id, error=error,
                attempt=attempts, retry_in=retry_in,
            )  # fmt: skip

    def expire_failed(self, instance: str, window: float) -> bool:
        """Re-arm an instance whose FAILED state is older than WINDOW; True if it did."""
        st = self.state(instance)
        if st.failed_at is None or st.failed_within(window):
            return False
        with self._transaction() as db:
            current = db.execute("SELECT failed_at FROM instance_state WHERE instance = ?", (instance,)).fetchone()
            if current is None or current["failed_at"] != st.failed_at:
                return False
            self._clear_failed(db, instance)
            self.add_event(db, instance, "rearmed", reason=f"restart window of {window:g}s passed since FAILED")
        return True

    def _clear_failed(self, db: sqlite3.Connection, instance: str) -> None:
        db.execute(
            "UPDATE instance_state SET failed_at = NULL, failed_reason = NULL, armed_at = ? WHERE instance = ?",
            (time.time(), instance),
        )


class EpisodeOpened(enum.Enum):
    """What a firing delivery did to its episode (fingerprint + startsAt)."""

    NEW = "new"  # first delivery: a pending episode
    REQUEUED = "requeued"  # the episode had ended (done, skipped): pending again, to be re-probed
    IN_PROGRESS = "in_progress"  # pending, running or failed: a duplicate


@dataclass(frozen=True)
class Delivery:
    """One notification owed to a KSYS notifier."""

    id: int
    notifier: str
    payload: str
    attempts: int


class Batch:
    """The journal's writes inside one transaction (``Journal.batch``)."""

    def __init__(self, journal: Journal, db: sqlite3.Connection) -> None:
        self._journal, self._db = journal, db

    def add_event(self, instance: str | None, kind: str, notify: tuple[str, ...] = (), **detail: Any) -> int:
        return self._journal.add_event(self._db, instance, kind, notify, **detail)

    def open_episode(
        self, key: str, instance: str, alertname: str, action: str, starts_at: float | None
    ) -> EpisodeOpened:
        """Record a firing alert's episode: new, requeued (it had ended), or already in progress."""
        now = time.time()
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO episodes (key, instance, alertname, action, status, starts_at, received_at, "
            "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
            (key, instance, alertname, action, starts_at, now, now),
        ).rowcount
        if inserted:
            return EpisodeOpened.NEW
        if self._journal._requeue_ended(self._db, key, now):
            return EpisodeOpened.REQUEUED
        return EpisodeOpened.IN_PROGRESS


EVENT_SCHEMA = "pgmedic.event/v1"


def event_document(event_id: int, ts: float, instance: str | None, kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The JSON sent to KSYS notifiers (documented in docs/ksys.md)."""
    return {
        "schema": EVENT_SCHEMA,
        "id": event_id,
        "event": kind,
        "instance": instance,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
        "host": socket.gethostname(),
        "detail": detail,
    }


def ensure_state_dir(state_dir: str, group: str | None = None) -> None:
    """Create STATE_DIR private (0700, 0750 with the group); refuse one that others can write."""
    problem = private_dir_problem(state_dir)
    if problem:
        raise ConfigError(state_dir, "remediator.state_dir", problem.removeprefix(f"{state_dir}: "))
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir, exist_ok=True)
        os.chmod(state_dir, 0o750 if group else 0o700)
        if group:
            os.chown(state_dir, -1, grp.getgrnam(group).gr_gid)


def open_journal(state_dir: str, *, create: bool = True, group: str | None = None) -> Journal | None:
    """The journal in STATE_DIR; with create=False, None when there is none yet (read-only callers)."""
    if not create and not os.path.exists(os.path.join(state_dir, JOURNAL_FILE)):
        return None
    return Journal(state_dir, group)
