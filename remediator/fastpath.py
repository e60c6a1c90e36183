"""The fast path: see a postmaster die the moment it dies, and restart it through the same engine.

Opt-in (``remediator.fast_path``, or ``fast_path`` per instance). One thread holds a pidfd on each
watched instance's verified postmaster (the identity rule) and waits on all of them in one poll();
a pidfd becomes readable when its process exits. About once a second, and right after every action
of the engine, it verifies again, so a postmaster restarted by someone else is followed.

Only crashes count. After a clean shutdown (``pg_ctl stop`` in any mode, ``systemctl stop``, pgmedic's
own stop) no postmaster.pid is left: PostgreSQL deletes its own before the postmaster exits. A
postmaster that died with its pid file still naming it was killed or crashed. An exit while the instance's lock is held (the remediator's
worker, or an administrator's ``pgmedic start|stop``) is someone's action, not a crash. Suspension and,
with ``remediator.alertmanager_url``, an active Alertmanager silence for the instance are respected.

A crash becomes an episode in the same journal (source fast_path, key from the dead postmaster's pid
and start ticks) that the same worker handles under the same lock, probe, budget and backoff; the
PostgresPostmasterDown alert that follows is journaled against that episode, never acted on twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgmedic.instance import Instance
from pgmedic.locks import held_elsewhere
from pgmedic.pidfile import read_pid_file
from pgmedic.signals import ProcessHandle

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)
REFRESH = 1.0  # seconds between verifications of the watched postmasters
SILENCE_TIMEOUT = 0.5  # seconds to ask Alertmanager; past that the fast path acts and says it could not ask
CRASH_ALERT = "PostgresPostmasterDown"


@dataclass
class Watched:
    handle: ProcessHandle
    start_ticks: int
    data_directory: str


class FastPath:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pgmedic-fast-path", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.poke()
        if self._thread is not None:
            self._thread.join(timeout)

    def poke(self) -> None:
        """Verify the watched postmasters now (after an action started a new one, or a reload)."""
        with contextlib.suppress(BlockingIOError):  # full: already poked
            os.write(self._wake_w, b"x")

    # ---- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        watched: dict[str, Watched] = {}
        try:
            while not self._stop.is_set():
                try:
                    self._refresh(watched)
                    self._wait(watched)
                except Exception:
                    log.exception("fast path failed; retrying")
                    self._stop.wait(1.0)
        finally:
            for entry in watched.values():
                entry.handle.close()

    def _wait(self, watched: dict[str, Watched]) -> None:
        """Until REFRESH passes, a poke, or a watched postmaster exits (then handle that)."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {}
        for name, entry in watched.items():
            poller.register(entry.handle.fd, select.POLLIN)
            by_fd[entry.handle.fd] = name
        for fd, _ in poller.poll(REFRESH * 1000):
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 64):
                        pass
                continue
            name = by_fd[fd]
            entry = watched.pop(name)
            entry.handle.close()
            self._exited(name, entry)

    def _refresh(self, watched: dict[str, Watched]) -> None:
        """Watch the verified postmaster of every fast-path instance; follow one that changed."""
        config = self.engine.config
        wanted = {name: cfg for name, cfg in config.instances.items() if cfg.fast_path_on(config.remediator)}
        for name in list(watched):
            if name not in wanted:
                watched.pop(name).handle.close()
        for name, cfg in wanted.items():
            postmaster = Instance(cfg).postmaster()
            current = watched.get(name)
            if postmaster is None:
                continue  # not running (or not verifiable): nothing to watch until it is started
            if current is not None and (current.handle.pid, current.start_ticks) == (
                postmaster.pid,
                postmaster.stat.start_ticks,
            ):
                continue
            handles = postmaster.handles()
            if handles is None:
                continue
            own, children = handles
            for child in children:
                child.close()
            if current is not None:
                current.handle.close()
                log.warning("fast path: %s now runs postmaster %d (restarted by someone else)", name, own.pid)
            watched[name] = Watched(own, postmaster.stat.start_ticks, cfg.data_directory)

    def _exited(self, name: str, entry: Watched) -> None:
        """A watched postmaster exited: a crash opens an episode; anything else is only journaled."""
        detected = time.time()
        pid = entry.handle.pid
        config = self.engine.config
        journal = self.engine.journal
        if name not in config.instances:
            return
        pid_file = read_pid_file(entry.data_directory)
        if pid_file is None or pid_file.pid != pid:
            journal.event(name, "postmaster_exited", pid=pid, reason="clean shutdown (postmaster.pid removed)")
            return
        if name in self.engine.acting or held_elsewhere(config.remediator.state_dir, name):
            journal.event(name, "postmaster_exited", pid=pid, reason="during an action on the instance (lock held)")
            return
        if journal.state(name).suspended:
            journal.event(name, "postmaster_exited", pid=pid, reason="crashed while suspended (maintenance): no action")
            return
        silence, note = silenced(config.remediator.alertmanager_url, name)
        if silence:
            journal.event(name, "postmaster_exited", pid=pid, reason=f"crashed; silenced in Alertmanager ({silence})")
            return
        self.engine.open_crash_episode(name, pid, entry.start_ticks, detected, note)


# ---- Alertmanager silences -----------------------------------------------------------------------


def silenced(url: str | None, instance: str) -> tuple[str | None, str | None]:
    """(id of an active silence covering the instance's crash alert, None) or (None, why it was not asked)."""
    if not url:
        return None, None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v2/silences", timeout=SILENCE_TIMEOUT) as response:
            silences = json.loads(response.read(1 << 22))
    except (OSError, ValueError, urllib.error.URLError) as exc:
        return None, f"could not check Alertmanager silences: {type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    for silence in silences if isinstance(silences, list) else []:
        if silence_covers(silence, instance):
            return str(silence.get("id")), None
    return None, None


# The labels the crash alert carries that the remediator knows; target labels (job, instance, …) it does not.
def _known_labels(instance: str) -> dict[str, str]:
    return {"alertname": CRASH_ALERT, "pg_instance": instance, "severity": "critical", "remediation": "restart"}


def silence_covers(silence: Any, instance: str) -> bool:
    """An active silence whose matchers name this instance and match every label known here.

    Matchers on labels the remediator cannot know (the scrape target's) are taken as matching: a
    silence that names the instance is an administrator's maintenance window, and respecting it is
    the safe side.
    """
    if not isinstance(silence, dict) or (silence.get("status") or {}).get("state") != "active":
        return False
    labels = _known_labels(instance)
    names_instance = False
    for matcher in silence.get("matchers") or []:
        name, value = matcher.get("name"), str(matcher.get("value", ""))
        if name not in labels:
            continue
        equal = matcher.get("isEqual", True)
        try:
            hit = re.fullmatch(value, labels[name]) is not None if matcher.get("isRegex") else value == labels[name]
        except re.error:
            return False
        if hit != equal:
            return False
        names_instance = names_instance or (name == "pg_instance" and equal)
    return names_instance
