"""What SQL tells per scrape; every query isolated so one failure costs only itself.

Runs in a worker thread under the scrape's deadline. A connection is opened anew each scrape and runs
SELECT 1 (pg_up must mean "a client can connect now"); the statistics come over the instance's
long-lived session (StatsSession) in one pipelined round trip, each statement in its own implicit
transaction, sent as soon as the fresh connection is up so both run at once. The client gives up at
the deadline, and statement_timeout and lock_timeout bound every statement on the server side too.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from psycopg import pq
from psycopg.pq.abc import PGconn

from pgmedic import workers
from pgmedic.config import InstanceConfig
from pgmedic.connection import APPLICATION_NAME, first_line, open_pgconn, wait_socket
from pgmedic.pidfile import PidFile

# The settings the collectors read, and every setting the worker table decides by (primary_conninfo
# has its own statement). A setting a version lacks reads as NULL and is left out.
SETTINGS = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",  # PostgreSQL 16+
    "work_mem",
    "maintenance_work_mem",
    "temp_buffers",
    "shared_buffers",
    "port",
    "autovacuum_freeze_max_age",
    "autovacuum_multixact_freeze_max_age",
    *workers.SETTINGS,
)
_UNIT_BYTES = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

# One scan of the function behind pg_stat_activity gives both the counts and the oldest transaction per
# state. It is sent before this scrape's fresh connection exists, so backends named like the exporter's
# come back one per row (their pid in the last column): the fresh one, if it was already there, is
# left out afterwards. So do backends that may have run since the previous scrape's scan ($1, an epoch,
# or NULL): not idle, or idle since then. The process walk reads only those (and every other process of the
# postmaster) each scrape; see exporter/tracker.py. A process this role may not see (NULL type) comes back
# as HIDDEN: the visit then names none, and every backend is read. The sixth column counts the sessions
# waiting on a heavyweight lock (see Statement.lock_waits_only). A client still starting has a NULL
# state: not counted (it is no session yet), and new to the walk anyway. The view would join pg_database and pg_authid
# per row and, in a brand-new backend, load its rewrite rules first: the function alone halves the cost.
# Database names come from DATABASES_SQL.
HIDDEN = "<hidden>"  # the state of a backend this role may not see
ACTIVITY_SQL = f"""
SELECT datid, coalesce(state, CASE WHEN backend_type IS NULL THEN '{HIDDEN}' END), count(*),
       max(extract(epoch FROM clock_timestamp() - xact_start)),
       CASE WHEN application_name = '{APPLICATION_NAME}' OR state IS DISTINCT FROM 'idle'
                 OR state_change >= to_timestamp($1::float8) THEN pid END,
       count(*) FILTER (WHERE wait_event_type = 'Lock')
