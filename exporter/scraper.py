"""One scrape of every instance, bounded by Prometheus' scrape timeout.

Per instance: the OS collectors read postmaster.pid and /proc (fast, no SQL); the SQL visit runs in a
worker thread, started for all instances at once so they wait in parallel. A visit still running
from an earlier scrape is never doubled (single flight per instance): overlapping scrapes cannot
pile up connections on a stuck server. Whatever has not answered by the deadline reads as down.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from types import ModuleType

from pgmedic import __version__
from pgmedic.config import Config, InstanceConfig
from pgmedic.instance import Identity, Instance, Verdict
from pgmedic.pidfile import PidFile

from . import sqlview
from .collectors import OS_COLLECTORS, PREPARED, SQL_COLLECTORS
from .context import CollectorFailed, ScrapeContext
from .metrics import MetricSet
from .sqlview import SqlFacts
from .tracker import FDS_PER_PROCESS, ProcessTracker

log = logging.getLogger(__name__)
PENDING = SqlFacts(errors={"connection": "not yet answered"})
# The collectors' own statements, sent in the same round trip as sqlview's.
COLLECTOR_STATEMENTS = tuple(s for c in SQL_COLLECTORS for s in getattr(c, "STATEMENTS", ()))


class InstanceScraper:
    """Everything kept about one instance between scrapes: process tracker, last settings, SQL in flight."""

    def __init__(self, cfg: InstanceConfig, max_handles: int) -> None:
        self.instance = Instance(cfg)
        self.tracker = ProcessTracker(max_handles)
        self.known: SqlFacts | None = None
        self._visit_lock = threading.Lock()
        self._visit: tuple[Future[SqlFacts], OwnBackend] | None = None  # the SQL visit in flight, if any
        self.session = sqlview.StatsSession()
        self.tracker_lock = threading.Lock()

    def start_sql(
        self, executor: ThreadPoolExecutor | None, pid_file: PidFile | None, timeout: float
    ) -> tuple[Future[SqlFacts], OwnBackend, Callable[[Callable[[], None]], None] | None]:
        """This scrape's SQL visit: the one in flight if there is one (shared), else a new one, run by
        EXECUTOR, or (EXECUTOR None) by the caller through the returned function, which takes what to
        do meanwhile (None for a visit already under way or in EXECUTOR).

        Single flight that shares: overlapping scrapes (an HA pair of Prometheus servers scraping
        milliseconds apart) wait for the same visit and report its answer, so a stuck server never
        collects more than one connection from the exporter, and a healthy one never reads as down
        because another scrape was asking at the same moment. Only a visit still unanswered at a
        scrape's own deadline makes that scrape say pg_up 0.
        """
        with self._visit_lock:
            if self._visit is not None and not self._visit[0].done():
                return (*self._visit, None)
            own = OwnBackend()

            def visit(meanwhile: Callable[[], None] | None = None) -> SqlFacts:
                try:
                    return sqlview.fetch(
                        self.instance.config, pid_file, timeout, own.connected, self.session, COLLECTOR_STATEMENTS,
                        meanwhile,
                    )  # fmt: skip
                finally:
                    own.connected([])  # wakes a waiter even if fetch ended early

            if executor is not None:
                self._visit = (executor.submit(visit), own)
                return (*self._visit, None)
            future: Future[SqlFacts] = Future()
            future.set_running_or_notify_cancel()
            self._visit = (future, own)

            def run(meanwhile: Callable[[], None]) -> None:
                pending = [meanwhile]

                def once() -> None:
                    if pending:
                        pending.pop()()

                try:
                    future.set_result(visit(once))
                except BaseException as exc:  # fetch never raises; a bug must still wake the sharers
                    future.set_exception(exc)
                    raise
                finally:
                    once()  # the visit ended before its connection was on its way: the OS view all the same

            return future, own, run


class OwnBackend:
    """The backend pid of this scrape's fresh SQL connection (a list: none when it failed), once its
    connection attempt has ended."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self._done = threading.Event()

    def connected(self, pids: list[int]) -> None:
        if not self._done.is_set():
            self.pids = pids
            self._done.set()

    def wait_until(self, deadline: float) -> list[int]:
        self._done.wait(max(0.0, deadline - time.monotonic()))
        return self.pids


