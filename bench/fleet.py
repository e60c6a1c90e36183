#!/usr/bin/env python3
"""A correlated outage of a fleet, replayed at its remediators: how long until every episode is journaled.

500 hosts (``--hosts``), one instance each, all down at once (a storage or network event): each of two
Alertmanager peers delivers every host's alert to that host's remediator (the generated routes; both
peers deliver, the worst case of an HA pair), from a pool of concurrent senders as Alertmanager's
per-group dispatch does. Each remediator is a real app (Flask, its own SQLite journal and state
directory) built in process with its workers stopped: what is measured is the webhook's own work,
parse, decide and commit before the 200, which is what bounds how fast a fleet's alerts are taken.

Side by side in the same run: the same alerts at ONE remediator that would serve the whole fleet (a
central design, 500 instances in one journal). Prints the time until the last episode was journaled,
the per-delivery p50/p95, and checks that every host has exactly one episode and one duplicate.

    .venv/bin/python bench/fleet.py [--hosts 500] [--senders 32]

A benchmark, not a test: nothing here asserts but the bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from pgmedic.remediator.app import create_app

from pgmedic.config import Config, InstanceConfig, RemediatorConfig
from pgmedic.demo.measure import percentile
from pgmedic.demo.sandbox import alert_payload, write_secret

TOKEN = "fleet-bench-token"


def remediator(root: Path, host: str, instances: list[str]) -> FlaskClient:
    """One host's remediator app: its own state directory and journal, its instances, workers stopped."""
    state = root / host
    state.mkdir()
    token = write_secret(state / "token", TOKEN)
    cfgs = {
        name: InstanceConfig(name, "postgres", "postgres", f"/nonexistent/{host}/{name}", "bench") for name in instances
    }
    remediator = RemediatorConfig(state_dir=str(state / "state"), token_file=str(token), host=host)
    return create_app(
        Config(str(state / "pgmedic.yaml"), cfgs, remediator=remediator), start_background=False
    ).test_client()


def deliver(client: FlaskClient, payload: dict[str, Any]) -> tuple[float, str]:
    body = json.dumps(payload).encode()
    began = time.perf_counter()
    answer = client.post(
        "/api/v1/alerts", data=body, headers={"Authorization": f"Bearer {TOKEN}"}, content_type="application/json"
    )
    took = time.perf_counter() - began
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return took, answer.get_json()["decisions"][0]["result"]


def replay(deliveries: list[tuple[FlaskClient, dict[str, Any]]], senders: int) -> tuple[float, list[float], list[str]]:
    """Every delivery from a pool of SENDERS; wall time until the last was answered (journaled)."""
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=senders) as pool:
        results = list(pool.map(lambda d: deliver(*d), deliveries))
    return time.perf_counter() - began, [t for t, _ in results], [r for _, r in results]


def outage(hosts: int) -> list[tuple[str, dict[str, Any]]]:
    """Each host's PostgresPostmasterDown, as both Alertmanager peers deliver it (interleaved)."""
    alerts = [
        (
            f"host-{n}",
            alert_payload("PostgresPostmasterDown", "main", pgmedic_host=f"host-{n}", fingerprint=f"{n:016x}"),
        )
        for n in range(hosts)
    ]
    return [delivery for delivery in alerts for _ in range(2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument(
        "--senders", type=int, default=32, help="concurrent deliveries (Alertmanager dispatches per group)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pgmedic-fleet-bench-"))
    try:
        began = time.perf_counter()
        per_host = {f"host-{n}": remediator(root, f"host-{n}", ["main"]) for n in range(args.hosts)}
        built = time.perf_counter() - began
        deliveries = outage(args.hosts)
        fleet_wall, fleet_latency, fleet_results = replay([(per_host[h], p) for h, p in deliveries], args.senders)

        # The central design: one remediator, one journal, every host's instance in it (named per host).
        central = remediator(root, "central", [f"main-{h}" for h in per_host])
        renamed = []
        for host, payload in deliveries:
            copy = json.loads(json.dumps(payload))
            copy["alerts"][0]["labels"].update(pg_instance=f"main-{host}", pgmedic_host="central")
            renamed.append((central, copy))
        central_wall, central_latency, central_results = replay(renamed, args.senders)

        print(f"\ncorrelated outage: {args.hosts} hosts, every alert delivered by 2 Alertmanager peers "
              f"({2 * args.hosts} deliveries), {args.senders} concurrent senders; {args.hosts} remediators built "
              f"in {built:.1f}s")  # fmt: skip
        for name, wall, latency, results in (
            ("one remediator per host", fleet_wall, fleet_latency, fleet_results),
            ("one central remediator", central_wall, central_latency, central_results),
        ):
            counts = {r: results.count(r) for r in sorted(set(results))}
            print(
                f"{name:>24}: every episode journaled after {wall:.2f}s ({len(results) / wall:.0f} deliveries/s); "
                f"per delivery p50 {statistics.median(latency) * 1000:.1f} ms, p95 {percentile(latency, 0.95) * 1000:.1f} ms; "
                f"decisions {counts}"
            )
            if counts != {"accepted": args.hosts, "duplicate": args.hosts}:
                print(f"  unexpected decisions: {counts}", file=sys.stderr)
                return 1
        print(f"ratio (per host / central): {fleet_wall / central_wall:.2f}")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
