"""The shipped alert rules and routing: valid, complete, tested, and built only on metrics that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pgmedic.exporter.metrics import CATALOGUE

from pgmedic.demo.sandbox import Cluster, pgmedic_service, write_config, write_secret
from tests.harness import REPO

ALERTS = REPO / "alerts"
# Settings the rules use only where the server has them (the tests here run PostgreSQL 15).
NEWER_VERSIONS_ONLY = {"pg_settings_reserved_connections"}
# Series that exist only with their condition: a standby, a slot, an archive attempt. tests/test_precursors.py
# makes each condition on a real cluster and reads them back.
CONDITIONAL = {
    "pg_wal_receiver_up", "pg_replication_lag_seconds", "pg_stat_replication_lag_bytes",
    "pg_stat_archiver_last_failed_timestamp_seconds", "pg_stat_archiver_last_archived_timestamp_seconds",
    "pg_replication_slot_retained_wal_bytes", "pg_replication_slot_slot_is_active",
}  # fmt: skip
RULES = ALERTS / "pgmedic.rules.yml"
RUNBOOKS = REPO / "docs" / "runbooks.md"
INSTALL = "apt-get install -y prometheus prometheus-alertmanager (or run `make test`)"
PROMQL_WORDS = {
    "and", "or", "unless", "on", "ignoring", "by", "without", "group_left", "group_right", "bool", "offset",
    "sum", "min", "max", "avg", "count", "time", "changes", "increase", "rate", "last_over_time", "up_", "e",
}  # fmt: skip


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: {INSTALL}"
    return path


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alerts() -> list[dict]:
    return [r for r in rules() if "alert" in r]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers outside label matchers and grouping clauses."""
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    names = set(re.findall(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", expr))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d.*", n)}


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_check_and_unit_tests_pass() -> None:
    check = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = sorted(str(p) for p in (ALERTS / "tests").glob("*.yml"))
    unit = subprocess.run([tool("promtool"), "test", "rules", *tests], capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    config = subprocess.run(
        [tool("promtool"), "check", "config", str(ALERTS / "prometheus.yml")], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_amtool_accepts_the_routing() -> None:
    result = subprocess.run(
        [tool("amtool"), "check-config", str(ALERTS / "alertmanager.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_labelled_annotated_and_has_a_runbook_section() -> None:
    anchors = {slug(line[3:]) for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    required = {
        "PostgresPostmasterDown", "PostgresNotResponding", "PostgresBackgroundWorkerMissing", "PostgresCrashRestarted",
        "PostgresConnectionsNearLimit", "PostgresConnectionsExhausted", "PostgresLongTransaction",
        "PostgresLocalMemoryHigh", "PgmedicExporterDown", "PgmedicRemediatorDown", "PgmedicRestartBudgetExhausted",
        "PostgresFilesystemSpaceLow", "PostgresFilesystemFullWithinAnHour", "PostgresFilesystemInodesLow",
        "PostgresWalArchivingFailing", "PostgresWalArchiveBacklog", "PostgresReplicationSlotRetainingWal",
        "PostgresXidWraparoundRisk", "PostgresXidWraparoundImminent", "PostgresStandbyNotStreaming",
        "PostgresStandbyLagging", "PostgresStandbyBehindInBytes", "PostgresSessionsBlocked",
    }  # fmt: skip
    names = {a["alert"] for a in alerts()}
    assert required <= names, required - names
    for alert in alerts():
        labels, notes = alert.get("labels", {}), alert.get("annotations", {})
        assert labels.get("severity") in ("critical", "warning", "info"), alert["alert"]
        assert labels.get("remediation") in ("restart", "none"), alert["alert"]
        for key in ("summary", "description", "runbook_url"):
            assert notes.get(key), f"{alert['alert']} lacks {key}"
        assert "$labels.pg_instance" in notes["description"] or "$labels.instance" in notes["description"]
        assert "$value" in notes["description"], f"{alert['alert']}: the description shows the value"
        path, _, anchor = notes["runbook_url"].partition("#")
        assert path == "docs/runbooks.md" and anchor in anchors, f"{alert['alert']}: no section #{anchor}"


def test_only_crash_and_hang_are_remediated() -> None:
    restart = {a["alert"] for a in alerts() if a["labels"]["remediation"] == "restart"}
    assert restart == {"PostgresPostmasterDown", "PostgresNotResponding"}


def test_every_alert_has_a_firing_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in (ALERTS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names <= fired, f"no firing test for {names - fired}"
    assert {"PostgresPostmasterDown", "PostgresNotResponding", "PostgresBackgroundWorkerMissing",
            "PostgresConnectionsExhausted", "PostgresConnectionsNearLimit"} <= quiet  # fmt: skip


def test_metric_name_extraction() -> None:
    expr = 'sum by (job, pg_instance) (pg_x{kind="anon"}) > on (job, instance) last_over_time(pg_y[5m]) - up'
    assert metric_names(expr) == {"pg_x", "pg_y", "up"}


def test_every_metric_the_rules_use_is_exported(
    make_cluster: Callable[..., Cluster], tmp_path: Path, services: list
) -> None:
    """Read from live scrapes of a running exporter and remediator, not from a list written by hand."""
    import urllib.request

    from pgmedic.demo.sandbox import free_port

    cluster = make_cluster()
    token = write_secret(tmp_path / "token", "secret\n")
    cfg = write_config(tmp_path / "pgmedic.yaml", [cluster], tmp_path / "state", remediator={"token_file": str(token)})
    exported: set[str] = set()
    for kind in ("exporter", "remediator"):
        service = pgmedic_service(kind, cfg, tmp_path, free_port())
        services.append(service)
        with urllib.request.urlopen(service.url + "/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line and not line.startswith("#"):
                    exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    recorded = {r["record"] for r in rules() if "record" in r}
    used = set().union(*(metric_names(r["expr"]) for r in rules())) - recorded - {"up"} - NEWER_VERSIONS_ONLY
    missing = {name for name in used - CONDITIONAL if name not in exported}
    assert not missing, f"rules use metrics nobody exports: {sorted(missing)}"
    assert used >= CONDITIONAL and set(CATALOGUE) >= CONDITIONAL, "CONDITIONAL names metrics of the contract"


@pytest.mark.parametrize("name", ["alertmanager.yml", "prometheus.yml", "pgmedic.rules.yml"])
def test_alert_files_listen_on_loopback_only(name: str) -> None:
    text = (ALERTS / name).read_text()
    for host in re.findall(r"(\d+\.\d+\.\d+\.\d+):\d+", text):
        assert host.startswith("127."), f"{name} names {host}"
