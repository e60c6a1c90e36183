"""exporter/exposition.py writes, byte for byte, what prometheus_client's encoders write for the same
samples, in both formats Prometheus scrapes; and the server picks it for Prometheus' Accept headers."""

from __future__ import annotations

import math

import pytest
from pgmedic.exporter.exposition import render
from pgmedic.exporter.metrics import CATALOGUE, MetricSet
from pgmedic.exporter.server import _Families, encode
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
VALUES = [0.0, 1.0, -3.5, 0.1, 123456.0, 1234567.0, 2e8, 2**31, 1e-7, 9.313225746154785e-09, math.inf, -math.inf, 1e300]
LABEL_VALUES = ["main", 'quo"te', "back\\slash", "new\nline", "ünï-côdé", "", "/tmp/a b/data"]


def sample_set() -> MetricSet:
    metrics = MetricSet()
    metrics.add("pgmedic_build_info", {"version": "0.1.0"}, 1)  # info
    for i, value in enumerate(VALUES):
        metrics.add("pg_wal_size_bytes", {"pg_instance": LABEL_VALUES[i % len(LABEL_VALUES)] + str(i)}, value)
    for i, label in enumerate(LABEL_VALUES):
        metrics.add("pg_process_cpu_seconds_total", {"pg_instance": label, "backend_type": "x", "mode": "user"}, i)
    metrics.add("pg_up", {}, 1)  # no labels
    metrics.add("pg_filesystem_avail_bytes", {"z": "1", "a": "2", "pg_instance": "m"}, 5)  # unsorted labels
    return metrics


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_render_is_what_prometheus_client_writes(openmetrics: bool) -> None:
    metrics = sample_set()
    theirs = (openmetrics_latest if openmetrics else generate_latest)(_Families(metrics))
    assert render(metrics.families(), openmetrics=openmetrics) == theirs


def test_nan_is_written_as_go_does() -> None:
    metrics = MetricSet()
    metrics.add("pg_up", {"pg_instance": "m"}, math.nan)
    assert render(metrics.families()) == generate_latest(_Families(metrics))


def test_every_catalogue_family_renders_as_prometheus_client_does() -> None:
    metrics = MetricSet()
    for name in CATALOGUE:
        metrics.add(name, {"pg_instance": "main"}, 1.5)
    for openmetrics, theirs in ((False, generate_latest), (True, openmetrics_latest)):
        assert render(metrics.families(), openmetrics=openmetrics) == theirs(_Families(metrics))


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (PROMETHEUS_2_ACCEPT, "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"),
        ("", "text/plain; version=0.0.4; charset=utf-8"),
        ("text/plain;version=0.0.4", "text/plain; version=0.0.4; charset=utf-8"),
    ],
)
def test_negotiation_serves_our_writer_with_the_content_type_asked_for(accept: str, content_type: str) -> None:
    metrics = sample_set()
    body, chosen = encode(metrics, accept)
    assert chosen == content_type
    expected = (
        openmetrics_latest(_Families(metrics)) if "openmetrics" in chosen else generate_latest(_Families(metrics))
    )
    assert body == expected


def test_a_name_outside_the_catalogue_is_refused() -> None:
    with pytest.raises(KeyError, match="catalogue"):
        MetricSet().add("pg_made_up", {}, 1)
