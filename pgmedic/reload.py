"""Reloading the configuration of a running service on SIGHUP, the way Prometheus does.

Python's default action for SIGHUP ends the process, so ``systemctl reload`` or a habitual
``kill -HUP`` would stop the exporter or the remediator. Both install ``Reloader``: the signal only
sets an event, and a thread loads the whole configuration again (main file, instances.d/, token).
A configuration that does not validate is refused with one log line naming file and key, and the one
in force stays; the outcome is kept for the status API and the ``pgmedic_config_*`` metrics.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config, load_config
from .errors import PgmedicError

log = logging.getLogger(__name__)


@dataclass
class ConfigStatus:
    """What the service runs now and how the last reload ended."""

    config: Config
    generation: int = 1  # +1 for every configuration put in force
    loaded_at: float = field(default_factory=time.time)
    last_reload_ok: bool = True
    last_reload_at: float | None = None
    last_reload_error: str | None = None

    def document(self) -> dict[str, object]:
        """For the status APIs (and `pgmedic -s`, which waits for the generation to move)."""
        return {
            "path": self.config.path,
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "instances": sorted(self.config.instances),
            "last_reload": {"ok": self.last_reload_ok, "at": self.last_reload_at, "error": self.last_reload_error},
        }


class Reloader:
    """Loads the configuration again on SIGHUP (or ``reload()``) and hands it to APPLY.

    APPLY may raise PgmedicError to refuse a configuration that loads but cannot be put in force
    (a token file that became unreadable); the previous one then stays, as for a parse error.
    """

    def __init__(self, status: ConfigStatus, apply: Callable[[Config], None], service: str) -> None:
        self.status = status
        self.apply = apply
        self.service = service
        self._requested = threading.Event()
        self._closed = False
        self._lock = threading.Lock()

    def install(self) -> None:
        """Handle SIGHUP from now on (main thread only) and start the thread that reloads.

        The thread sleeps until a SIGHUP or close(), with no timeout: an idle service wakes for nothing
        (each wake-up of a sleeping process costs about a millisecond of CPU on a VM).
        """
        signal.signal(signal.SIGHUP, lambda _signum, _frame: self._requested.set())

        def loop() -> None:
            while True:
                self._requested.wait()
                self._requested.clear()
                if self._closed:
                    return
                self.reload()

        threading.Thread(target=loop, name=f"pgmedic-{self.service}-reload", daemon=True).start()

    def close(self) -> None:
        """End the reload thread (a reload under way finishes first)."""
        self._closed = True
        self._requested.set()

    def reload(self) -> bool:
        """Load and apply the configuration now; True if the new one is in force."""
        with self._lock:
            began = time.time()
            try:
                config = load_config(self.status.config.path)
                self.apply(config)
            except PgmedicError as exc:
                log.error("reload refused, the previous configuration stays in force: %s", exc)
                self._record(began, str(exc))
                return False
            self.status.config = config
            self.status.generation += 1
            self.status.loaded_at = began
            self._record(began, None)
            names = ", ".join(sorted(config.instances))
            log.warning("reloaded %s: %d instance(s): %s", config.path, len(config.instances), names)
            return True

    def _record(self, began: float, error: str | None) -> None:
        """The outcome, written last: a reader that sees this attempt's time sees its result."""
        self.status.last_reload_ok, self.status.last_reload_error = error is None, error
        self.status.last_reload_at = began


RESTART_ONLY = (("exporter", "listen"), ("remediator", "listen"), ("remediator", "state_dir"))


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot move (the listening socket, the journal's directory): named for a warning."""
    out = []
    for section, key in RESTART_ONLY:
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key):
            out.append(f"{section}.{key}")
    return out
