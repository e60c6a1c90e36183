"""The remediator's HTTP side through Flask's test client (no workers, no PostgreSQL): fast."""

from __future__ import annotations

import json
import socket
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


def test_alerts_for_another_host_are_journaled_as_ignored(tmp_path: Path) -> None:
    """The same instance name runs on every host of a fleet: an alert whose pgmedic_host names another
    host is ignored (and journaled so) even when routing sent it here; this host's own is acted on, and
    an alert without the label (a single-host set-up) too."""
    cfg = InstanceConfig("main", "postgres", "postgres", "/nonexistent", "test")
    token = write_secret(tmp_path / "token", TOKEN)
    remediator = RemediatorConfig(state_dir=str(tmp_path / "state"), token_file=str(token), host="db-2")
    client = create_app(Config(str(tmp_path / "p.yaml"), {"main": cfg}, remediator=remediator), start_background=False)
    test = client.test_client()
    other = post(test, alert_payload("PostgresPostmasterDown", "main", pgmedic_host="db-1", fingerprint="a1"))
    decision = other.get_json()["decisions"][0]
    assert (decision["result"], decision["reason"]) == ("ignored", "wrong host: for 'db-1', this is db-2")
    own = post(test, alert_payload("PostgresPostmasterDown", "main", pgmedic_host="db-2", fingerprint="a2"))
    assert own.get_json()["decisions"][0]["result"] == "accepted"
    unlabelled = post(test, alert_payload("PostgresPostmasterDown", "main", fingerprint="a3"))
    assert unlabelled.get_json()["decisions"][0]["result"] == "accepted"
    events = test.get("/api/v1/events").get_json()["events"]
    ignored = [e for e in events if e["kind"] == "notification" and e["result"] == "ignored"]
    assert [e["pgmedic_host"] for e in ignored] == ["db-1"] and "episode" not in ignored[0]
    assert RemediatorConfig().host == socket.gethostname(), "by default, this machine's name"


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


def test_odd_input_is_a_4xx_never_a_500(client: FlaskClient) -> None:
    ok = alert_payload("PostgresPostmasterDown", "main")
    alert = ok["alerts"][0]
    deep = b'{"version": "4", "alerts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases: dict[str, Any] = {
        "nested 10^5 deep": deep,
        "NaN": json.dumps(ok).replace('"firing"', "NaN", 1).encode(),
        "lone surrogate in a label": json.dumps(ok).replace('"main"', '"\\ud800"').encode(),
        "malformed endsAt": {**ok, "alerts": [{**alert, "endsAt": "yesterday"}]},
        "empty fingerprint": {**ok, "alerts": [{**alert, "fingerprint": ""}]},
        "huge fingerprint": {**ok, "alerts": [{**alert, "fingerprint": "f" * 1000}]},
    }
    for case, body in cases.items():
        answer = post(client, body)
        assert answer.status_code == 400, (case, answer.status_code, answer.get_data()[:200])
        assert set(answer.get_json()) == {"error"}, case
    assert client.get("/api/v1/events?since=99999999999999999999").status_code == 400
    assert client.get("/api/v1/events?since=abc").status_code == 400
    assert client.delete("/api/v1/alerts").status_code == 405
    assert "POST" in client.get("/api/v1/alerts").headers["Allow"]


def test_huge_labels_are_journaled_cut_and_pages_are_bounded(client: FlaskClient) -> None:
    big = "x" * 100_000  # alertname and pg_instance, each twice in the payload: under 1 MiB
    for n in range(12):
        answer = post(client, alert_payload(big, big + str(n), fingerprint=f"f{n}"))
        assert answer.status_code == 200
        decision = answer.get_json()["decisions"][0]
        assert decision["reason"] == "not a configured instance" and len(decision["pg_instance"]) < 300
    events = client.get("/api/v1/events?limit=10000").get_json()["events"]
    kept = [e for e in events if e["kind"] == "notification"]
    assert len(kept) == 12 and all(e["pg_instance_length"] == len(big) + len(str(i)) for i, e in enumerate(kept))
    assert all(len(json.dumps(e)) < 2000 for e in kept), "nothing megabyte-sized was stored"
    journal = client.application.extensions["pgmedic"].journal
    page = journal.events(0, None, 100, max_bytes=1500)
    assert 1 <= len(page) < len(events), "a page stops at its byte bound"
    assert journal.events(page[-1]["id"], None, 100)[0]["id"] == page[-1]["id"] + 1, "and the next page goes on"
