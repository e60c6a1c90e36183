"""HTTP for the exporter: landing page at /, metrics at /metrics, served by pgmedic.httpserver on loopback by default.

The scrape deadline is Prometheus' X-Prometheus-Scrape-Timeout-Seconds header minus a margin (or the
configured default without the header), so a hung instance never makes a scrape run past it.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics.exposition import UNDERSCORES
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from pgmedic import __version__
from pgmedic.config import Config, listen_address
from pgmedic.httpserver import Server, stop_on_signals
from pgmedic.reload import ConfigStatus, Reloader, restart_only_changes
from pgmedic.webconfig import WebState, protect

from .exposition import render
from .metrics import MetricSet
from .scraper import Exporter

log = logging.getLogger(__name__)
TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"


class _Families:
    """Adapter so prometheus_client's encoders can write a finished MetricSet."""

    def __init__(self, families: Iterable[Any]) -> None:
        self._families = families

    def collect(self) -> Iterable[Any]:
        return self._families


def encode(metrics: MetricSet, accept: str) -> tuple[bytes, str]:
    """The body and content type the scraper's Accept header asks for, as prometheus_client negotiates it.

    The two formats Prometheus takes (OpenMetrics 1.0.0 first, then the text format) are written by
    exposition.render; any other that prometheus_client negotiates (an escaping scheme) by its encoder.
    """
    encoder, content_type = choose_encoder(accept)
    if encoder is generate_latest:
        return render(metrics.families()), content_type
    if (
        isinstance(encoder, functools.partial)
        and encoder.func is openmetrics_latest
        and encoder.keywords.get("escaping") == UNDERSCORES
        and str(encoder.keywords.get("version", "")).startswith("1.")
    ):
        return render(metrics.families(), openmetrics=True), content_type
    return encoder(_Families(metrics)), content_type


def scrape_timeout(environ: dict[str, Any], config: Config) -> float:
    """Seconds this scrape may take: the header (capped by the default) minus the margin."""
    limit = config.exporter.default_scrape_timeout
    header = environ.get(TIMEOUT_HEADER)
    if header:
        with contextlib.suppress(ValueError):
            limit = min(limit, float(header)) if float(header) > 0 else limit
    return max(0.1, limit - config.exporter.timeout_margin)


@dataclass
class Live:
    """What the app serves right now; a reload swaps both at once (each request reads them once)."""

    status: ConfigStatus
    exporter: Exporter
    web: WebState | None = None

    def reload(self, config: Config) -> None:
        for setting in restart_only_changes(self.status.config, config):
            log.warning("%s changed: it takes effect at the next restart of the exporter", setting)
        self.exporter = self.exporter.reconfigured(config)
        if self.web is not None:
            self.web.reload()


def create_app(
    config: Config, exporter: Exporter | None = None, live: Live | None = None
) -> Callable[..., Iterable[bytes]]:
    live = live or Live(ConfigStatus(config), exporter or Exporter(config))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"method not allowed: GET or HEAD\n"]
        status, exporter = live.status, live.exporter
        config = status.config
        if path == "/metrics":
            began = time.monotonic()
            metrics = exporter.scrape(scrape_timeout(environ, config))
            metrics.add("pgmedic_config_last_reload_successful", {}, 1 if status.last_reload_ok else 0)
            metrics.add("pgmedic_config_last_reload_success_timestamp_seconds", {}, status.loaded_at)
            body, content_type = encode(metrics, environ.get("HTTP_ACCEPT", ""))
            log.debug("scrape took %.3fs", time.monotonic() - began)
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/api/v1/status":
            body = json.dumps({"config": status.document(), "time": time.time()}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/":
            names = "".join(f"<li>{html.escape(n)}</li>" for n in sorted(config.instances)) or "<li>none</li>"
            body = (
                f"<html><head><title>pgmedic exporter</title></head><body><h1>pgmedic exporter {__version__}</h1>"
                f"<p><a href='/metrics'>Metrics</a></p><p>Instances:</p><ul>{names}</ul></body></html>"
            ).encode()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]

    return app


def serve(config: Config, listen: str | None = None, web_config_file: str | None = None) -> int:
    host, port = listen_address(config.path, "exporter.listen", listen, config.exporter.listen)
    web = WebState(web_config_file or config.exporter.web_config_file)
    live = Live(ConfigStatus(config), Exporter(config), web)
    app = protect(create_app(config, live=live), web.current, exempt=lambda _environ: False)
    server = Server(app, host, port, web, threads=4, ident="pgmedic-exporter", max_body=0)  # GET: no bodies
    stop_on_signals(server)
    reloader = Reloader(live.status, live.reload, "exporter")
    reloader.install()
    log.warning(
        "pgmedic exporter on %s://%s:%d/metrics for %d instance(s)", server.scheme, host, port, len(config.instances)
    )
    try:
        server.run()
    finally:
        reloader.close()
        server.close()
    return 0
