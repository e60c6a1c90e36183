"""The two text formats Prometheus scrapes, written straight from a MetricSet.

prometheus_client's encoders validate and escape every metric and label name of every sample (about
4 µs a sample, a fifth of an idle scrape's CPU). Here names come from the catalogue, so only label
values are escaped, and a family's HELP and TYPE lines are made once per process. The bytes are
prometheus_client's own (tests/test_exposition.py compares them), in the Prometheus text format and,
when the scraper asks for it (Prometheus does), in OpenMetrics.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping

from .metrics import CATALOGUE, INFO, base_name

Sample = tuple[Mapping[str, str], float]


@functools.cache
def _header(name: str, openmetrics: bool) -> str:
    typ, doc = CATALOGUE[name]
    if openmetrics:
        base = base_name(name)
        return f"# HELP {base} {_escape(doc)}\n# TYPE {base} {typ}\n"
    help_text = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {'gauge' if typ == INFO else typ}\n"


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _number(value: float) -> str:
    """Go's formatting, as prometheus_client's floatToGoString: Python's repr, except for infinities,
    NaN, and positive numbers of over six digits before the point, which Go writes with an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def render(families: Iterable[tuple[str, list[Sample]]], openmetrics: bool = False) -> bytes:
    """FAMILIES (exposed name, its samples) in the Prometheus text format, or in OpenMetrics."""
    out: list[str] = []
    for name, samples in families:
        out.append(_header(name, openmetrics))
        for labels, value in samples:
            if labels:
                pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                out.append(f"{name}{{{pairs}}} {_number(value)}\n")
            else:
                out.append(f"{name} {_number(value)}\n")
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out).encode()