FROM pg_stat_get_activity(NULL)
WHERE (backend_type = 'client backend' OR backend_type IS NULL) AND pid <> pg_backend_pid()
GROUP BY 1, 2, 5
"""
# How far before the previous scan was sent the next one looks for backends that went idle (seconds):
# the same host's clock, so only the time between sending and the server's scan needs covering.
BUSY_MARGIN = 0.25
# The transaction ID and multixact ages of every database (templates too: wraparound stops them all).
DATABASES_SQL = (
    "SELECT oid, datname, datallowconn AND NOT datistemplate, age(datfrozenxid), mxid_age(datminmxid) FROM pg_database"
)
# current_setting() is ten times cheaper than the pg_settings view; it renders values with units.
# missing_ok (true) turns a setting this version lacks into NULL instead of failing the whole query.
SETTINGS_SQL = (
    "SELECT current_setting('server_version'), current_setting('server_version_num')::int, pg_is_in_recovery(), "
    + ", ".join(f"current_setting('{name}', true)" for name in SETTINGS if name != "primary_conninfo")
)
_VALUE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*(B|kB|MB|GB|TB)?$")


Rows = list[tuple[str | None, ...]]


@dataclass(frozen=True)
class Statement:
    """A collector's own statement in the per-scrape pipeline, for server versions SINCE <= v < UNTIL.

    The version table: a collector lists one Statement per version range under the same name (for
    example the checkpoint counters, in pg_stat_bgwriter before 17 and pg_stat_checkpointer since),
    and the visit picks those matching the server it reached (libpq knows its version at connect).
    """

    name: str
    sql: str
    since: int = 0
    until: int = 10**7
    # Sent only while sessions wait on locks: when the previous activity scan saw one waiting (or
    # there was no previous scan). For pg_locks, which visits every backend's fast-path lock slots: with
    # a thousand clients it costs the server as much as the activity scan, and it is nearly always empty.
    lock_waits_only: bool = False

    def applies_to(self, version_num: int) -> bool:
        return self.since <= version_num < self.until


@dataclass
class SqlFacts:
    """The outcome of one SQL visit; ``errors`` maps a collector name to why it failed."""

    up: bool = False
    taken_at: float = field(default_factory=time.time)
    version: str | None = None
    version_num: int | None = None
    in_recovery: bool | None = None
    settings: dict[str, str] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    activity: list[tuple[str, str, int]] = field(default_factory=list)
    max_tx: dict[str, float] = field(default_factory=dict)
    # datname -> (age of datfrozenxid, age of datminmxid)
    database_ages: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # The rows (or the error) of each collector's own statements (see Statement), by statement name.
    results: dict[str, Rows | str] = field(default_factory=dict)
    # Client backends that may have run since the previous scan (see ACTIVITY_SQL); None: not known.
    busy: set[int] | None = None
    # Sessions waiting on a heavyweight lock at this scan; None: not known.
    lock_waiters: int | None = None

    def setting_bytes(self, name: str) -> float | None:
        """A memory setting as rendered by current_setting ("4MB", "16kB") in bytes."""
        match = _VALUE.match(self.settings.get(name, ""))
        return float(match.group(1)) * _UNIT_BYTES[match.group(2) or "B"] if match else None

    def setting_number(self, name: str) -> float | None:
        match = _VALUE.match(self.settings.get(name, ""))
        return float(match.group(1)) if match and not match.group(2) else None

    def setting(self, name: str) -> str | None:
        return self.settings.get(name)

    def setting_on(self, name: str) -> bool | None:
        value = self.settings.get(name)
        return None if value is None else value in ("on", "always", "true")


class StatsSession:
    """The long-lived connection an instance's statistics are read over, between scrapes.

    The fresh connection of each scrape decides pg_up; it only has to prove that a client can connect
    and run a query. The statistics (settings, activity, the collectors' statements) come over this
    session instead: its backend's catalog caches stay warm, where a fresh backend must load them for
    every scrape (most of the PostgreSQL CPU a scrape cost). It is dropped whenever it fails, runs past
    a deadline or the fresh connection is refused (a smart shutdown waits for every session to end), and
    opened again at the next scrape that needs it. Used by one SQL visit at a time (single flight).
    """

    def __init__(self) -> None:
        self.pgconn: PGconn | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Wall time (epoch) the activity scan now in flight was sent, and the one before it that answered.
        self.sent_at: float | None = None
        self.scanned_since: float | None = None
        self.lock_waiters: int | None = None  # at the latest scan that answered; None: unknown

    @property
    def backend_pid(self) -> int | None:
        return self.pgconn.backend_pid if self.pgconn is not None else None

    @property
    def is_open(self) -> bool:
        return self.pgconn is not None and self.pgconn.status == pq.ConnStatus.OK

    def ensure(self, cfg: InstanceConfig, pid_file: PidFile | None, deadline: float) -> PGconn:
        """The open session, opened now if there is none (or it broke)."""
        if self.pgconn is not None and self.pgconn.status != pq.ConnStatus.OK:
            self.drop()
        if self.pgconn is None:
            self.pgconn = open_pgconn(cfg, pid_file, deadline)
        return self.pgconn

    def drop(self) -> None:
        if self.pgconn is not None:
            self.pgconn.finish()
            self.pgconn = None

    def __enter__(self) -> StatsSession:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._closed:
            self.drop()
        self._lock.release()

    def close(self) -> None:
        """Drop the session now, or (a visit is using it) as soon as that visit ends; never reopened."""
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                self.drop()
            finally:
                self._lock.release()


def fetch(
    cfg: InstanceConfig,
    pid_file: PidFile | None,
    timeout: float,
    on_connected: Callable[[list[int]], None],
    session: StatsSession,
    extra: Sequence[Statement] = (),
    meanwhile: Callable[[], None] | None = None,
) -> SqlFacts:
    """A fresh connection and SELECT 1 (pg_up), and sqlview's queries plus the EXTRA statements for this
    server's version in one pipelined round trip over SESSION; never raises.

    The statistics are sent first, so the server runs them while the fresh connection is being made
    (the activity counts leave the fresh backend out afterwards, by pid). ON_CONNECTED gets the fresh
    backend's pid (none if the connection failed) as soon as it is known, so the OS view can leave it
    out of its counts. The session's backend is counted there: it holds a connection slot like any
    client, and PostgresConnectionsExhausted compares slots in use with the limit. MEANWHILE, if given,
    runs once the fresh connection's startup packet is sent (the server forks and authenticates the
    backend in the meantime): the caller's other work, in this thread; the statistics are then sent
    after it, so the server's work and the caller's overlap rather than all three competing at once.
    """
    deadline = time.monotonic() + timeout
    facts = SqlFacts()
    with session:
        statements: dict[str, str] | None = None

        def send_early() -> None:
            nonlocal statements
            if session.is_open:  # never opened before the fresh connection: pg_up must not wait for it
                try:
                    statements = _send_statistics(session, cfg, pid_file, extra, deadline)
                except Exception as exc:  # opened again after the fresh connection
                    session.drop()
                    facts.errors["session"] = first_line(exc)

        def then_send() -> None:
            try:
                meanwhile()  # type: ignore[misc]  # only given to open_pgconn when set
            finally:
                send_early()

        if meanwhile is None:
            send_early()
        try:
            fresh = open_pgconn(cfg, pid_file, deadline, then_send if meanwhile else None)
        except Exception as exc:
            facts.errors["connection"] = first_line(exc)
            session.drop()  # refused (full, stopping, starting): hold no connection meanwhile
            on_connected([])
            return facts
        try:
            return _visit(cfg, pid_file, fresh, session, statements, extra, deadline, facts, on_connected)
        finally:
            fresh.finish()


def _send_statistics(
    session: StatsSession, cfg: InstanceConfig, pid_file: PidFile | None, extra: Sequence[Statement], deadline: float
) -> dict[str, str]:
    """Open the session if needed and send every statement for this server's version; them, in order."""
    stats = session.ensure(cfg, pid_file, deadline)
    wanted = [
        s for s in extra if s.applies_to(stats.server_version) and not (s.lock_waits_only and session.lock_waiters == 0)
    ]
    statements = {**STATEMENTS, **{s.name: s.sql for s in wanted}}
    since = None if session.scanned_since is None else str(session.scanned_since - BUSY_MARGIN).encode()
    session.sent_at = time.time()
    send_isolated(stats, [(sql, [since] if name == "activity" else None) for name, sql in statements.items()])
    return statements


