"""The remediator's HTTP side through Flask's test client (no workers, no PostgreSQL): fast."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pgmedic.remediator.app import create_app

from pgmedic.config import Config, InstanceConfig, RemediatorConfig
from pgmedic.demo.sandbox import write_secret
from tests.harness import alert_payload

pytestmark = pytest.mark.fast
TOKEN = "app-token"


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    cfg = InstanceConfig("main", "postgres", "postgres", "/nonexistent", "test", max_restart=3, restart_window=60.0)
    token = write_secret(tmp_path / "token", TOKEN)
    config = Config(
        str(tmp_path / "pgmedic.yaml"), {"main": cfg},
        remediator=RemediatorConfig(state_dir=str(tmp_path / "state"), token_file=str(token)),
    )  # fmt: skip
    return create_app(config, start_background=False).test_client()


def post(client: FlaskClient, body: Any, token: str | None = TOKEN) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/api/v1/alerts", data=data, headers=headers, content_type="application/json")


def test_webhook_statuses(client: FlaskClient) -> None:
    ok = alert_payload("PostgresPostmasterDown", "main")
    assert post(client, ok, token=None).status_code == 401
    assert post(client, ok, token="wrong").status_code == 401
    assert post(client, b"{not json").status_code == 400
    assert post(client, {**ok, "version": "3"}).status_code == 400
    assert post(client, b"x" * (1024 * 1024 + 10)).status_code == 413
    answer = post(client, ok)
    assert answer.status_code == 200 and answer.get_json()["decisions"][0]["result"] == "accepted"
    assert post(client, ok).get_json()["decisions"][0]["result"] == "duplicate"
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/events?since=-1").status_code == 400


def _journal_rows(state_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(state_dir / "journal.sqlite") as db:
        return {
            t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("events", "episodes", "instance_state", "outbox")
        }


def test_metrics_and_status_leave_the_journal_unchanged(client: FlaskClient, tmp_path: Path) -> None:
    """Even with a FAILED state whose window has passed: reading shows it re-armed, writing is the worker's."""
    rem = client.application.extensions["pgmedic"]
    rem.journal.mark_failed("main", "test", None, episode="e")
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite") as db:
        db.execute("UPDATE instance_state SET failed_at = ?", (time.time() - 3600,))
    before = _journal_rows(tmp_path / "state")
    metrics = client.get("/metrics").get_data(as_text=True)
    status = client.get("/api/v1/status").get_json()
    assert _journal_rows(tmp_path / "state") == before, "a read wrote to the journal"
    assert status["instances"]["main"]["state"] == "ok" and status["instances"]["main"]["budget_remaining"] == 3
    assert 'pgmedic_instance_state{pg_instance="main",state="failed"} 0.0' in metrics
    assert status["config"]["generation"] == 1 and status["config"]["last_reload"]["ok"] is True
