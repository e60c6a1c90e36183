"""The remediator's Flask application, built by ``create_app(config)`` (no globals)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from pgmedic.config import Config
from pgmedic.journal import Journal
from pgmedic.reload import ConfigStatus, restart_only_changes

from . import openapi
from .auth import authorized, read_secret
from .engine import Engine
from .metrics import RemediatorMetrics
from .notify import Deliverer
from .payload import MAX_BODY, PayloadError, parse_payload

log = logging.getLogger(__name__)
HOUSEKEEPING_INTERVAL = 3600.0
EVENTS_PAGE_BYTES = 4 << 20  # one page of /api/v1/events: at most this much event detail (and `limit` rows)

WEBHOOK_PATH = "/api/v1/alerts"  # Alertmanager posts here, with the bearer token


@dataclass
class Remediator:
    """Everything one app instance owns: journal, engine (workers), KSYS deliverer, metrics."""

    status: ConfigStatus
    journal: Journal
    engine: Engine
    deliverer: Deliverer
    metrics: RemediatorMetrics
    secret: str | None

    def __post_init__(self) -> None:
        self._stop = threading.Event()

    @property
    def config(self) -> Config:
        return self.status.config

    def reload(self, config: Config) -> None:
        """Put a newly loaded configuration in force (Reloader's APPLY); PgmedicError refuses it whole."""
        secret = read_secret(config.remediator.token_file) if config.remediator.token_file else None
        for setting in restart_only_changes(self.config, config):
            log.warning("%s changed: it takes effect at the next restart of the remediator", setting)
        self.secret = secret
        self.metrics.add_instances(sorted(config.instances))
        self.deliverer.ksys = config.ksys
        self.engine.reconfigure(config)

    def start(self) -> None:
        self.engine.start()
        self.deliverer.start()
        threading.Thread(target=self._housekeeping, name="pgmedic-housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.engine.stop()
        self.deliverer.stop()

    def _housekeeping(self) -> None:
        """Prune journal history past the retention at start and then hourly."""
        while True:
            try:
                pruned = self.journal.prune(self.config.remediator.retention)
                if any(pruned.values()):
                    log.warning("journal: pruned %s older than %.0fs", pruned, self.config.remediator.retention)
            except Exception:
                log.exception("journal pruning failed")
            if self._stop.wait(HOUSEKEEPING_INTERVAL):
                return


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def create_app(config: Config, *, start_background: bool = True) -> Flask:
    """Build the app; START_BACKGROUND=False leaves workers and delivery stopped (for tests of the HTTP side)."""
    journal = Journal(config.remediator.state_dir, config.remediator.state_group)
    metrics = RemediatorMetrics(sorted(config.instances))
    engine = Engine(config, journal, metrics)
    metrics.add_state_collector(engine.snapshot, engine.modes)
    secret = read_secret(config.remediator.token_file) if config.remediator.token_file else None
    config_status = ConfigStatus(config)
    metrics.add_config_collector(config_status)
    rem = Remediator(config_status, journal, engine, Deliverer(journal, config.ksys, metrics), metrics, secret)

    app = Flask("pgmedic.remediator")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["pgmedic"] = rem

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        response, code = _error(exc.code or 500, exc.description or exc.name)
        for name, value in exc.get_headers():  # Allow on a 405, and the like
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, code

    @app.post(WEBHOOK_PATH)
    def alerts() -> tuple[Response, int]:
        if not authorized(request.headers.get("Authorization"), rem.secret):
            metrics.notifications.labels("rejected").inc()
            return _error(401, "missing or wrong credentials")
        try:
            if (request.content_length or 0) > MAX_BODY:
                raise RequestEntityTooLarge()
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            metrics.notifications.labels("rejected").inc()
            return _error(413, f"body over {MAX_BODY} bytes")
        try:
            parsed = parse_payload(body)
        except PayloadError as exc:
            metrics.notifications.labels("rejected").inc()
            journal.event(None, "notification", result="rejected", reason=str(exc), source=request.remote_addr)
            return _error(400, str(exc))
        decisions = engine.decide(parsed, request.remote_addr or "")
        return jsonify(received=len(parsed), decisions=decisions), 200

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        journal.ping()
        return jsonify(status="ok"), 200

    @app.get("/api/v1/status")
    def status() -> tuple[Response, int]:
        snapshot, modes = engine.snapshot(), engine.modes()
        out: dict[str, Any] = {}
        for name, (state, remaining) in snapshot.items():
            st = journal.state(name)
            last = journal.last_episode(name)
            out[name] = {
                "state": state,
                "mode": modes.get(name),
                **engine.manager_of(name),
                "budget_remaining": remaining,
                "max_restart": rem.config.instance(name).max_restart,
                "suspended": st.suspended,
                "failed_reason": st.failed_reason if st.failed else None,
                "last_action": last,
            }
        mode = rem.config.remediator.mode
        return jsonify(instances=out, mode=mode, config=rem.status.document(), time=time.time()), 200

    @app.get("/api/v1/events")
    def events() -> tuple[Response, int]:
        try:
            since = int(request.args.get("since", "0"))
            limit = int(request.args.get("limit", "1000"))
        except ValueError:
            return _error(400, "since and limit must be whole numbers")
        if not 0 <= since < 2**63 or not 1 <= limit <= 10000:
            return _error(400, "since must be between 0 and 2^63-1 and limit between 1 and 10000")
        rows = journal.events(since, request.args.get("instance"), limit, max_bytes=EVENTS_PAGE_BYTES)
        return jsonify(events=rows, next=rows[-1]["id"] if rows else since), 200

    @app.get("/api/v1/openapi.json")
    def spec() -> tuple[Response, int]:
        return jsonify(openapi.document()), 200

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    if start_background:
        rem.start()
    return app
