"""TLS and basic auth the Prometheus way: the exporter-toolkit web configuration file (`--web.config.file`).

The same file every Prometheus exporter takes::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key           # readable by its owner only
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default), VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
      min_version: TLS12             # TLS10 … TLS13
      max_version: TLS13
    basic_auth_users:
      prometheus: $2b$12$…           # bcrypt hashes (htpasswd -nBC 12 "" | tr -d ':\\n')

Python's ssl cannot ask for a client certificate without verifying it, so ``RequestClientCert`` and
``RequireAnyClientCert`` are refused with a one-line error rather than silently made stricter or
looser; ``cipher_suites``, ``curve_preferences`` and ``prefer_server_cipher_suites`` are Go settings
with no faithful equivalent here and are refused too. A file that does not load is an error at start
and, on SIGHUP, leaves the configuration in force unchanged.

bcrypt is slow on purpose (tens of milliseconds a check); a scrape every second must not pay it, so a
successful check is remembered (keyed by a SHA-256 of user, password and hash, never the password).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from .config import read_yaml_file
from .errors import ConfigError
from .text import control_character, shown
from .trust import secret_file_problem

log = logging.getLogger(__name__)

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
GO_ONLY_KEYS = {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites"}
TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
REALM = 'Basic realm="pgmedic", charset="UTF-8"'
AUTH_CACHE_MAX = 1024


@dataclass(frozen=True)
class WebConfig:
    """A loaded web configuration: an SSL context (None: plain HTTP) and the basic-auth users."""

    path: str | None = None
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)


def load_web_config(path: str | None) -> WebConfig:
    """Read and check PATH (None: no TLS, no auth); ConfigError with one line naming what is wrong."""
    if path is None:
        return WebConfig()
    doc = read_yaml_file(Path(path), required=True) or {}
    if not isinstance(doc, dict):
        raise ConfigError(path, None, "expected a mapping (tls_server_config, basic_auth_users)")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise ConfigError(
            path, shown(sorted(unknown)[0]), f"unknown key; expected one of {', '.join(sorted(TOP_KEYS))}"
        )
    base = Path(path).resolve().parent
    tls = _tls_context(path, base, doc.get("tls_server_config"))
    users = _users(path, doc.get("basic_auth_users"))
    return WebConfig(path, tls, users)


def _tls_context(path: str, base: Path, section: Any) -> ssl.SSLContext | None:
    if section is None:
        return None
    where = "tls_server_config"
    if not isinstance(section, dict):
        raise ConfigError(path, where, "expected a mapping")
    for key in section:
        if key in GO_ONLY_KEYS:
            raise ConfigError(path, f"{where}.{key}", "not supported by pgmedic (a Go TLS setting): remove it")
        if key not in TLS_KEYS:
            raise ConfigError(
                path, f"{where}.{shown(key)}", f"unknown key; expected one of {', '.join(sorted(TLS_KEYS))}"
            )
    cert, key = section.get("cert_file"), section.get("key_file")
    if not isinstance(cert, str) or not isinstance(key, str) or not cert or not key:
        raise ConfigError(path, where, "cert_file and key_file are both required")
    cert_path, key_path = base / cert, base / key
    problem = secret_file_problem(str(key_path))
    if problem:
        raise ConfigError(path, f"{where}.key_file", problem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(path, f"{where}.min_version", section.get("min_version", "TLS12"))
    if "max_version" in section:
        context.maximum_version = _version(path, f"{where}.max_version", section["max_version"])
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(path, where, f"cannot load cert_file/key_file: {_reason(exc)}") from None
    auth = section.get("client_auth_type", "NoClientCert")
    if auth in UNSUPPORTED_CLIENT_AUTH:
        raise ConfigError(
            path, f"{where}.client_auth_type",
            f"{auth} (a client certificate without verification) is not supported: use VerifyClientCertIfGiven "
            "or RequireAndVerifyClientCert with client_ca_file",
        )  # fmt: skip
    if auth not in CLIENT_AUTH:
        raise ConfigError(path, f"{where}.client_auth_type", f"{shown(auth)}: expected one of {', '.join(CLIENT_AUTH)}")
    context.verify_mode = CLIENT_AUTH[auth]
    ca = section.get("client_ca_file")
    if context.verify_mode != ssl.CERT_NONE:
        if not isinstance(ca, str) or not ca:
            raise ConfigError(path, f"{where}.client_ca_file", f"required with client_auth_type {auth}")
        try:
            context.load_verify_locations(cafile=str(base / ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(path, f"{where}.client_ca_file", f"cannot load: {_reason(exc)}") from None
    return context


def _version(path: str, where: str, value: Any) -> ssl.TLSVersion:
    if value not in TLS_VERSIONS:
        raise ConfigError(path, where, f"{shown(value)}: expected one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[value]


def _users(path: str, section: Any) -> dict[str, bytes]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(path, "basic_auth_users", "expected a mapping of user names to bcrypt hashes")
    users = {}
    for user, hashed in section.items():
        where = f"basic_auth_users.{shown(user)}"
        if not isinstance(user, str) or not user or ":" in user or control_character(user):
            raise ConfigError(path, where, "a user name must be a non-empty string without ':' or control characters")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(path, where, "expected a bcrypt hash ($2a$, $2b$ or $2y$…)")
        users[user] = hashed.encode()
    return users


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]


class BasicAuth:
    """Checks `Authorization: Basic …` against the users of the web config in force."""

    def __init__(self) -> None:
        self._ok: dict[bytes, None] = {}  # digests of (user, password, hash) that passed bcrypt
        self._lock = threading.Lock()

    def allows(self, users: dict[str, bytes], header: str | None) -> bool:
        if not users:
            return True
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = users.get(user)
        if hashed is None:
            return False
        digest = hashlib.sha256(b"\0".join((user.encode(), password, hashed))).digest()
        with self._lock:
            if digest in self._ok:
                return True
        try:
            ok = bcrypt.checkpw(password, hashed)
        except ValueError:  # a malformed hash in the file
            ok = False
        if ok:
            with self._lock:
                if len(self._ok) >= AUTH_CACHE_MAX:
                    self._ok.clear()
                self._ok[digest] = None
        return ok


def _basic_credentials(header: str | None) -> tuple[str, bytes] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def protect(
    app: Callable[..., Iterable[bytes]], current: Callable[[], WebConfig], exempt: Callable[[dict[str, Any]], bool]
) -> Callable[..., Iterable[bytes]]:
    """APP behind basic auth when the web config in force has users (except requests EXEMPT says are
    authenticated otherwise, such as the remediator's webhook with its bearer token)."""
    auth = BasicAuth()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        users = current().users
        if users and not exempt(environ) and not auth.allows(users, environ.get("HTTP_AUTHORIZATION")):
            body = b'{"error": "unauthorized: basic auth required"}\n'
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", REALM), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return app(environ, start_response)

    return guarded


class WebState:
    """The web configuration in force; `reload` (SIGHUP) swaps it, or keeps it when the file is broken.

    Turning TLS on or off needs a new listener: that part waits for a restart (with a warning), the
    rest (certificates, client CA, users) takes effect at the next connection or request.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.config = load_web_config(path)

    def reload(self) -> None:
        try:
            new = load_web_config(self.path)
        except ConfigError as exc:
            log.error("web config not reloaded, the previous one stays in force: %s", exc)
            return
        if (new.tls is None) != (self.config.tls is None):
            log.warning("%s: turning TLS on or off takes effect at the next restart", self.path)
            new = WebConfig(new.path, self.config.tls, new.users)
        self.config = new

    def current(self) -> WebConfig:
        return self.config

    def context(self) -> ssl.SSLContext:
        assert self.config.tls is not None
        return self.config.tls
