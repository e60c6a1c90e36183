"""The limits every pgmedic HTTP server runs with: hostile clients cannot starve or fill it.

waitress parses requests in one I/O thread and hands only complete ones to its workers, so a client
that sends half a request costs a socket, not a thread. What is left to bound is set here, once:
request bodies are refused past the app's own limit before they are buffered (waitress would spool up
to 1 GiB to disk by default); headers are capped; idle or half-open connections are closed after a
few seconds (checked every second, not every 30); and there is room for many more connections than
a slowloris attacker on loopback would open before the timeout closes them. With TLS, the front of
pgmedic.tlsfront takes the TLS connections and waitress keeps all of the above.

An idle server does not wake up: waitress's own loop polls every second to look for idle connections
even when there are none, and on a VM each wake-up of a sleeping process costs about a millisecond of
CPU (measured: 1 ms a second for the loop alone, more than a scrape's own work at a 15 s interval).
So the loop here polls with the one-second timeout only while a connection is open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from .tlsfront import TlsFront
from .webconfig import WebState

log = logging.getLogger(__name__)
HEADER_LIMIT = 16 * 1024  # bytes of request line and headers
IDLE_TIMEOUT = 10  # seconds a connection may stay silent (half-open requests included)
CLEANUP_EVERY = 1.0  # seconds between checks for idle connections, while there are any
CONNECTION_LIMIT = 512  # open connections before waitress stops accepting


def server_limits(max_body: int) -> dict[str, Any]:
    """waitress settings for a server whose app accepts bodies up to MAX_BODY bytes."""
    return {
        "max_request_body_size": max_body,
        "max_request_header_size": HEADER_LIMIT,
        "channel_timeout": IDLE_TIMEOUT,
        "cleanup_interval": CLEANUP_EVERY,
        "connection_limit": CONNECTION_LIMIT,
        "asyncore_use_poll": True,  # descriptors beyond 1024 (the exporter's /proc handles)
    }


class Server:
    """A waitress server with these limits, plain on HOST:PORT, or behind the in-process TLS front when
    the web configuration has tls_server_config (waitress then listens on a private Unix socket)."""

    def __init__(
        self, app: Callable[..., Any], host: str, port: int, web: WebState, *, threads: int, ident: str, max_body: int
    ) -> None:
        import waitress

        self.web = web
        self._closing = False
        self._front: TlsFront | None = None
        self._private: str | None = None
        options: dict[str, Any] = {"threads": threads, "ident": ident, **server_limits(max_body)}
        if web.config.tls is None:
            self._server = waitress.create_server(app, host=host, port=port, **options)
            return
        self._private = tempfile.mkdtemp(prefix="pgmedic-http-")  # 0700: only this user reaches the socket
        backend = os.path.join(self._private, "http.sock")
        self._server = waitress.create_server(app, unix_socket=backend, unix_socket_perms="600", **options)
        try:
            self._front = TlsFront(host, port, backend, web.context, CONNECTION_LIMIT)
            self._front.start()
        except BaseException:
            self.close()
            raise

    @property
    def scheme(self) -> str:
        return "https" if self._front else "http"

    def run(self) -> None:
        """Serve until close(): waitress's loop, but asleep while no connection is open (see above)."""
        from waitress import wasyncore

        sockets = self._server._map  # the listening socket and the trigger, then one entry per connection
        quiet = len(sockets)
        with contextlib.suppress(OSError):  # closed by a signal handler
            while sockets and not self._closing:
                wasyncore.poll2(CLEANUP_EVERY if len(sockets) > quiet else None, sockets)

    def close(self) -> None:
        """Stop run() from any thread, or from a signal handler: the trigger wakes its poll first."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._server.pull_trigger()
        self._server.close()
        if self._front is not None:
            self._front.stop()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)


def stop_on_signals(server: Server) -> None:
    """SIGTERM and SIGINT close SERVER (its run() returns), so the caller's cleanup runs."""

    def shutdown(signum: int, _frame: object) -> None:
        log.warning("signal %d: stopping", signum)
        server.close()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
