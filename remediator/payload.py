"""Alertmanager's webhook payload (version 4), checked strictly: anything else is a 400, not a guess."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

MAX_BODY = 1024 * 1024
MAX_FINGERPRINT = 128  # Alertmanager's are 16 hex digits
OPTIONAL_STRINGS = ("status", "receiver", "groupKey", "externalURL")  # top-level fields, when present


class PayloadError(ValueError):
    """The body is not an Alertmanager v4 webhook payload; the message says why in a few words."""


@dataclass(frozen=True)
class Alert:
    status: str  # firing or resolved: each alert's own, never the payload's top-level status
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str | None
    fingerprint: str

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def episode(self) -> str:
        """One failure episode: the same alert (fingerprint) since the same start."""
        return f"{self.fingerprint}@{self.starts_at}"

    @property
    def starts_at_epoch(self) -> float | None:
        return parse_time(self.starts_at)


# RFC 3339 date-time (what OpenAPI's format: date-time means): lower-case t and z and a leap second allowed.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def _datetime(text: str) -> datetime | None:
    match = _RFC3339.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    micro = int((match.group(7) or "0")[:6].ljust(6, "0"))
    try:
        if match.group(8):
            zone = UTC
        else:
            hours, minutes = int(match.group(10)), int(match.group(11))
            if hours > 23 or minutes > 59:
                return None
            sign = -1 if match.group(9) == "-" else 1
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
        return datetime(year, month, day, hour, minute, min(second, 59), micro, tzinfo=zone)  # 60: a leap second
    except ValueError:
        return None


def valid_time(text: object) -> bool:
    """Whether TEXT is an RFC 3339 date-time (Go's zero time, 0001-01-01T00:00:00Z, included)."""
    return isinstance(text, str) and _datetime(text) is not None


def parse_time(text: str | None) -> float | None:
    """RFC 3339 as Alertmanager writes it (nanoseconds and Z allowed) to Unix time; None if unusable
    (not RFC 3339, or Go's zero time, which Alertmanager sends for "no end")."""
    if not text or text.startswith("0001-01-01"):
        return None
    parsed = _datetime(text)
    if parsed is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):
        return None


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise PayloadError(f"{what} must be an object of strings")
    return value


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_payload(body: bytes) -> list[Alert]:
    """Validate BODY and return its alerts; raise PayloadError on any deviation from version 4."""
    try:
        doc = json.loads(body, parse_constant=_no_constants)
        json.dumps(doc, ensure_ascii=False).encode()  # lone surrogates ("\ud800") cannot be stored
    except (ValueError, UnicodeError):  # JSONDecodeError, NaN/Infinity, not UTF-8, lone surrogates
        raise PayloadError("body is not valid JSON in UTF-8") from None
    except RecursionError:
        raise PayloadError("body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object")
    if doc.get("version") != "4":
        raise PayloadError(f"unsupported payload version {doc.get('version')!r}, expected '4'")
    for name in OPTIONAL_STRINGS:
        if name in doc and not isinstance(doc[name], str):
            raise PayloadError(f"{name} must be a string")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts must be a list")
    out = []
    for i, raw in enumerate(alerts):
        if not isinstance(raw, dict):
            raise PayloadError(f"alerts[{i}] must be an object")
        status = raw.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{i}].status must be firing or resolved")
        if "generatorURL" in raw and not isinstance(raw["generatorURL"], str):
            raise PayloadError(f"alerts[{i}].generatorURL must be a string")
        labels = _string_map(raw.get("labels"), f"alerts[{i}].labels")
        annotations = _string_map(raw.get("annotations", {}), f"alerts[{i}].annotations")
        starts_at = raw.get("startsAt")
        if not isinstance(starts_at, str) or not valid_time(starts_at):
            raise PayloadError(f"alerts[{i}].startsAt must be an RFC 3339 time")
        fingerprint = raw.get("fingerprint")
        if "fingerprint" in raw and (not isinstance(fingerprint, str) or not 0 < len(fingerprint) <= MAX_FINGERPRINT):
            raise PayloadError(f"alerts[{i}].fingerprint must be a string of 1 to {MAX_FINGERPRINT} characters")
        ends_at = raw.get("endsAt")
        if "endsAt" in raw and not valid_time(ends_at):
            raise PayloadError(f"alerts[{i}].endsAt must be an RFC 3339 time")
        out.append(Alert(status, labels, annotations, starts_at, ends_at, fingerprint or label_fingerprint(labels)))
    return out


def label_fingerprint(labels: dict[str, str]) -> str:
    """A stable fingerprint from the label set, for senders that do not supply one."""
    text = "\0".join(f"{k}\0{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
