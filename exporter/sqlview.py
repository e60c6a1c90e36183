"""What one fresh SQL connection tells per scrape; every query isolated so one failure costs only itself.

Runs in a worker thread under the scrape's deadline. The connection is opened anew each scrape
(pg_up must mean "a client can connect now") and closed at once; statement_timeout and lock_timeout
bound every query on the server side too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pgmedic.config import InstanceConfig
from pgmedic.connection import connect, first_line
from pgmedic.pidfile import PidFile

SETTINGS = (
    "max_connections",
    "superuser_reserved_connections",
    "work_mem",
    "maintenance_work_mem",
    "temp_buffers",
    "shared_buffers",
    "logging_collector",
    "autovacuum",
    "archive_mode",
    "max_logical_replication_workers",
    "primary_conninfo",
    "data_directory",
    "port",
)
_UNIT_BYTES = {"B": 1, "kB": 1024, "8kB": 8192, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

ACTIVITY_SQL = """
SELECT datname, state, count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state IS NOT NULL
GROUP BY 1, 2
"""
TX_SQL = """
SELECT state, max(extract(epoch FROM clock_timestamp() - xact_start))
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND state IS NOT NULL
GROUP BY 1
"""


@dataclass
class SqlFacts:
    """The outcome of one SQL visit; ``errors`` maps a collector name to why it failed."""

    up: bool = False
    taken_at: float = field(default_factory=time.time)
    version: str | None = None
    version_num: int | None = None
    in_recovery: bool | None = None
    settings: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    activity: list[tuple[str, str, int]] = field(default_factory=list)
    max_tx: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def setting_bytes(self, name: str) -> float | None:
        value, unit = self.settings.get(name, (None, None))
        if value is None:
            return None
        return float(value) * _UNIT_BYTES.get(unit or "B", 1)

    def setting_number(self, name: str) -> float | None:
        value, _ = self.settings.get(name, (None, None))
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def setting_on(self, name: str) -> bool | None:
        value, _ = self.settings.get(name, (None, None))
        return None if value is None else value in ("on", "always", "true")


def fetch(cfg: InstanceConfig, pid_file: PidFile | None, timeout: float) -> SqlFacts:
    """Connect, SELECT 1, then each query in turn; never raises."""
    facts = SqlFacts()
    try:
        conn = connect(cfg, pid_file, timeout)
    except Exception as exc:
        facts.errors["connection"] = first_line(exc)
        return facts
    with conn:
        try:
            conn.execute("SELECT 1").fetchone()
            facts.up = True
        except Exception as exc:
            facts.errors["connection"] = first_line(exc)
            return facts
        _run(facts, "settings", lambda: _settings(conn, facts))
        _run(facts, "activity", lambda: _activity(conn, facts))
    return facts


def _run(facts: SqlFacts, name: str, step: Any) -> None:
    try:
        step()
    except Exception as exc:
        facts.errors[name] = first_line(exc)


def _settings(conn: Any, facts: SqlFacts) -> None:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, pg_is_in_recovery()"
    ).fetchone()
    facts.version, facts.version_num, facts.in_recovery = row[0].split()[0], row[1], row[2]
    for name, setting, unit in conn.execute(
        "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (list(SETTINGS),)
    ):
        facts.settings[name] = (setting, unit)


def _activity(conn: Any, facts: SqlFacts) -> None:
    facts.databases = [
        r[0]
        for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
    ]
    facts.activity = [(r[0] or "", r[1], int(r[2])) for r in conn.execute(ACTIVITY_SQL)]
    facts.max_tx = {r[0]: float(r[1] or 0) for r in conn.execute(TX_SQL)}
