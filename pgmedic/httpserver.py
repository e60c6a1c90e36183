"""The limits every pgmedic HTTP server runs with: hostile clients cannot starve or fill it.

waitress parses requests in one I/O thread and hands only complete ones to its workers, so a client
that sends half a request costs a socket, not a thread. What is left to bound is set here, once:
request bodies are refused past the app's own limit before they are buffered (waitress would spool up
to 1 GiB to disk by default); headers are capped; idle or half-open connections are closed after a
few seconds (checked every second, not every 30); and there is room for many more connections than
a slowloris attacker on loopback would open before the timeout closes them.
"""

from __future__ import annotations

from typing import Any

HEADER_LIMIT = 16 * 1024  # bytes of request line and headers
IDLE_TIMEOUT = 10  # seconds a connection may stay silent (half-open requests included)
CONNECTION_LIMIT = 512  # open connections before waitress stops accepting


def server_limits(max_body: int) -> dict[str, Any]:
    """waitress settings for a server whose app accepts bodies up to MAX_BODY bytes."""
    return {
        "max_request_body_size": max_body,
        "max_request_header_size": HEADER_LIMIT,
        "channel_timeout": IDLE_TIMEOUT,
        "cleanup_interval": 1,
        "connection_limit": CONNECTION_LIMIT,
        "asyncore_use_poll": True,  # descriptors beyond 1024 (the exporter's /proc handles)
    }
