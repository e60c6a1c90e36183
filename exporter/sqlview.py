"""What one fresh SQL connection tells per scrape; every query isolated so one failure costs only itself.

Runs in a worker thread under the scrape's deadline. The connection is opened anew each scrape
(pg_up must mean "a client can connect now") and closed at once; statement_timeout and lock_timeout
bound every query on the server side too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
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
    "port",
)
_UNIT_BYTES = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

# One scan of pg_stat_activity gives both the counts and the oldest transaction per state.
ACTIVITY_SQL = """
SELECT datname, state, count(*), max(extract(epoch FROM clock_timestamp() - xact_start))
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND state IS NOT NULL
GROUP BY 1, 2
"""
# current_setting() is ten times cheaper than the pg_settings view; it renders values with units.
SETTINGS_SQL = (
    "SELECT current_setting('server_version'), current_setting('server_version_num')::int, pg_is_in_recovery(), "
    + ", ".join(f"current_setting('{name}')" for name in SETTINGS if name != "primary_conninfo")
)
_VALUE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*(B|kB|MB|GB|TB)?$")


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
    errors: dict[str, str] = field(default_factory=dict)

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
    cfg: InstanceConfig, pid_file: PidFile | None, timeout: float, on_connected: Callable[[int | None], None]
) -> SqlFacts:
    """Connect, SELECT 1, then each query in turn; never raises.

    ON_CONNECTED gets this connection's backend pid (None if the connection failed) as soon as the
    attempt ends, so the OS view can leave the exporter's own backend out of its counts.
    """
    facts = SqlFacts()
    try:
        conn = connect(cfg, pid_file, timeout)
    except Exception as exc:
        facts.errors["connection"] = first_line(exc)
        on_connected(None)
        return facts
    on_connected(conn.info.backend_pid)
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
    row = conn.execute(SETTINGS_SQL).fetchone()
    facts.version, facts.version_num, facts.in_recovery = row[0].split()[0], row[1], row[2]
    names = [name for name in SETTINGS if name != "primary_conninfo"]
    facts.settings = dict(zip(names, row[3:], strict=True))
    if facts.in_recovery:  # readable only with pg_read_all_settings; needed only on a standby
        facts.settings["primary_conninfo"] = conn.execute("SELECT current_setting('primary_conninfo')").fetchone()[0]


def _activity(conn: Any, facts: SqlFacts) -> None:
    facts.databases = [
        r[0]
        for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
    ]
    for datname, state, count, oldest in conn.execute(ACTIVITY_SQL):
        facts.activity.append((datname or "", state, int(count)))
        if oldest is not None:
            facts.max_tx[state] = max(facts.max_tx.get(state, 0.0), float(oldest))
