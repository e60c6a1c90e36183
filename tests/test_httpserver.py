"""pgmedic's HTTP server on its own: the wire rules as pure functions, then a real server on 127.0.0.1
with a small WSGI app, spoken to over raw sockets (keep-alive, pipelining, HEAD, 100-continue, chunked
bodies, every refusal a 4xx that closes, idle and half-open connections closed, the connection limit,
a failing app, a slow request that does not hold up another), each bounded in time."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from pgmedic.demo.sandbox import make_pki
from pgmedic.httpserver import Server
from pgmedic.httpwire import ChunkedBody, HttpError, RequestReader, body_framing, parse_head
from pgmedic.webconfig import WebState
from tests.test_tls import web_config

# ---- the wire, pure --------------------------------------------------------------------------------


def test_parse_head_reads_method_target_version_and_headers() -> None:
    request = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept:  text/plain \r\nX-A: 1")
    assert (request.method, request.target, request.version) == ("GET", "/metrics?x=1", "HTTP/1.1")
    assert request.headers == [("host", "a"), ("accept", "text/plain"), ("x-a", "1")]
    assert request.keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: Close").keep_alive
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive").keep_alive


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics", HTTPStatus.BAD_REQUEST),
        (b"GET  /metrics HTTP/1.1", HTTPStatus.BAD_REQUEST),
        (b"G(T / HTTP/1.1", HTTPStatus.BAD_REQUEST),
        (b"GET / HTTP/2.0", HTTPStatus.BAD_REQUEST),
        (b"GET / FTP/1.1", HTTPStatus.BAD_REQUEST),
        (b"GET /\x01 HTTP/1.1", HTTPStatus.BAD_REQUEST),
        (b"GET / HTTP/1.1\r\nHost : a", HTTPStatus.BAD_REQUEST),  # space before the colon: smuggling
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded", HTTPStatus.BAD_REQUEST),
        (b"GET / HTTP/1.1\r\nNoColon", HTTPStatus.BAD_REQUEST),
        (b"GET / HTTP/1.1\r\nX-A: a\x00b", HTTPStatus.BAD_REQUEST),
    ],
)
def test_malformed_heads_are_refused_with_their_status(head: bytes, status: HTTPStatus) -> None:
    with pytest.raises(HttpError) as caught:
        parse_head(head)
    assert caught.value.status is status


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        (b"", 0),
        (b"\r\nContent-Length: 10", 10),
        (b"\r\nContent-Length: 10\r\nContent-Length: 10", 10),
        (b"\r\nTransfer-Encoding: chunked", None),
        (b"\r\nContent-Length: 10\r\nContent-Length: 11", HTTPStatus.BAD_REQUEST),
        (b"\r\nContent-Length: -1", HTTPStatus.BAD_REQUEST),
        (b"\r\nContent-Length: 1e3", HTTPStatus.BAD_REQUEST),
        (b"\r\nContent-Length: 101", HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
        (b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", HTTPStatus.BAD_REQUEST),
        (b"\r\nTransfer-Encoding: gzip, chunked", HTTPStatus.BAD_REQUEST),
    ],
)
def test_body_framing(headers: bytes, outcome: int | HTTPStatus | None) -> None:
    request = parse_head(b"POST / HTTP/1.1" + headers)
    if isinstance(outcome, HTTPStatus):
        with pytest.raises(HttpError) as caught:
            body_framing(request, 100)
        assert caught.value.status is outcome
    else:
        assert body_framing(request, 100) == outcome


def test_chunked_bodies_decode_in_pieces_and_stop_at_the_limit() -> None:
    wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1\r\n"
    decoder = ChunkedBody(limit=100)
    rest = bytearray()
    for i in range(len(wire)):  # one byte at a time: every state split at every point
        rest.append(wire[i])
        decoder.feed(rest)
    assert decoder.done and bytes(decoder.body) == b"Wikipedia"
    assert bytes(rest) == b"GET / HTTP/1.1\r\n", "what follows the body is left for the next request"
    with pytest.raises(HttpError) as caught:
        ChunkedBody(limit=8).feed(bytearray(b"5\r\nhello\r\n5\r\n"))
    assert caught.value.status is HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    for bad in (b"zz\r\n", b"5\r\nhelloXX\r\n", b"1" * 17 + b"\r\n", b"5" * 5000):
        with pytest.raises(HttpError):
            ChunkedBody(limit=10**9).feed(bytearray(bad))


def test_reader_caps_headers_and_splits_pipelined_requests() -> None:
    reader = RequestReader(header_limit=64, max_body=10)
    reader.feed(b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\nGET /c")
    first, second = reader.next_request(), reader.next_request()
    assert first is not None and (first.target, first.body) == ("/a", b"abc")
    assert second is not None and second.target == "/b"
    assert reader.next_request() is None and reader.started
    reader = RequestReader(header_limit=64, max_body=10)
    reader.feed(b"GET / HTTP/1.1\r\nX: " + b"y" * 100)
    with pytest.raises(HttpError) as caught:
        reader.next_request()
    assert caught.value.status is HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    reader = RequestReader(header_limit=64, max_body=10)
    reader.feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert reader.next_request() is None
    assert reader.take_continue() and not reader.take_continue(), "answered once"


# ---- a real server ---------------------------------------------------------------------------------


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/fail":
        raise RuntimeError("the app broke")
    if path == "/slow":
        time.sleep(1.5)
    body = json.dumps({
        "method": environ["REQUEST_METHOD"], "path": path, "query": environ["QUERY_STRING"],
        "body": environ["wsgi.input"].read().decode(), "agent": environ.get("HTTP_USER_AGENT"),
        "spoof": environ.get("HTTP_X_USER"),
    }).encode()  # fmt: skip
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@contextlib.contextmanager
def _server(**limits: Any) -> Iterator[tuple[str, int]]:
    server = Server(_app, "127.0.0.1", 0, WebState(None), threads=3, ident="test", max_body=100, **limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server._listener is not None
    try:
        yield server._listener.getsockname()
    finally:
        server.close()
        thread.join(5)
    assert not thread.is_alive(), "run() returns after close()"


@pytest.fixture
def address() -> Iterator[tuple[str, int]]:
    with _server() as addr:
        yield addr


def _connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


_unread: dict[int, bytes] = {}  # by socket: what a recv brought beyond the response read (pipelining)


def _response(sock: socket.socket, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-cased names) and body (by its Content-Length; none for HEAD)."""
    data = _unread.pop(id(sock), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response: {data!r}"
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    _unread[id(sock)] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def _closed(sock: socket.socket, within: float = 5.0) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_keep_alive_pipelining_head_and_query(address: tuple[str, int]) -> None:
    with _connect(address) as sock:
        sock.sendall(b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n")
        status, headers, body = _response(sock)
        assert status == 200 and "date" in headers and "connection" not in headers
        assert json.loads(body) == {
            "method": "GET", "path": "/a b", "query": "x=1", "body": "", "agent": "t", "spoof": None,
        }  # fmt: skip
        sock.sendall(b"HEAD /h HTTP/1.1\r\n\r\nGET /p HTTP/1.1\r\nX_User: root\r\n\r\n")  # pipelined
        status, headers, body = _response(sock, head=True)
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""
        status, _, body = _response(sock)
        assert status == 200 and json.loads(body)["path"] == "/p"
        assert json.loads(body)["spoof"] is None, "a header with an underscore never poses as X-User"
        sock.sendall(b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = _response(sock)
        assert status == 200 and headers["connection"] == "close"
        assert _closed(sock)


def test_bodies_by_length_chunked_and_after_100_continue(address: tuple[str, int]) -> None:
    with _connect(address) as sock:
        sock.sendall(b"POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert json.loads(_response(sock)[2])["body"] == "hello"
        sock.sendall(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert json.loads(_response(sock)[2])["body"] == "abcde"
        sock.sendall(b"POST /b HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"ok")
        assert json.loads(_response(sock)[2])["body"] == "ok"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"65\r\n" + b"x" * 101, 413),
    ],
)
def test_refusals_are_4xx_and_close(address: tuple[str, int], request_bytes: bytes, status: int) -> None:
    with _connect(address) as sock:
        sock.sendall(request_bytes)
        got, headers, body = _response(sock)
        assert got == status and headers["connection"] == "close" and body.startswith(str(status).encode())
        assert _closed(sock)


def test_a_large_refused_body_is_not_read_and_the_answer_arrives(address: tuple[str, int]) -> None:
    with _connect(address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):
            for _ in range(64):  # 64 MiB offered
                sock.sendall(b"100000\r\n" + b"x" * 0x100000 + b"\r\n")
        assert _response(sock)[0] == 413


def test_a_failing_app_is_a_500_and_the_server_goes_on(address: tuple[str, int]) -> None:
    with _connect(address) as sock:
        sock.sendall(b"GET /fail HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n")
        assert _response(sock)[0] == 500
        assert _response(sock)[0] == 200


def test_a_slow_request_does_not_hold_up_another(address: tuple[str, int]) -> None:
    with _connect(address) as slow, _connect(address) as fast:
        slow.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
        time.sleep(0.1)
        began = time.monotonic()
        fast.sendall(b"GET /fast HTTP/1.1\r\n\r\n")
        assert _response(fast)[0] == 200
        assert time.monotonic() - began < 1.0
        assert _response(slow)[0] == 200


def test_half_open_and_idle_connections_are_closed_and_the_limit_holds() -> None:
    with _server(idle_timeout=1.0, connection_limit=20) as address:
        half = [_connect(address) for _ in range(10)]
        for s in half:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        idle = _connect(address)
        idle.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert _response(idle)[0] == 200  # then silent, kept alive
        began = time.monotonic()
        for s in [*half, idle]:
            assert _closed(s)
        assert 0.8 < time.monotonic() - began < 3.0, "closed after the idle timeout, not before"
        for s in [*half, idle]:
            s.close()
        over = [_connect(address) for _ in range(25)]  # five more than the limit wait in the backlog
        try:
            for s in over[:20]:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            late = over[-1]
            late.sendall(b"GET /late HTTP/1.1\r\n\r\n")
            late.settimeout(0.5)
            with pytest.raises(TimeoutError):
                late.recv(1)  # not accepted while twenty are open
            late.settimeout(5)
            assert _response(late)[0] == 200, "accepted once the idle ones were closed"
        finally:
            for s in over:
                s.close()


def test_behind_the_tls_front_the_plain_socket_is_private(tmp_path: Path) -> None:
    """With TLS the server listens on a Unix socket (0600, in a 0700 directory) only the front reaches."""
    (tmp_path / "pki").mkdir()
    web = WebState(str(web_config(tmp_path / "web.yml", make_pki(tmp_path / "pki"))))
    server = Server(_app, "127.0.0.1", 0, web, threads=1, ident="test", max_body=0)
    try:
        assert server._private is not None and server.scheme == "https"
        assert (Path(server._private).stat().st_mode & 0o777) == 0o700
        assert (Path(server._private, "http.sock").stat().st_mode & 0o777) == 0o600
    finally:
        server.close()
        server._release()


def test_closing_a_connection_twice_never_closes_the_one_that_took_its_number() -> None:
    """A thread late with a connection another already closed (the idle sweep, a failed read) must not
    close the new connection the kernel gave the same descriptor number."""
    server = Server(_app, "127.0.0.1", 0, WebState(None), threads=2, ident="test", max_body=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert server._listener is not None
        address = server._listener.getsockname()
        with _connect(address) as first:
            first.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert _response(first)[0] == 200
            (stale,) = server._conns.values()
            server._drop(stale)
            assert _closed(first)
        for _ in range(20):  # until the kernel hands the same number to a new connection
            second = _connect(address)
            second.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert _response(second)[0] == 200
            if stale.fd in server._conns:
                break
            second.close()
        assert stale.fd in server._conns and server._conns[stale.fd] is not stale, "the number is reused"
        server._drop(stale)  # late, again
        second.sendall(b"GET /still HTTP/1.1\r\n\r\n")
        assert _response(second)[0] == 200, "the new connection was not touched"
        second.close()
    finally:
        server.close()
        thread.join(5)
