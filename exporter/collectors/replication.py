"""Streaming replication from both ends: the standbys a server feeds, and a standby's own WAL receiver.

A primary (or a cascading standby) reports each connected standby's state and how far it trails in
bytes (sent, written, flushed, replayed) and seconds; a standby reports whether its WAL receiver
streams, what it has received but not replayed, and its replay lag as postgres_exporter defines it
(0 when everything received is replayed).
"""

from __future__ import annotations

from ..context import ScrapeContext
from ..metrics import MetricSet
from ..sqlview import Statement

NAME = "replication"
SENDER_STATES = ("startup", "catchup", "streaming", "backup", "stopping")
RECEIVER_STATES = ("stopped", "starting", "streaming", "waiting", "restarting", "stopping")
BYTES_BEHIND = ("sent", "write", "flush", "replay")
SECONDS_BEHIND = ("write", "flush", "replay")
# The position standbys are measured against: this server's WAL end (received WAL on a standby).
_HERE = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END"
STATEMENTS = (
    # pg_stat_get_wal_senders() instead of the pg_stat_replication view: the activity array is read
    # only for the senders there are, not for every backend.
    Statement(
        "wal_senders",
        f"""
SELECT a.application_name, coalesce(host(a.client_addr), 'local'), w.state,
       pg_wal_lsn_diff(h.lsn, w.sent_lsn), pg_wal_lsn_diff(h.lsn, w.write_lsn),
       pg_wal_lsn_diff(h.lsn, w.flush_lsn), pg_wal_lsn_diff(h.lsn, w.replay_lsn),
       extract(epoch FROM w.write_lag), extract(epoch FROM w.flush_lag), extract(epoch FROM w.replay_lag)
FROM pg_stat_get_wal_senders() w
CROSS JOIN (SELECT {_HERE} AS lsn) h
LEFT JOIN LATERAL pg_stat_get_activity(w.pid) a ON true
""",
    ),
    Statement(
        "wal_receiver",
        """
SELECT r.status, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()),
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END
FROM pg_stat_get_wal_receiver() r WHERE pg_is_in_recovery()
""",
    ),
)


def collect(ctx: ScrapeContext, out: MetricSet) -> None:
    sql = ctx.require_sql("settings")
    out.add("pg_replication_is_replica", ctx.labels, 1 if sql.in_recovery else 0)
    for row in ctx.rows("wal_receiver"):
        status = row[0] or "stopped"
        out.add("pg_wal_receiver_up", ctx.labels, 1 if status == "streaming" else 0)
        for state in sorted({*RECEIVER_STATES, status}):
            out.add("pg_wal_receiver_status", ctx.with_labels(status=state), 1 if state == status else 0)
        out.add("pg_replication_replay_lag_bytes", ctx.labels, max(0.0, float(row[1] or 0)))
        out.add("pg_replication_lag_seconds", ctx.labels, max(0.0, float(row[2] or 0)))
    seen: set[tuple[str, str]] = set()
    # The worst first: two standbys that share application_name and address are reported as the one further behind.
    for row in sorted(ctx.rows("wal_senders"), key=lambda r: -float(r[6] or 0)):
        key = (row[0] or "", row[1] or "")
        if key in seen:
            continue
        seen.add(key)
        standby = ctx.with_labels(application_name=key[0], client_addr=key[1])
        state = row[2] or "startup"
        for name in sorted({*SENDER_STATES, state}):
            out.add("pg_stat_replication_state", {**standby, "state": name}, 1 if name == state else 0)
        for kind, value in zip(BYTES_BEHIND, row[3:7], strict=True):
            if value is not None:
                out.add("pg_stat_replication_lag_bytes", {**standby, "kind": kind}, max(0.0, float(value)))
        for kind, value in zip(SECONDS_BEHIND, row[7:10], strict=True):
            # NULL once the standby has caught up and nothing is in flight: no lag.
            out.add("pg_stat_replication_lag_seconds", {**standby, "kind": kind}, float(value or 0))