def _visit(
    cfg: InstanceConfig,
    pid_file: PidFile | None,
    fresh: PGconn,
    session: StatsSession,
    statements: dict[str, str] | None,
    extra: Sequence[Statement],
    deadline: float,
    facts: SqlFacts,
    on_connected: Callable[[list[int]], None],
) -> SqlFacts:
    """pg_up from the fresh connection first, whatever the session does; then the statistics."""
    try:
        send_isolated(fresh, [(PROBE_SQL, None)])
        on_connected([fresh.backend_pid])
        (probe,) = receive_isolated(fresh, 1, deadline)
    except Exception as exc:  # the fresh connection failed, or the deadline passed
        probe = first_line(exc)
    if isinstance(probe, str):
        facts.errors["connection"] = probe
        session.drop()
        return facts
    facts.up = True
    own = [s for s in extra if s.applies_to(fresh.server_version)]
    results = _receive_statistics(session, cfg, pid_file, statements, extra, deadline, facts)
    if results is None:
        return _failed_all(facts, own)
    facts.results = {s.name: results[s.name] for s in own if s.name in results}  # lock_waits_only: maybe not sent
    _step(facts, "settings", lambda: _settings(facts, results["settings"], results["primary_conninfo"]))
    own_pid = str(fresh.backend_pid)
    _step(facts, "activity", lambda: _activity(facts, results["databases"], results["activity"], own_pid))
    if facts.busy is not None:  # the next scan looks back to this one
        session.scanned_since = session.sent_at
    session.lock_waiters = facts.lock_waiters
    return facts


def _receive_statistics(
    session: StatsSession,
    cfg: InstanceConfig,
    pid_file: PidFile | None,
    statements: dict[str, str] | None,
    extra: Sequence[Statement],
    deadline: float,
    facts: SqlFacts,
) -> dict[str, Rows | str] | None:
    """The statistics sent early (STATEMENTS), or sent now over a session opened now; None if they could
    not be had by the deadline. A session the server dropped (a restart) is replaced once."""
    for attempt in (1, 2):
        try:
            if statements is None:
                statements = _send_statistics(session, cfg, pid_file, extra, deadline)
            assert session.pgconn is not None
            received = receive_isolated(session.pgconn, len(statements), deadline)
            facts.errors.pop("session", None)
            return dict(zip(statements, received, strict=True))
        except Exception as exc:
            broken = session.pgconn is not None and session.pgconn.status == pq.ConnStatus.BAD
            session.drop()
            statements = None
            facts.errors["session"] = first_line(exc)
            if not broken or isinstance(exc, TimeoutError) or attempt == 2:
                break
    return None


def _failed_all(facts: SqlFacts, own: Sequence[Statement]) -> SqlFacts:
    """Every statistic unavailable this scrape, for the reason the session gave."""
    reason = facts.errors.get("session", "no statistics session")
    facts.results = {s.name: reason for s in own}
    for step in ("settings", "activity"):
        facts.errors[step] = reason
    return facts


