"""TLS and basic auth through `--web.config.file` (exporter-toolkit format), on both servers, for real:
certificates made by openssl, clients over real sockets, and a real Prometheus scraping over TLS."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from pgmedic.demo.sandbox import (
    Cluster,
    Service,
    free_port,
    make_pki,
    pgmedic_service,
    start_service,
    wait_for,
    write_config,
    write_secret,
)
from pgmedic.errors import ConfigError
from pgmedic.webconfig import load_web_config
from tests.harness import TOKEN, alert_payload

PASSWORD = "scrape-secret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def web_config(path: Path, pki: Path, users: dict[str, str] | None = None, **tls: Any) -> Path:
    doc: dict[str, Any] = {
        "tls_server_config": {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key"), **tls}
    }
    if users:
        doc["basic_auth_users"] = {
            user: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode() for user, pw in users.items()
        }
    path.write_text(json.dumps(doc))
    return path


def https(
    url: str, pki: Path, user: str | None = None, password: str = PASSWORD, client_cert: bool = False,
    headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None,
) -> tuple[int, str]:  # fmt: skip
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client_cert:
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def https_url(service: Service) -> str:
    return service.url.replace("http://", "https://")


@pytest.fixture
def exporter_with(cluster: Cluster, tmp_path: Path, services: list) -> Callable[[Path], Service]:
    def start(web: Path) -> Service:
        cfg = write_config(
            tmp_path / "pgmedic.yaml", [cluster], tmp_path / "state", exporter={"web_config_file": str(web)}
        )
        service = pgmedic_service("exporter", cfg, tmp_path)
        services.append(service)
        return service

    return start


# ---- the file -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "users", "expected"),
    [
        ({"client_auth_type": "RequestClientCert"}, None, "not supported"),
        ({"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}, None, "a Go TLS setting"),
        ({"min_version": "TLS14"}, None, "expected one of TLS10"),
        ({"client_auth_type": "RequireAndVerifyClientCert"}, None, "client_ca_file"),
        ({"colour": "blue"}, None, "unknown key"),
        ({}, {"prom": "plaintext-password"}, "bcrypt hash"),
    ],
)
def test_a_bad_web_config_is_one_line_naming_the_setting(
    pki: Path, tmp_path: Path, tls: dict[str, Any], users: dict[str, str] | None, expected: str
) -> None:
    path = web_config(tmp_path / "web.yml", pki, **tls)
    if users:
        doc = json.loads(path.read_text())
        doc["basic_auth_users"] = users
        path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        load_web_config(str(path))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_key_file_others_can_read_is_refused(pki: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes((pki / "server.key").read_bytes())
    loose.chmod(0o644)
    path = tmp_path / "web.yml"
    path.write_text(json.dumps({"tls_server_config": {"cert_file": str(pki / "server.crt"), "key_file": str(loose)}}))
    with pytest.raises(ConfigError, match="key_file"):
        load_web_config(str(path))


# ---- the exporter ---------------------------------------------------------------------------------


def test_exporter_over_tls_with_basic_auth(pki: Path, tmp_path: Path, exporter_with) -> None:
    service = exporter_with(web_config(tmp_path / "web.yml", pki, {"prom": PASSWORD}))
    url = https_url(service) + "/metrics"
    status, text = https(url, pki, "prom")
    assert status == 200 and 'pg_up{pg_instance="main"} 1.0' in text
    assert https(url, pki, "prom", password="wrong")[0] == 401
    assert https(url, pki)[0] == 401
    assert https(url, pki, "nobody")[0] == 401
    status, _ = https(url, pki, "prom", method="POST", body=b"")
    assert status == 405
    # Plain HTTP to the TLS port: no HTTP answer at all, the connection is dropped.
    with socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            answer = s.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert not answer.startswith(b"HTTP/"), answer


def test_client_certificates_when_required(pki: Path, tmp_path: Path, exporter_with) -> None:
    web = web_config(
        tmp_path / "web.yml", pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki / "ca.crt")
    )
    service = exporter_with(web)
    url = https_url(service) + "/metrics"
    assert https(url, pki, client_cert=True)[0] == 200
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        https(url, pki, client_cert=False)


def test_sighup_swaps_certificate_and_users_without_dropping_a_scrape(pki: Path, tmp_path: Path, exporter_with) -> None:
    web = web_config(tmp_path / "web.yml", pki, {"prom": PASSWORD})
    service = exporter_with(web)
    url = https_url(service) + "/metrics"
    results: list[int] = []
    stop = threading.Event()

    def scrape_forever() -> None:
        while not stop.is_set():
            results.append(https(url, pki, "prom")[0])
            time.sleep(0.02)

    thread = threading.Thread(target=scrape_forever)
    thread.start()
    try:
        time.sleep(0.5)
        doc = json.loads(web.read_text())
        doc["tls_server_config"].update(cert_file=str(pki / "server2.crt"), key_file=str(pki / "server2.key"))
        doc["basic_auth_users"]["grafana"] = bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=4)).decode()
        web.write_text(json.dumps(doc))
        os.kill(service.proc.pid, signal.SIGHUP)
        wait_for(lambda: https(url, pki, "grafana", password="other")[0] == 200, 10, "the new user")
        served = _peer_certificate_cn(service)
        assert served == "server2", served
        web.write_text("tls_server_config: [broken")  # a broken file on SIGHUP: the old one stays
        os.kill(service.proc.pid, signal.SIGHUP)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(20)
    assert len(results) > 20 and set(results) == {200}, results
    assert https(url, pki, "grafana", password="other")[0] == 200
    assert "web config not reloaded" in service.log()


def _peer_certificate_cn(service: Service) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    out = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der, capture_output=True, timeout=10
    ).stdout.decode()
    return out.strip().rsplit("=", 1)[-1].strip()


def test_prometheus_scrapes_over_tls_with_basic_auth(pki: Path, tmp_path: Path, exporter_with, services: list) -> None:
    service = exporter_with(web_config(tmp_path / "web.yml", pki, {"prom": PASSWORD}))
    password_file = write_secret(tmp_path / "scrape.password", PASSWORD)
    target = service.url.removeprefix("http://")
    prom_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {
                "job_name": "pgmedic", "scheme": "https", "static_configs": [{"targets": [target]}],
                "tls_config": {"ca_file": str(pki / "ca.crt")},
                "basic_auth": {"username": "prom", "password_file": str(password_file)},
            },
            {
                "job_name": "wrong-password", "scheme": "https", "static_configs": [{"targets": [target]}],
                "tls_config": {"ca_file": str(pki / "ca.crt")},
                "basic_auth": {"username": "prom", "password": "wrong"},
            },
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    prometheus = start_service(
        "prometheus",
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        tmp_path,
        prom_port,
    )
    services.append(prometheus)

    def query(expr: str) -> list[dict[str, Any]]:
        """The result of EXPR; empty while Prometheus still starts (503 until its storage is ready)."""
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={urllib.request.quote(expr)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())["data"]["result"]
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                return []
            raise

    wait_for(lambda: query('pg_up{job="pgmedic",pg_instance="main"} == 1'), 30, "pg_up scraped over TLS")
    assert query('up{job="pgmedic"} == 1')
    wait_for(lambda: query('up{job="wrong-password"} == 0'), 30, "the wrong password's failing scrape")


# ---- the remediator -------------------------------------------------------------------------------


def test_remediator_read_side_needs_basic_auth_and_the_webhook_keeps_its_token(
    pki: Path, tmp_path: Path, cluster: Cluster, services: list
) -> None:
    web = web_config(tmp_path / "web.yml", pki, {"ops": PASSWORD})
    token = write_secret(tmp_path / "token", TOKEN)
    cfg = write_config(
        tmp_path / "pgmedic.yaml", [cluster], tmp_path / "state",
        remediator={"token_file": str(token), "web_config_file": str(web)},
    )  # fmt: skip
    service = pgmedic_service("remediator", cfg, tmp_path)
    services.append(service)
    base = https_url(service)
    assert https(base + "/api/v1/status", pki)[0] == 401
    assert https(base + "/api/v1/status", pki, "ops")[0] == 200
    assert https(base + "/metrics", pki, "ops")[0] == 200
    body = json.dumps(alert_payload("PostgresPostmasterDown", "main", status="resolved")).encode()
    hook = base + "/api/v1/alerts"
    headers = {"Content-Type": "application/json"}
    assert https(hook, pki, method="POST", body=body, headers=headers)[0] == 401
    status, answer = https(hook, pki, method="POST", body=body, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
    assert status == 200, answer
