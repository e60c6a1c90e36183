"""Every query of the shipped dashboard, run through Prometheus' HTTP API against the live chain after a
drill, must parse and return data: a panel that can never show anything is a defect."""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.parse

import psycopg

from pgmedic.demo.drills import run_drill
from pgmedic.demo.sandbox import http, owner
from pgmedic.demo.stack import build_stack
from tests.harness import REPO


def _precursor_rows() -> set[str]:
    """PRECURSOR_ROWS of grafana/build.py (a script, not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("pgmedic_grafana_build", REPO / "grafana" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.PRECURSOR_ROWS)


PRECURSOR_ROWS = _precursor_rows()

BOARD = REPO / "grafana" / "dashboards" / "pgmedic-overview.json"
VARIABLES = {
    "$job": ".*",
    "$pgmedic_host": ".*",
    "$pg_instance": ".*",
    "$__rate_interval": "1m",
    "$__range": "10m",
    "$__interval": "5s",
}


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown variable left in {expr}"
    return expr


def panels_in_rows(doc: dict, rows: set[str], inside: bool) -> list[dict]:
    """The panels under the rows titled ROWS (INSIDE) or under every other row (not INSIDE)."""
    out, current = [], None
    for panel in doc["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
        elif (current in rows) == inside:
            out.append(panel)
    return out


def empty_queries(stack, panels: list[dict]) -> tuple[int, list[str]]:
    """How many panel queries ran, and those that returned nothing."""
    checked, empty = 0, []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = substitute(target["expr"])
            checked += 1
            if not run(stack, expr, bool(target.get("instant"))):
                empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    return checked, empty


def run(stack, expr: str, instant: bool) -> list:
    now = time.time()
    if instant:
        url = "/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": now})
    else:
        url = "/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": expr, "start": now - 300, "end": now, "step": 2}
        )
    status, body = http("GET", stack.url("prometheus") + url)
    assert status == 200 and body.get("status") == "success", f"{expr}: {status} {body}"
    return body["data"]["result"]


def test_every_panel_query_returns_data_after_a_drill() -> None:
    doc = json.loads(BOARD.read_text())
    stack = build_stack("grafana")
    client = None
    try:
        _, _, ok = run_drill(stack, "kill9")
        assert ok, "the drill that feeds the remediation panels recovered"
        # The connection and client-memory panels are about clients: hold one, as any real server has.
        cluster = stack.cluster
        client = psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, dbname="postgres", user=owner())
        time.sleep(12)  # two remediator scrapes after the action, for increase() and rate()
        # The outage-precursor rows need their conditions: tests/e2e/test_precursors.py.
        checked, empty = empty_queries(stack, panels_in_rows(doc, PRECURSOR_ROWS, inside=False))
        for annotation in doc["annotations"]["list"]:
            if annotation.get("expr"):
                checked += 1
                if not run(stack, substitute(annotation["expr"]), False):
                    empty.append(f"annotation {annotation['name']}")
        assert checked >= 30
        assert not empty, "queries without data:\n" + "\n".join(empty)
        variables = [v for v in doc["templating"]["list"] if v["type"] == "query"]
        for var in variables:
            metric_expr = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = metric_expr[len("label_values(") : metric_expr.rindex(",")]
            assert run(stack, substitute(inner), True), f"variable {var['name']} has no values"
    finally:
        if client is not None:
            client.close()
        stack.close()
