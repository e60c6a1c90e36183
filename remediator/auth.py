"""Who may post alerts: the shared secret from token_file, as Alertmanager's http_config sends it.

Accepted: ``Authorization: Bearer SECRET`` (authorization.credentials_file) or HTTP basic auth whose
password is SECRET (basic_auth.password_file; the user name is not checked). Compared in constant
time. Without a token_file the remediator only runs on a loopback address (server.py enforces it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path

from pgmedic.errors import ConfigError
from pgmedic.trust import secret_file_problem


def read_secret(path: str) -> str:
    """The token in PATH; refused (one line) when others may read it, it is no file, or it is empty."""
    problem = secret_file_problem(path)
    if problem:
        raise ConfigError(path, "remediator.token_file", problem.removeprefix(f"{path}: "))
    try:
        secret = Path(path).read_text().strip()
    except (PermissionError, UnicodeDecodeError):
        raise ConfigError(path, "remediator.token_file", "file is not readable as text") from None
    if not secret:
        raise ConfigError(path, "remediator.token_file", "file is empty")
    return secret


def authorized(header: str | None, secret: str | None) -> bool:
    """True when no secret is configured, or HEADER carries it as bearer token or basic-auth password."""
    if secret is None:
        return True
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), secret.encode())
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, _, password = decoded.partition(":")
        return hmac.compare_digest(password.encode(), secret.encode())
    return False