class Exporter:
    """Holds the scrapers for every configured instance; ``scrape(timeout)`` returns one MetricSet."""

    def __init__(self, config: Config, keep: list[InstanceScraper] | None = None) -> None:
        self.config = config
        per_instance = handle_budget() // max(1, len(config.instances))
        kept = {scraper.instance.config: scraper for scraper in keep or []}
        self.scrapers = [kept.get(cfg) or InstanceScraper(cfg, per_instance) for cfg in config.instances.values()]
        self.executor = ThreadPoolExecutor(max_workers=max(2, len(self.scrapers) + 1), thread_name_prefix="pgmedic-sql")

    def reconfigured(self, config: Config) -> Exporter:
        """An exporter for CONFIG that keeps the scrapers (process trackers, CPU totals, last settings)
        of every instance whose configuration did not change; this one is closed for the others."""
        successor = Exporter(config, keep=self.scrapers)
        self.close(keep=successor.scrapers)
        return successor

    def scrape(self, timeout: float) -> MetricSet:
        began = time.monotonic()
        deadline = began + max(0.1, timeout)
        out = MetricSet()
        out.add("pgmedic_build_info", {"version": __version__}, 1)
        plans: list[tuple[InstanceScraper, PidFile | None, Identity, tuple[Future[SqlFacts], OwnBackend] | None]] = []
        inline = None  # one new visit runs in this thread: no thread hand-over on the scrape's path
        for scraper in self.scrapers:
            pid_file = scraper.instance.pid_file()
            identity = scraper.instance.identify(pid_file)
            postmaster = identity.postmaster
            visit: tuple[Future[SqlFacts], OwnBackend] | None = None
            if postmaster is not None:
                future, own, run = scraper.start_sql(
                    self.executor if inline else None, pid_file, deadline - time.monotonic()
                )
                inline = inline or run
                visit = (future, own)
            plans.append((scraper, pid_file, identity, visit))
        # The OS view runs while the SQL visits connect and query: their waits overlap (the visit run
        # here does it once its connection is on its way). The processes collector walks /proc now and
        # reports after the visit, which names the client backends that may have run (and the
        # exporter's own backends, left out).
        contexts: list[tuple[InstanceScraper, ScrapeContext, Future[SqlFacts] | None]] = []

        def os_view() -> None:
            for scraper, pid_file, identity, visit in plans:
                answer, own = visit if visit is not None else (None, None)
                ctx = ScrapeContext(
                    scraper.instance, scraper.tracker, pid_file, identity.postmaster, PENDING, scraper.known
                )
                if identity.verdict is Verdict.UNVERIFIABLE:
                    ctx.unverifiable = identity.reason
                if own is not None:
                    ctx.own_backends = functools.partial(own.wait_until, deadline)
                with scraper.tracker_lock:  # two concurrent scrapes must not interleave CPU accounting
                    for collector in OS_COLLECTORS:
                        self._run(collector, ctx, out)
                    for collector in PREPARED:
                        with contextlib.suppress(Exception):  # its collect() runs it again and reports why
                            collector.prepare(ctx)
                contexts.append((scraper, ctx, answer))

        if inline is not None:
            inline(os_view)
        else:
            os_view()
        for scraper, ctx, answer in contexts:
            ctx.sql = self._await(answer, deadline)
            if ctx.sql.up and "settings" not in ctx.sql.errors:
                scraper.known = ctx.known = ctx.sql
            with scraper.tracker_lock:
                scraper.tracker.hint = ctx.sql.busy  # the next walk's; None (read everything) if SQL failed
                for collector in SQL_COLLECTORS:
                    self._run(collector, ctx, out)
        return out

    @staticmethod
    def _await(future: Future[SqlFacts] | None, deadline: float) -> SqlFacts:
        if future is None:
            return SqlFacts(errors={"connection": "the postmaster is not running"})
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            return SqlFacts(errors={"connection": "no answer before the scrape timeout"})

    @staticmethod
    def _run(collector: ModuleType, ctx: ScrapeContext, out: MetricSet) -> None:
        began = time.monotonic()
        ok = 1
        try:
            collector.collect(ctx, out)
        except CollectorFailed:
            ok = 0
        except Exception:
            ok = 0
            log.exception("collector %s failed for %s", collector.NAME, ctx.instance.name)
        labels = ctx.with_labels(collector=collector.NAME)
        out.add("pgmedic_collector_success", labels, ok)
        out.add("pgmedic_collector_duration_seconds", labels, time.monotonic() - began)

    def close(self, keep: list[InstanceScraper] | None = None) -> None:
        """Close the trackers not in KEEP, and stop taking SQL visits once no scrape can still need them.

        A reload swaps the exporter while scrapes that began with this one are still running and may
        yet submit their SQL visit: the executor stays open for the longest scrape deadline (then
        shuts down; visits already queued still run, and a kept scraper may share one).
        """
        grace = threading.Timer(self.config.exporter.default_scrape_timeout + 1.0, self.executor.shutdown, (False,))
        grace.daemon = True
        grace.start()
        for scraper in self.scrapers:
            if keep is None or scraper not in keep:
                scraper.session.close()
                with scraper.tracker_lock:
                    scraper.tracker.close()


RESERVED_FDS = 256  # sockets, files and libraries of the exporter itself


def handle_budget() -> int:
    """How many processes the exporter may keep /proc descriptors open for (FDS_PER_PROCESS each).

    Raises the soft descriptor limit to the hard one first: a thousand backends need three thousand.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(0, (soft - RESERVED_FDS) // FDS_PER_PROCESS)
