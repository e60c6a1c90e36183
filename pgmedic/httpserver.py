"""pgmedic's HTTP server: a small WSGI server that hostile clients cannot starve or fill, and that costs
a scrape as little as it can.

Limits, set here once for both services: request line and headers are capped at HEADER_LIMIT; a body is
refused past the app's own limit (413) from its declared length, or for a chunked body as soon as the
decoded part passes it, never buffered beyond it; a connection that has not sent a whole request within
IDLE_TIMEOUT of being ready for one (accepted, or its previous answer sent) is closed, and so is a
keep-alive connection left idle that long; at most CONNECTION_LIMIT connections are open (beyond it
the listener is not polled: new clients wait in the kernel's backlog). Every request the server cannot
take is a 4xx (an HTTP version or transfer coding it does not implement too), answered and closed; an
app that raises is a 500 logged with its traceback, and the server goes on. With TLS, the front of
pgmedic.tlsfront takes the TLS connections and hands the plain bytes over a private Unix socket.

How it runs, and why: THREADS threads all wait in epoll_wait on one epoll set, each connection armed
one-shot. The kernel wakes exactly one waiter per event (epoll waiters are exclusive), and that thread
reads the request, runs the app and writes the answer itself, then re-arms the connection. So a request
costs no hand-over between threads: no I/O thread waking a worker and the worker waking it back, which
on this project's VMs (where every wake-up after an idle gap costs about a millisecond, and every page
of memory touched after one costs microseconds) was most of what waitress cost a scrape (measured
side by side with a trivial app, a new connection after 0.2 s idle: 10-17 ms of CPU per request for
waitress, 3-4 ms for a bare socket loop). Half-open requests hold a connection slot, never a thread: a
thread only leaves the epoll set with a whole request in hand. Idle connections are found by a timer (a timerfd in the same
epoll set, armed for the earliest expiry), so an idle server never wakes, and one whose clients close
their connections arms and disarms the timer without ever being woken by it.
"""

from __future__ import annotations

import contextlib
import ctypes
import email.utils
import io
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from .httpwire import HttpError, Request, RequestReader, error_response, response_head
from .tlsfront import TlsFront
from .webconfig import WebState

log = logging.getLogger(__name__)
HEADER_LIMIT = 16 * 1024  # bytes of request line and headers
IDLE_TIMEOUT = 10.0  # seconds a connection may take to send a whole request, or stay idle between requests
LINGER = 2.0  # seconds a refused request's connection is drained (unread input would turn the close into a reset)
SEND_TIMEOUT = 10.0  # seconds an answer may take to be sent (a client that does not read cannot hold a thread)
CONNECTION_LIMIT = 512  # open connections before the listener stops being polled
RECEIVE = 65536
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ONESHOT = select.EPOLLIN | select.EPOLLONESHOT

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Connection:
    """One client connection: its socket, what it sent so far, and since when it may be idle."""

    __slots__ = ("fd", "lingering", "owned", "peer", "reader", "since", "sock")

    def __init__(self, sock: socket.socket, peer: Any, reader: RequestReader) -> None:
        self.sock, self.fd, self.peer, self.reader = sock, sock.fileno(), peer, reader
        self.since = time.monotonic()
        self.lingering = False  # refused: input is drained and dropped until the client closes, or LINGER
        self.owned = True  # a thread is reading or answering it (not armed in the epoll set): never swept

    def expiry(self, idle_timeout: float) -> float:
        return self.since + (LINGER if self.lingering else idle_timeout)


