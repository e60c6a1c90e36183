"""Which background workers PostgreSQL 14 to 18 runs, by major version, role and settings: one table.

Read off each version's postmaster (what it starts in which state): a worker that the table does
not expect is never reported, so `pg_background_worker_up 0` always means "missing". Settings the
caller does not know (no SQL visit yet) leave their workers out rather than guess.

Standby workers assume ``hot_standby = on`` (the default); the stats collector (until 14), the WAL
summarizer and the archiver with ``archive_mode = always`` run on a hot standby too.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg.conninfo import conninfo_to_dict


class Role(enum.Enum):
    ANY = "any"
    PRIMARY = "primary"
    STANDBY = "standby"


ON = ("on", "true", "yes", "1")
NONZERO = "<nonzero>"  # a number other than 0
NONEMPTY = "<nonempty>"
HAS_DBNAME = "<conninfo with dbname>"


@dataclass(frozen=True)
class Needs:
    """A setting a worker needs, and the values that start it."""

    setting: str
    values: tuple[str, ...] = ON

    def met(self, settings: Mapping[str, str]) -> bool | None:
        """True or False; None when SETTINGS does not say (unknown, or this version lacks it)."""
        value = settings.get(self.setting)
        if value is None:
            return None
        if self.values == (NONZERO,):
            return value.strip() not in ("0", "")
        if self.values == (NONEMPTY,):
            return value.strip() != ""
        if self.values == (HAS_DBNAME,):
            try:
                return bool(conninfo_to_dict(value).get("dbname"))
            except Exception:  # psycopg.ProgrammingError for a malformed conninfo: the worker won't start
                return False
        return value.lower() in self.values


@dataclass(frozen=True)
class Worker:
    name: str  # the backend type, as pgmedic.titles classifies it
    since: int = 0  # first major version that runs it
    until: int = 99  # last major version that runs it
    role: Role = Role.ANY
    needs: tuple[Needs, ...] = ()
    count_setting: str | None = None  # how many of it run (io workers); one otherwise


TABLE: tuple[Worker, ...] = (
    Worker("logger", needs=(Needs("logging_collector"),)),
    Worker("checkpointer"),
    Worker("background_writer"),
    Worker("walwriter", role=Role.PRIMARY),
    Worker("autovacuum_launcher", role=Role.PRIMARY, needs=(Needs("autovacuum"),)),
    Worker("archiver", role=Role.PRIMARY, needs=(Needs("archive_mode", ("on",)),)),
    Worker("archiver", needs=(Needs("archive_mode", ("always",)),)),
    Worker("stats_collector", until=14),
    Worker(
        "logical_replication_launcher", role=Role.PRIMARY, needs=(Needs("max_logical_replication_workers", (NONZERO,)),)
    ),
    Worker("startup", role=Role.STANDBY),
    Worker("walreceiver", role=Role.STANDBY, needs=(Needs("primary_conninfo", (NONEMPTY,)),)),
    Worker("walsummarizer", since=17, needs=(Needs("summarize_wal"),)),
    # PostgreSQL starts it only when its parameters validate (ValidateSlotSyncParams).
    Worker(
        "slotsync_worker",
        since=17,
        role=Role.STANDBY,
        needs=(
            Needs("sync_replication_slots"),
            Needs("hot_standby_feedback"),
            Needs("primary_slot_name", (NONEMPTY,)),
            Needs("wal_level", ("logical",)),
            Needs("primary_conninfo", (HAS_DBNAME,)),
        ),
    ),
    Worker("io_worker", since=18, needs=(Needs("io_method", ("worker",)),), count_setting="io_workers"),
)

# Every setting the table reads: the exporter's SQL visit asks for each of them.
SETTINGS: tuple[str, ...] = tuple(
    dict.fromkeys([n.setting for w in TABLE for n in w.needs] + [w.count_setting for w in TABLE if w.count_setting])
)
# Workers in display order (pg_background_worker_up reports on these).
NAMES: tuple[str, ...] = tuple(dict.fromkeys(w.name for w in TABLE))


def expected(major: int | None, standby: bool, settings: Mapping[str, str] | None) -> dict[str, int]:
    """{worker: how many should run} for MAJOR (None: unknown) in this ROLE with these SETTINGS (None:
    unknown, so only the workers that need no setting)."""
    out: dict[str, int] = {}
    for worker in TABLE:
        if major is not None and not worker.since <= major <= worker.until:
            continue
        if major is None and (worker.since > 0 or worker.until < 99):
            continue  # version-bound: wait until the version is known
        if worker.role is not Role.ANY and (worker.role is Role.STANDBY) != standby:
            continue
        if worker.needs and (settings is None or not all(n.met(settings) for n in worker.needs)):
            continue
        out[worker.name] = _count(worker, settings)
    return out


def _count(worker: Worker, settings: Mapping[str, str] | None) -> int:
    if worker.count_setting is None or settings is None:
        return 1
    try:
        return max(1, int(settings.get(worker.count_setting, "1")))
    except ValueError:
        return 1
