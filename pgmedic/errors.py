"""Errors that carry a one-line message meant for an administrator."""

from __future__ import annotations

from .text import SHOWN_MAX


class PgmedicError(Exception):
    """Base class: the message is one line and says what is wrong."""


class ConfigError(PgmedicError):
    """A configuration problem, pinned to the file and key (or XML element) it comes from."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key if key is None or len(key) <= SHOWN_MAX else key[:SHOWN_MAX] + "…"
        self.message = message
        where = f"{source}: {self.key}" if self.key else source
        super().__init__(f"{where}: {message}")


class ActionError(PgmedicError):
    """An action (start, stop, script) could not be carried out."""