class Server:
    """The server for APP on HOST:PORT (plain), or behind the in-process TLS front when the web
    configuration has tls_server_config; run() serves until close()."""

    def __init__(
        self, app: App, host: str, port: int, web: WebState, *, threads: int, ident: str, max_body: int,
        idle_timeout: float = IDLE_TIMEOUT, connection_limit: int = CONNECTION_LIMIT,
    ) -> None:  # fmt: skip
        self.app, self.ident, self.max_body = app, ident, max_body
        self.idle_timeout, self.connection_limit, self.threads = idle_timeout, connection_limit, max(1, threads)
        self.host, self.port = host, port
        self._closing = False
        self._stopped = threading.Event()
        self._front: TlsFront | None = None
        self._private: str | None = None
        self._conns: dict[int, Connection] = {}
        self._state = threading.Lock()  # the connection table, the listener's pause and the timer's arming
        self._paused = False
        self._alarm_at: float | None = None
        self._epoll = select.epoll()
        self._timer = Timer()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._listener: socket.socket | None = None
        try:
            if web.config.tls is None:
                family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
                self._listener = socket.create_server(address, family=family, backlog=128)
                self.port = self._listener.getsockname()[1]  # the one chosen, for port 0
            else:
                self._private = tempfile.mkdtemp(prefix="pgmedic-http-")  # 0700: only this user reaches the socket
                backend = os.path.join(self._private, "http.sock")
                self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._listener.bind(backend)
                os.chmod(backend, 0o600)
                self._listener.listen(128)
            self._listener.setblocking(False)
            self._epoll.register(self._wake_r, select.EPOLLIN)  # level-triggered: every thread sees it
            self._epoll.register(self._timer.fd, _ONESHOT)
            self._epoll.register(self._listener.fileno(), _ONESHOT)
            if web.config.tls is not None:
                self._front = TlsFront(host, port, backend, web.context, connection_limit)
                self._front.start()
        except BaseException:
            self.close()
            self._release()
            raise

    @property
    def scheme(self) -> str:
        return "https" if self._front else "http"

    def run(self) -> None:
        """Serve until close() (from any thread, or a signal handler in this one)."""
        workers = [
            threading.Thread(target=self._work, name=f"{self.ident}-{i}", daemon=True) for i in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        try:
            while not self._stopped.wait():
                pass
        finally:
            self.close()
            budget = time.monotonic() + 1.0  # threads still in an app call finish on their own (daemons)
            for worker in workers:
                worker.join(max(0.0, budget - time.monotonic()))
            self._release()

    def close(self) -> None:
        """Stop run(): every waiting thread sees the shutdown pipe; safe from a signal handler, twice too."""
        self._closing = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._stopped.set()
        if self._front is not None:
            self._front.stop()
            self._front = None

    def _release(self) -> None:
        """The listener, the connections and the descriptors, once no thread polls them any more."""
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._conns.values()):
            with contextlib.suppress(OSError):
                conn.sock.close()
        self._conns.clear()
        self._epoll.close()
        self._timer.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)

    # ---- the threads ------------------------------------------------------------------------------
    def _work(self) -> None:
        assert self._listener is not None
        listener = self._listener.fileno()
        while not self._closing:
            try:
                events = self._epoll.poll(-1, 1)
            except (OSError, ValueError):  # closed under us: shutting down
                return
            for fd, _mask in events:
                if fd == self._wake_r:
                    return
                conn = None
                try:
                    if fd == self._timer.fd:
                        self._sweep()
                    elif fd == listener:
                        self._accept()
                    elif (conn := self._conns.get(fd)) is not None:
                        conn.owned = True
                        self._readable(conn)
                except Exception:  # a bug here must cost one connection, never a thread
                    log.exception("HTTP server: event on descriptor %d", fd)
                    if conn is not None:
                        self._drop(conn)

    def _accept(self) -> None:
        """One new connection (the listener is re-armed at once, so another thread can take the next)."""
        assert self._listener is not None
        try:
            sock, peer = self._listener.accept()
        except BlockingIOError:  # another thread took it
            self._rearm(self._listener.fileno())
            return
        except OSError as exc:  # out of descriptors: not polled again until a connection closes, or a second
            log.warning("accept failed: %s", exc)
            with self._state:
                self._paused = True
                self._alarm(time.monotonic() + 1.0)
            return
        with self._state:
            sock.setblocking(False)
            conn = self._conns[sock.fileno()] = Connection(sock, peer, RequestReader(HEADER_LIMIT, self.max_body))
            self._epoll.register(conn.fd, 0)
            self._paused = len(self._conns) >= self.connection_limit
            if not self._paused:
                self._rearm(self._listener.fileno())
        self._readable(conn)  # the request has often arrived with the connection: no second wait for it

    def _readable(self, conn: Connection) -> None:
        """Read what CONN sent; serve each whole request; arm it again for the rest or the next."""
        try:
            data = conn.sock.recv(RECEIVE)
        except BlockingIOError:
            self._wait_for(conn)
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
        elif conn.lingering:
            self._wait_for(conn)
        else:
            conn.reader.feed(data)
            self._serve(conn)

    def _serve(self, conn: Connection) -> None:
        """Answer every whole request CONN has sent (pipelined ones too), then wait for more from it."""
        while True:
            try:
                request = conn.reader.next_request()
            except HttpError as error:
                self._refuse(conn, error)
                return
            if request is None:
                if conn.reader.take_continue():
                    with contextlib.suppress(OSError):
                        conn.sock.send(CONTINUE)
                self._wait_for(conn)
                return
            keep = request.keep_alive and not self._closing
            try:
                conn.sock.settimeout(SEND_TIMEOUT)
                conn.sock.sendall(self._answer(conn, request, keep))
                conn.sock.setblocking(False)
            except OSError:
                keep = False
            if not keep:
                self._drop(conn, graceful=True)
                return
            conn.since = time.monotonic()

    def _refuse(self, conn: Connection, error: HttpError) -> None:
        """Answer a refused request and close: its output side at once, its input once drained (LINGER)."""
        with contextlib.suppress(OSError):
            conn.sock.send(error_response(error))
            conn.sock.shutdown(socket.SHUT_WR)
        conn.lingering = True
        conn.since = time.monotonic()
        conn.reader.buffer.clear()
        self._wait_for(conn)

    def _wait_for(self, conn: Connection) -> None:
        """Arm CONN for its next input, and the idle timer for it if none is armed earlier."""
        with self._state:
            if self._conns.get(conn.fd) is not conn or self._closing:  # closed (its number maybe reused)
                return
            self._alarm(conn.expiry(self.idle_timeout))
            conn.owned = False
            self._rearm(conn.fd)

    def _alarm(self, at: float) -> None:
        """The idle timer armed for AT at the latest (under _state)."""
        if self._alarm_at is None or at < self._alarm_at:
            self._alarm_at = at
            self._timer.set(at)

    def _drop(self, conn: Connection, graceful: bool = False) -> None:
        """Close CONN; GRACEFUL: after an answer, with its end of stream sent first."""
        with self._state:
            if self._conns.get(conn.fd) is not conn:  # closed already: its number may be another's by now
                return
            del self._conns[conn.fd]
            with contextlib.suppress(OSError, ValueError):  # ValueError: the epoll set closed (shutting down)
                self._epoll.unregister(conn.fd)
            if not self._closing:  # else the timer and the listener are closed, or about to be
                if not self._conns and self._alarm_at is not None:
                    self._alarm_at = None
                    self._timer.set(None)
                self._resume()
        with contextlib.suppress(OSError):
            if graceful:
                conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.close()

    def _resume(self) -> None:
        """The listener polled again after a pause, if there is room now (under _state)."""
        if self._paused and len(self._conns) < self.connection_limit and self._listener is not None:
            self._paused = False
            self._rearm(self._listener.fileno())

    def _sweep(self) -> None:
        """Close the connections past their expiry that no thread holds; arm the timer for the next one."""
        self._timer.drain()
        now = time.monotonic()
        with self._state:
            waiting = [c for c in self._conns.values() if not c.owned]
        for conn in waiting:
            if conn.expiry(self.idle_timeout) <= now:
                self._drop(conn)
        with self._state:
            upcoming = [c.expiry(self.idle_timeout) for c in self._conns.values() if not c.owned]
            self._alarm_at = min(upcoming) if upcoming else None
            self._timer.set(self._alarm_at)
            self._resume()
            if self._paused and self._alarm_at is None:  # out of descriptors with nothing open: retry in a second
                self._alarm(now + 1.0)
            self._rearm(self._timer.fd)

    def _rearm(self, fd: int) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed meanwhile
            self._epoll.modify(fd, _ONESHOT)

    # ---- WSGI -------------------------------------------------------------------------------------
    def _answer(self, conn: Connection, request: Request, keep: bool) -> bytes:
        """The whole response to REQUEST from the app (a 500 if the app fails)."""
        environ = self._environ(conn, request)
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            if started and not exc_info:
                raise AssertionError("start_response called twice without exc_info")
            started[:] = [status, headers]
            return chunks.append

        try:
            result = self.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            if not started:
                raise RuntimeError("the app returned without calling start_response")
            status, headers = started
        except Exception:
            log.exception("%s %s failed", request.method, request.target[:200])
            status, headers, chunks = (
                "500 Internal Server Error",
                [("Content-Type", "text/plain")],
                [b"internal error\n"],
            )
        body = b"".join(chunks)
        headers = [(n, v) for n, v in headers if n.lower() not in ("connection", "transfer-encoding", "date")]
        if not any(n.lower() == "content-length" for n, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        headers.append(("Date", _http_date()))
        return response_head(status, headers, close=not keep) + (b"" if request.method == "HEAD" else body)

    def _environ(self, conn: Connection, request: Request) -> dict[str, Any]:
        target = request.target
        if target.startswith(("http://", "https://")):  # absolute form: the path is what follows the authority
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        peer = conn.peer if isinstance(conn.peer, tuple) else ("", 0)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": request.version,
            "SERVER_SOFTWARE": self.ident,
            "REMOTE_ADDR": peer[0],
            "REMOTE_PORT": str(peer[1]),
            "CONTENT_LENGTH": str(len(request.body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.scheme,
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.headers:
            if "_" in name or name in ("content-length", "transfer-encoding"):  # x_a would pass for x-a in WSGI
                continue
            key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Timer:
    """A one-shot timerfd on CLOCK_MONOTONIC (the clock of time.monotonic()), armed for an absolute time.

    Through libc: os.timerfd_create is Python 3.13's. Arming and disarming are one system call each and
    wake nobody, unlike telling a sleeping sweeper thread about a new deadline.
    """

    _libc = ctypes.CDLL(None, use_errno=True)
    CLOCK_MONOTONIC, ABSTIME = 1, 1

    def __init__(self) -> None:
        self.fd = self._libc.timerfd_create(self.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    def set(self, at: float | None) -> None:
        """Fire at monotonic time AT (None: never)."""
        spec = _Itimerspec()
        if at is not None:
            seconds = max(at, 1e-6)
            spec.it_value.tv_sec, spec.it_value.tv_nsec = int(seconds), max(1, int(seconds % 1 * 1e9))
        if self._libc.timerfd_settime(self.fd, self.ABSTIME, ctypes.byref(spec), None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def drain(self) -> None:
        """Read the expiry count, so the descriptor is not readable again until the next expiry."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def stop_on_signals(server: Server) -> None:
    """SIGTERM and SIGINT close SERVER (its run() returns), so the caller's cleanup runs."""

    def shutdown(signum: int, _frame: object) -> None:
        log.warning("signal %d: stopping", signum)
        server.close()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
