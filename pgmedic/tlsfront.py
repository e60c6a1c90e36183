"""TLS in front of pgmedic's HTTP server, in process: the listener takes TLS and hands the plain bytes on.

The HTTP server (pgmedic.httpserver) has every limit the hostile-clients rules ask for (bodies refused
before buffering, header cap, idle timeout, half-open requests never holding a thread) and speaks plain
HTTP. TLS is terminated here: an asyncio listener (stdlib ssl) accepts TLS on the public address and
copies each connection's bytes to the HTTP server, which listens on a Unix socket in a private
directory (0700) that nobody else can reach. HTTP parsing and its limits stay the server's alone. What
the front adds is bounded too: a handshake must finish within HANDSHAKE_TIMEOUT (a client that sends
nothing, or plain HTTP, is dropped), at most as many connections are open as the server allows, and a
connection the server closed (idle, done) is closed on the TLS side at once.

A reload (SIGHUP) swaps certificates, client CA and TLS versions without closing the listener: every
handshake asks CONTEXT() for the context in force, through the SNI callback, which OpenSSL calls for
every ClientHello (with or without a server name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 5.0
CHUNK = 65536


class TlsFront:
    def __init__(
        self, host: str, port: int, backend: str, context: Callable[[], ssl.SSLContext], connection_limit: int
    ) -> None:
        self.host, self.port, self.backend, self.context = host, port, backend, context
        self.connection_limit = connection_limit
        self._loop = asyncio.new_event_loop()
        self._open = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pgmedic-tls", daemon=True)

    def start(self) -> None:
        """Listen (errors such as a taken port are raised here, in the caller's thread)."""
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _listening_context(self) -> ssl.SSLContext:
        """The listener's own context only routes each handshake to the context in force."""
        first = self.context()
        first.sni_callback = self._switch
        return first

    def _switch(self, connection: ssl.SSLObject, _name: str | None, _old: ssl.SSLContext) -> None:
        current = self.context()
        if current is not connection.context:
            current.sni_callback = self._switch
            connection.context = current

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_quiet)
        try:
            server = self._loop.run_until_complete(
                asyncio.start_server(
                    self._serve, self.host, self.port, ssl=self._listening_context(),
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT, backlog=128,
                )
            )  # fmt: skip
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.connection_limit:
            writer.close()
            return
        self._open += 1
        try:
            try:
                back_reader, back_writer = await asyncio.wait_for(asyncio.open_unix_connection(self.backend), 5)
            except (TimeoutError, OSError) as exc:
                log.warning("TLS front: backend unreachable: %s", exc)
                return
            try:
                await asyncio.gather(_pump(reader, back_writer), _pump(back_reader, writer))
            finally:
                back_writer.close()
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until either side ends; closing the sink's write side passes the end on."""
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()
            else:
                sink.close()


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """Failed handshakes (plain HTTP, wrong client certificate, scanners) are the client's problem."""
    log.debug("TLS front: %s", context.get("message"))
