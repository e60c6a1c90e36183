"""Text that comes from users, files or alerts: refusing control characters and quoting it in messages."""

from __future__ import annotations

import re

# Line breaks and other control characters (C0, DEL, C1, Unicode's line and paragraph separators): a
# value holding one could end a YAML comment or a log line and forge what follows, so pgmedic never
# accepts one in a name or value.
CONTROL_RE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]")


SHOWN_MAX = 80  # characters of a user's value quoted in a message


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """VALUE quoted for a one-line message: repr() (control characters escaped), cut to about LIMIT chars.

    A value can be megabytes (a hostile config or label); the message must still be one short line.
    """
    text = repr(value) if not isinstance(value, str) else repr(value[: limit + 1])
    if len(text) > limit:
        size = len(value) if isinstance(value, str | bytes | list | dict | tuple) else len(text)
        text = f"{text[:limit]}… ({size} chars)"
    return text


def control_character(value: str) -> str | None:
    """The first control character in VALUE, escaped for a message, or None."""
    found = CONTROL_RE.search(value)
    return repr(found.group()) if found else None
