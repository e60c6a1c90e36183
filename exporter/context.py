"""What the collectors of one instance share during one scrape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pgmedic.instance import Instance, Postmaster
from pgmedic.pidfile import PidFile

from .sqlview import Rows, SqlFacts
from .tracker import ProcessTracker, TrackedProcess


@dataclass
class ScrapeContext:
    instance: Instance
    tracker: ProcessTracker
    pid_file: PidFile | None
    postmaster: Postmaster | None
    sql: SqlFacts  # this scrape's SQL visit (up=False with a reason when it could not happen)
    known: SqlFacts | None  # the last successful visit: settings and version rarely change
    # The processes other than client backends by backend type (the processes collector groups them once).
    by_type: dict[str, list[TrackedProcess]] = field(default_factory=dict)
    # The processes collector's walk (those other processes, skipped client pids), made while the SQL
    # visit was on its way.
    walked: tuple[list[TrackedProcess], set[int]] | None = None
    # The pid of this scrape's fresh SQL backend (not a client to count), once its connect attempt ended.
    own_backends: Callable[[], list[int]] = list
    labels: dict[str, str] = field(default_factory=dict)
    # Why the identity rule could not decide whose process postmaster.pid names (/proc not readable).
    unverifiable: str | None = None

    def __post_init__(self) -> None:
        self.labels = {"pg_instance": self.instance.name}

    def require_identity(self) -> None:
        """For collectors that speak of the postmaster's processes: fail rather than guess when the
        identity rule could not decide whose process postmaster.pid names."""
        if self.unverifiable:
            raise CollectorFailed(self.unverifiable)

    def require_sql(self, step: str) -> SqlFacts:
        """This scrape's SQL facts, for collectors that need STEP of sqlview's own parsing to have worked."""
        if not self.sql.up or step in self.sql.errors:
            raise CollectorFailed(self.sql.errors.get(step) or self.sql.errors.get("connection", "no connection"))
        return self.sql

    def rows(self, statement: str) -> Rows:
        """The rows of a collector's own STATEMENT in this scrape, or CollectorFailed saying why there are none."""
        result = self.require_sql("connection").results.get(statement)
        if result is None:
            raise CollectorFailed(f"no {statement} statement for PostgreSQL {self.sql.version}")
        if isinstance(result, str):
            raise CollectorFailed(result)
        return result

    def with_labels(self, **extra: str) -> dict[str, str]:
        return {**self.labels, **extra}

    @property
    def facts(self) -> SqlFacts | None:
        """This scrape's settings if the SQL visit got them, else the last known ones."""
        if self.sql.up and "settings" not in self.sql.errors:
            return self.sql
        return self.known

    @property
    def version_num(self) -> int | None:
        facts = self.facts
        if facts is not None and facts.version_num:
            return facts.version_num
        major = self.instance.major_version()
        return major * 10000 if major else None


class CollectorFailed(Exception):
    """A collector could not produce its metrics this scrape (the reason is the message)."""
