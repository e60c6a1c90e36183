"""HTTP/1.1 on the wire, as pgmedic's server reads and writes it: pure functions over bytes, no sockets.

The server (pgmedic.httpserver) feeds what it received to ``RequestReader``, which says whether a whole
request is there yet, and refuses a bad one with the status to answer (``HttpError``) before buffering
more than the limits allow: the request line and headers are capped, a body is refused once its declared
(or, chunked, its decoded) length passes the app's limit. What could smuggle a second request past a
proxy (a header name with spaces, folded lines, Content-Length twice with different values,
Content-Length with Transfer-Encoding, a transfer coding other than chunked) is a 400, not a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus

TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
CHUNK_LINE_LIMIT = 4096  # bytes of one chunk-size line (its extensions included), or of one trailer line


class HttpError(Exception):
    """A request refused: STATUS to answer and a one-line reason; the connection is closed after it."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Request:
    """One parsed request: method, target and version as sent, headers in order (names lower-cased)."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    expects_continue: bool = False

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one (RFC 9112, 9.3)."""
        tokens = {t.strip().lower() for name, value in self.headers if name == "connection" for t in value.split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens and "close" not in tokens


def parse_head(head: bytes) -> Request:
    """The request line and headers (HEAD, without the blank line that ends them); HttpError if malformed."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version = parts
    if version not in VERSIONS:  # a 400, not 505: every request the server cannot take is the client's 4xx
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line: only HTTP/1.0 and HTTP/1.1")
    if any(b < 0x21 or b == 0x7F for b in target):
        raise HttpError(HTTPStatus.BAD_REQUEST, "control characters in the request target")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.fullmatch(name):  # also folded lines (leading space) and "Name :"
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
        value = value.strip(b" \t")
        if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
            raise HttpError(HTTPStatus.BAD_REQUEST, "control characters in a header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    return Request(method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"), headers)


def body_framing(request: Request, max_body: int) -> int | None:
    """The body's length from Content-Length (0 without one), or None for a chunked body; HttpError for
    framing that cannot be trusted, or a declared length over MAX_BODY (refused before any of it is read)."""
    lengths = {value for name, value in request.headers if name == "content-length"}
    codings = [value for name, value in request.headers if name == "transfer-encoding"]
    if codings:
        if lengths:
            raise HttpError(HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding")
        if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
            raise HttpError(HTTPStatus.BAD_REQUEST, "only the chunked transfer coding is supported")
        return None
    if len(lengths) > 1:
        raise HttpError(HTTPStatus.BAD_REQUEST, "conflicting Content-Length headers")
    value = lengths.pop() if lengths else "0"
    if not value.isdigit() or not value.isascii():
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    if int(value) > max_body:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request bodies are limited to {max_body} bytes")
    return int(value)


@dataclass
class ChunkedBody:
    """An incremental decoder of a chunked body that refuses it once it decodes past LIMIT bytes."""

    limit: int
    body: bytearray = field(default_factory=bytearray)
    done: bool = False
    _left: int = 0  # data bytes of the current chunk still to come
    _state: str = "size"  # size, data, data-end, trailer

    def feed(self, data: bytearray) -> None:
        """Consume what it can of DATA (removed from it); leaves the rest, such as a pipelined request."""
        while data and not self.done:
            if self._state == "data":
                taken = data[: self._left]
                self.body += taken
                del data[: len(taken)]
                self._left -= len(taken)
                if not self._left:
                    self._state = "data-end"
                continue
            line = _take_line(data)
            if line is None:
                return
            if self._state == "data-end":
                if line:
                    raise HttpError(HTTPStatus.BAD_REQUEST, "malformed chunk")
                self._state = "size"
            elif self._state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or len(size) > 16 or any(chr(b) not in "0123456789abcdefABCDEF" for b in size):
                    raise HttpError(HTTPStatus.BAD_REQUEST, "malformed chunk size")
                self._left = int(size, 16)
                if len(self.body) + self._left > self.limit:
                    raise HttpError(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request bodies are limited to {self.limit} bytes"
                    )
                self._state = "data" if self._left else "trailer"
            elif not line:  # the blank line after the trailers
                self.done = True


def _take_line(data: bytearray) -> bytes | None:
    """The first CRLF-ended line of DATA (removed from it), None until it is whole; HttpError past the cap."""
    end = data.find(b"\r\n", 0, CHUNK_LINE_LIMIT + 2)
    if end < 0:
        if len(data) > CHUNK_LINE_LIMIT:
            raise HttpError(HTTPStatus.BAD_REQUEST, "chunk line too long")
        return None
    line = bytes(data[:end])
    del data[: end + 2]
    return line


class RequestReader:
    """One connection's bytes in, whole requests out; holds at most HEADER_LIMIT plus MAX_BODY of a request."""

    def __init__(self, header_limit: int, max_body: int) -> None:
        self.header_limit = header_limit
        self.max_body = max_body
        self.buffer = bytearray()
        self._request: Request | None = None  # its head read, its body not yet whole
        self._length = 0
        self._chunked: ChunkedBody | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data

    @property
    def started(self) -> bool:
        """Whether part of a request has arrived (a connection between requests has none)."""
        return bool(self.buffer) or self._request is not None

    def next_request(self) -> Request | None:
        """The next whole request from what was fed, or None until it is whole; HttpError if it is refused."""
        if self._request is None:
            while self.buffer.startswith(b"\r\n"):  # RFC 9112 2.2: blank lines before a request are ignored
                del self.buffer[:2]
            end = self.buffer.find(b"\r\n\r\n", 0, self.header_limit + 4)
            if end < 0:
                if len(self.buffer) > self.header_limit:
                    raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request line and headers too large")
                return None
            request = parse_head(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
            framing = body_framing(request, self.max_body)
            self._chunked = ChunkedBody(self.max_body) if framing is None else None
            self._length = framing or 0
            request.expects_continue = any(
                name == "expect" and value.lower() == "100-continue" for name, value in request.headers
            ) and (framing is None or framing > 0)
            self._request = request
        request = self._request
        if self._chunked is not None:
            self._chunked.feed(self.buffer)
            if not self._chunked.done:
                return None
            request.body = bytes(self._chunked.body)
        else:
            if len(self.buffer) < self._length:
                return None
            request.body = bytes(self.buffer[: self._length])
            del self.buffer[: self._length]
        self._request = self._chunked = None
        return request

    def take_continue(self) -> bool:
        """Whether the client waits for "100 Continue" before sending the body of the request whose head
        was read: True once per request (the caller answers it), and only while that body is incomplete."""
        if self._request is not None and self._request.expects_continue:
            self._request.expects_continue = False
            return True
        return False


def response_head(status: str, headers: list[tuple[str, str]], close: bool) -> bytes:
    """The status line and headers of a response (HTTP/1.1); HttpError-free: the app's own values."""
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_response(error: HttpError) -> bytes:
    """The whole answer to a refused request: its status and reason, and the connection closes."""
    body = f"{error.status.value} {error.status.phrase}: {error}\n".encode("latin-1", "replace")
    head = response_head(
        f"{error.status.value} {error.status.phrase}",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        close=True,
    )
    return head + body