# pg_up's own query, on the fresh connection.
PROBE_SQL = "SELECT 1"
STATEMENTS = {
    "settings": SETTINGS_SQL,
    # Readable only with pg_read_all_settings, and needed only on a standby: its own statement.
    "primary_conninfo": "SELECT current_setting('primary_conninfo')",
    "databases": DATABASES_SQL,
    "activity": ACTIVITY_SQL,
}


def run_isolated(pgconn: PGconn, statements: list[str], deadline: float) -> list[Rows | str]:
    """Run STATEMENTS in one round trip, each in its own implicit transaction; rows (text) or an error each."""
    send_isolated(pgconn, [(sql, None) for sql in statements])
    return receive_isolated(pgconn, len(statements), deadline)


def send_isolated(pgconn: PGconn, statements: list[tuple[str, list[bytes | None] | None]]) -> None:
    """Send STATEMENTS (with their parameters) in one round trip, each in its own implicit transaction.

    libpq's pipeline mode with a Sync after every statement: the server runs them back to back and
    a failing one aborts only itself. Paying one network round trip and one Python wake-up for all of
    them instead of one per statement saves about half a millisecond per scrape (bench/scrape.py).
    Sending never waits for the server: the whole pipeline fits the socket's buffer.
    """
    pgconn.enter_pipeline_mode()
    for sql, params in statements:
        pgconn.send_query_params(sql.encode(), params)
        pgconn.pipeline_sync()
    while pgconn.flush():
        wait_socket(pgconn.socket, time.monotonic() + 1.0, write=True)


def receive_isolated(pgconn: PGconn, count: int, deadline: float) -> list[Rows | str]:
    """The rows (text) or the error of each of the COUNT statements send_isolated sent; leaves pipeline mode."""
    out: list[Rows | str] = []
    current: Rows | str | None = None
    while len(out) < count:
        while pgconn.is_busy():
            wait_socket(pgconn.socket, deadline)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            continue  # the end of one statement's results
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            out.append(current if current is not None else "no result")
            current = None
        elif result.status == pq.ExecStatus.TUPLES_OK:
            current = [
                tuple(None if (v := result.get_value(r, c)) is None else v.decode() for c in range(result.nfields))
                for r in range(result.ntuples)
            ]
        elif current is None:
            error = result.error_message.decode(errors="replace").strip().splitlines()
            current = error[0] if error else f"statement failed ({pq.ExecStatus(result.status).name})"
    pgconn.exit_pipeline_mode()
    return out


def _step(facts: SqlFacts, name: str, step: Callable[[], None]) -> None:
    try:
        step()
    except Exception as exc:
        facts.errors[name] = first_line(exc)


def _rows(result: Rows | str) -> Rows:
    if isinstance(result, str):
        raise RuntimeError(result)
    return result


def _settings(facts: SqlFacts, result: Rows | str, primary_conninfo: Rows | str) -> None:
    row = _rows(result)[0]
    facts.version, facts.version_num, facts.in_recovery = (row[0] or "").split()[0], int(row[1] or 0), row[2] == "t"
    names = [name for name in SETTINGS if name != "primary_conninfo"]
    facts.settings = {name: value for name, value in zip(names, row[3:], strict=True) if value is not None}
    if facts.in_recovery:
        facts.settings["primary_conninfo"] = _rows(primary_conninfo)[0][0] or ""


def _activity(facts: SqlFacts, databases: Rows | str, activity: Rows | str, fresh_pid: str) -> None:
    """Counts by database and state, without this scrape's fresh backend (FRESH_PID) if the scan saw it."""
    names: dict[str | None, str] = {}
    for oid, datname, connectable, xid_age, mxid_age in _rows(databases):
        names[oid] = datname or ""
        if connectable == "t":
            facts.databases.append(datname or "")
        facts.database_ages[datname or ""] = (int(xid_age or 0), int(mxid_age or 0))
    facts.databases.sort()
    counts: dict[tuple[str, str], int] = {}
    busy: set[int] | None = set()
    waiting = 0
    for datid, state, count, oldest, pid, lock_waits in _rows(activity):
        if state == HIDDEN:  # a backend this role may not see: no hint this time
            busy = None
            continue
        if state is None:  # a client still starting: no session to count yet
            continue
        if pid is not None and busy is not None:
            busy.add(int(pid))
        if pid == fresh_pid:
            continue
        waiting += int(lock_waits or 0)
        key = (names.get(datid, ""), state)
        counts[key] = counts.get(key, 0) + int(count or 0)
        if oldest is not None:
            facts.max_tx[state] = max(facts.max_tx.get(state, 0.0), float(oldest))
    facts.activity = [(datname, state, n) for (datname, state), n in counts.items()]
    facts.busy = busy
    facts.lock_waiters = waiting
