"""What one fresh SQL connection tells per scrape; every query isolated so one failure costs only itself.

Runs in a worker thread under the scrape's deadline. The connection is opened anew each scrape
(pg_up must mean "a client can connect now") and closed at once; its statements go in one pipelined
round trip, each in its own implicit transaction. The client gives up at the deadline, and
statement_timeout and lock_timeout bound every statement on the server side too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from psycopg import pq
from psycopg.pq.abc import PGconn

from pgmedic import workers
from pgmedic.config import InstanceConfig
from pgmedic.connection import first_line, open_pgconn, wait_socket
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
# state. The view would join pg_database and pg_authid per row and, in a brand-new backend, load its
# rewrite rules first: the function alone halves the cost. Database names come from DATABASES_SQL.
ACTIVITY_SQL = """
SELECT datid, state, count(*), max(extract(epoch FROM clock_timestamp() - xact_start))
FROM pg_stat_get_activity(NULL)
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state IS NOT NULL
GROUP BY 1, 2
"""
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


def fetch(
    cfg: InstanceConfig,
    pid_file: PidFile | None,
    timeout: float,
    on_connected: Callable[[int | None], None],
    extra: Sequence[Statement] = (),
) -> SqlFacts:
    """Connect, then SELECT 1, every query of this module and the EXTRA statements (those for this
    server's version) in one pipelined round trip; never raises.

    ON_CONNECTED gets this connection's backend pid (None if the connection failed) as soon as the
    attempt ends, so the OS view can leave the exporter's own backend out of its counts.
    """
    deadline = time.monotonic() + timeout
    facts = SqlFacts()
    try:
        pgconn = open_pgconn(cfg, pid_file, deadline)
    except Exception as exc:
        facts.errors["connection"] = first_line(exc)
        on_connected(None)
        return facts
    on_connected(pgconn.backend_pid)
    own = [s for s in extra if s.applies_to(pgconn.server_version)]
    statements = {**STATEMENTS, **{s.name: s.sql for s in own}}
    try:
        results = dict(zip(statements, run_isolated(pgconn, list(statements.values()), deadline), strict=True))
    except Exception as exc:  # the connection itself failed (or the deadline passed)
        facts.errors["connection"] = first_line(exc)
        return facts
    finally:
        pgconn.finish()
    if isinstance(results["connection"], str):
        facts.errors["connection"] = results["connection"]
        return facts
    facts.up = True
    facts.results = {s.name: results[s.name] for s in own}
    _step(facts, "settings", lambda: _settings(facts, results["settings"], results["primary_conninfo"]))
    _step(facts, "activity", lambda: _activity(facts, results["databases"], results["activity"]))
    return facts


STATEMENTS = {
    "connection": "SELECT 1",
    "settings": SETTINGS_SQL,
    # Readable only with pg_read_all_settings, and needed only on a standby: its own statement.
    "primary_conninfo": "SELECT current_setting('primary_conninfo')",
    "databases": DATABASES_SQL,
    "activity": ACTIVITY_SQL,
}


def run_isolated(pgconn: PGconn, statements: list[str], deadline: float) -> list[Rows | str]:
    """Run STATEMENTS in one round trip, each in its own implicit transaction; rows (text) or an error each.

    libpq's pipeline mode with a Sync after every statement: the server runs them back to back and
    a failing one aborts only itself. Cold catalog caches make every first query of a fresh backend
    slow; paying one network round trip and one Python wake-up for all of them instead of one per
    statement saves about half a millisecond per scrape (bench/scrape.py).
    """
    pgconn.enter_pipeline_mode()
    for sql in statements:
        pgconn.send_query_params(sql.encode(), None)
        pgconn.pipeline_sync()
    while pgconn.flush():
        wait_socket(pgconn.socket, deadline, write=True)
    out: list[Rows | str] = []
    current: Rows | str | None = None
    while len(out) < len(statements):
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


def _activity(facts: SqlFacts, databases: Rows | str, activity: Rows | str) -> None:
    names: dict[str | None, str] = {}
    for oid, datname, connectable, xid_age, mxid_age in _rows(databases):
        names[oid] = datname or ""
        if connectable == "t":
            facts.databases.append(datname or "")
        facts.database_ages[datname or ""] = (int(xid_age or 0), int(mxid_age or 0))
    facts.databases.sort()
    for datid, state, count, oldest in _rows(activity):
        facts.activity.append((names.get(datid, ""), state or "", int(count or 0)))
        if oldest is not None and state is not None:
            facts.max_tx[state] = max(facts.max_tx.get(state, 0.0), float(oldest))
