"""Delivering events to KSYS: the journal's outbox, drained by one thread, retried with backoff.

Runs apart from the workers, so a slow or failing notifier never delays a restart. A delivery
stays in the outbox until it succeeds, also across remediator restarts.

* command: the configured argv (no shell), the event JSON on stdin, killed at the timeout;
  exit 0 means delivered.
* webhook: HTTP POST of the event JSON; any 2xx means delivered.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

from pgmedic.config import KsysConfig
from pgmedic.errors import ActionError
from pgmedic.journal import Journal
from pgmedic.runner import base_env, run
from pgmedic.trust import program_problem

from .metrics import RemediatorMetrics

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0
BATCH = 20


def deliver(notifier: str, payload: str, ksys: KsysConfig) -> str | None:
    """Deliver once; None on success, else why it failed (one line)."""
    body = payload.encode()
    if notifier == "command" and ksys.command:
        user = ksys.command_user
        problem = program_problem(ksys.command[0], user)
        if problem:
            return problem
        try:
            result = run(list(ksys.command), timeout=ksys.timeout, stdin=body, env=base_env(), user=user)
        except ActionError as exc:
            return str(exc)
        return None if result.ok else result.describe()
    if notifier == "webhook" and ksys.webhook:
        request = urllib.request.Request(
            ksys.webhook,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pgmedic"},
        )
        try:
            with urllib.request.urlopen(request, timeout=ksys.timeout) as response:
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    return f"notifier {notifier!r} is not configured"


class Deliverer:
    def __init__(self, journal: Journal, ksys: KsysConfig, metrics: RemediatorMetrics, interval: float = 0.2) -> None:
        self.journal = journal
        self.ksys = ksys
        self.metrics = metrics
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pgmedic-ksys", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.drain()
            except Exception:
                log.exception("KSYS delivery loop failed; retrying")

    def drain(self) -> int:
        """Try every delivery that is due; returns how many were delivered."""
        delivered = 0
        for delivery in self.journal.due_deliveries(self.ksys.notifiers, BATCH):
            if self._stop.is_set():
                break
            error = deliver(delivery.notifier, delivery.payload, self.ksys)
            self.journal.delivery_done(delivery, error, retry_in=min(MAX_BACKOFF, 2.0 ** (delivery.attempts + 1)))
            self.metrics.ksys.labels("delivered" if error is None else "failed").inc()
            delivered += error is None
        return delivered
