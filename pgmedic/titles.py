"""Classify PostgreSQL processes by their process title (PostgreSQL 9.6 to 18).

Titles look like ``postgres: [CLUSTER: ]WHAT``. Up to 10 the background workers said ``… process``
("writer process", "wal writer process"); from 11 they use the backend type names ("background
writer", "walwriter"). Client backends are ``USER DATABASE HOST ACTIVITY`` where HOST is ``[local]``
or ``addr(port)``. The first matching rule wins, so workers are tried before the client pattern.
"""

from __future__ import annotations

import re

# Backend types pg_processes always reports (zero-filled), on top of the background workers of
# pgmedic.workers.
COMMON_BACKEND_TYPES = (
    "client_backend",
    "autovacuum_worker",
    "parallel_worker",
    "walsender",
    "background_worker",
)

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("logger", r"^(logger|syslogger)( process)?$"),
        ("checkpointer", r"^checkpointer( process)?\b"),
        ("background_writer", r"^(background writer|writer process)\b"),
        ("walwriter", r"^(walwriter|wal writer process)\b"),
        ("autovacuum_launcher", r"^autovacuum launcher( process)?\b"),
        ("autovacuum_worker", r"^autovacuum worker\b"),
        ("archiver", r"^archiver( process)?\b"),
        ("stats_collector", r"^stats collector( process)?\b"),
        ("logical_replication_launcher", r"^(bgworker: )?logical replication launcher\b"),
        ("logical_replication_worker", r"^(bgworker: )?logical replication (\w+ )?worker\b"),
        ("parallel_worker", r"^(bgworker: )?parallel worker for PID\b"),
        ("startup", r"^startup( process)?\b"),
        ("walreceiver", r"^(walreceiver|wal receiver process)\b"),
        ("walsender", r"^(walsender|wal sender process)\b"),
        ("walsummarizer", r"^walsummarizer\b"),
        ("slotsync_worker", r"^slotsync worker\b"),
        ("io_worker", r"^io worker\b"),
        ("client_backend", r"^\S+ \S+ (\[local\]|\S+\(\d+\))( |$)"),
    )
)
_CLUSTER_PREFIX = re.compile(r"^[^\s:]+: ")


def classify_title(title: str) -> str | None:
    """Return the backend type for a child's title, or None when the title is not a PostgreSQL one.

    A title that is PostgreSQL's but matches no rule is a custom background worker (from 11 its
    title is just its bgw_type), reported as ``background_worker``.
    """
    if not title.startswith("postgres: "):
        # Before it sets its title a fresh fork still shows the postmaster's command line.
        return None
    body = title[len("postgres: ") :].strip()
    kind = _match(body)
    if kind is None and (prefix := _CLUSTER_PREFIX.match(body)):
        kind = _match(body[prefix.end() :])
    return kind or "background_worker"


def _match(body: str) -> str | None:
    for kind, pattern in _RULES:
        if pattern.search(body):
            return kind
    return None
