"""Both servers against hostile clients on 127.0.0.1, bounded in time: half-open connections do not
starve real requests, bodies are refused before they are buffered, odd methods get 405 with Allow."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

from pgmedic.demo.sandbox import Cluster, free_port, http, pgmedic_service, write_config, write_secret
from tests.harness import alert_payload

TOKEN = "hostile-token"
HALF_OPEN = 110  # one more than the 100 connections many servers allow by default, as the probe


def _services(cluster: Cluster, tmp_path: Path, services: list) -> tuple[str, str]:
    token = write_secret(tmp_path / "token", TOKEN)
    cfg = write_config(tmp_path / "pgmedic.yaml", [cluster], tmp_path / "state", remediator={"token_file": str(token)})
    exporter = pgmedic_service("exporter", cfg, tmp_path, free_port())
    remediator = pgmedic_service("remediator", cfg, tmp_path, free_port())
    services += [exporter, remediator]
    return exporter.url, remediator.url


def _half_open(url: str, n: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    out = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        out.append(s)
    return out


def _timed_scrape(url: str) -> float:
    began = time.monotonic()
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        assert response.status == 200 and b"pg_up" in response.read()
    return time.monotonic() - began


def test_half_open_connections_do_not_delay_scrapes_or_webhooks(
    cluster: Cluster, tmp_path: Path, services: list
) -> None:
    exporter, remediator = _services(cluster, tmp_path, services)
    idle = min(_timed_scrape(exporter) for _ in range(3))
    sockets = _half_open(exporter, HALF_OPEN) + _half_open(remediator, HALF_OPEN)
    try:
        took = [_timed_scrape(exporter) for _ in range(3)]
        began = time.monotonic()
        status, _ = http("POST", remediator + "/api/v1/alerts", alert_payload("X", "main", remediation="none"), TOKEN)
        webhook = time.monotonic() - began
        assert status == 200
        assert http("GET", remediator + "/healthz")[0] == 200
    finally:
        for s in sockets:
            s.close()
    assert max(took) < max(1.0, 5 * idle), (
        f"scrapes took {took} with {HALF_OPEN} half-open connections (idle {idle:.3f}s)"
    )
    assert webhook < 1.0, f"webhook took {webhook:.2f}s"


def test_idle_half_open_connections_are_closed(cluster: Cluster, tmp_path: Path, services: list) -> None:
    exporter, _ = _services(cluster, tmp_path, services)
    (s,) = _half_open(exporter, 1)
    s.settimeout(20)
    began = time.monotonic()
    assert s.recv(1024) == b"", "closed by the server"
    assert time.monotonic() - began < 15
    s.close()


def test_bodies_are_refused_before_buffering_and_methods_get_allow(
    cluster: Cluster, tmp_path: Path, services: list
) -> None:
    exporter, remediator = _services(cluster, tmp_path, services)
    host, port = remediator.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
        answer = b""
        try:
            for _ in range(8):  # 8 MiB offered without credentials
                s.sendall(chunk)
        except OSError:
            pass  # the server closed the connection: it stopped reading
        s.settimeout(10)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        request = urllib.request.Request(exporter + "/metrics", data=b"" if method != "DELETE" else None, method=method)
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"{method} /metrics answered 2xx")
        except urllib.error.HTTPError as exc:
            assert exc.code in (405, 413) and (exc.code == 413 or exc.headers["Allow"] == "GET, HEAD"), (
                method,
                exc.code,
            )
    request = urllib.request.Request(remediator + "/api/v1/alerts", method="GET")
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("GET on the webhook answered 2xx")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405 and "POST" in exc.headers["Allow"]
