#!/usr/bin/env python3
"""Scrape cost, side by side: pgmedic's exporter against Debian's prometheus-postgres-exporter.

Both scrape the same throwaway cluster in the same run, interleaved scrape by scrape so machine noise
hits both alike, at idle and with 300 and 1000 client connections. Prints p50/p95 latency and RSS of
each, and the ratios (pgmedic / peer: below 1.0 means pgmedic is cheaper).

    .venv/bin/python bench/scrape.py [--rounds 60] [--loads 0,300,1000] [--tls]

--tls adds a third exporter: pgmedic with TLS and basic auth (--web.config.file, a certificate made by
openssl), scraped over a new TLS connection each time, interleaved with the other two.

A benchmark, not a test: nothing here asserts. `make bench` installs the peer and runs it.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import bcrypt
import psycopg

from pgmedic.demo.sandbox import (
    Service,
    free_port,
    make_pki,
    make_temp_dir,
    make_template,
    new_cluster,
    owner,
    pgmedic_service,
    start_service,
    write_config,
)

PEER = "prometheus-postgres-exporter"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_scrape(url: str, context: ssl.SSLContext | None = None, auth: str | None = None) -> float:
    request = urllib.request.Request(url + "/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
    if auth:
        request.add_header("Authorization", auth)
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        response.read()
    return time.perf_counter() - began


def tls_exporter(base: Path, cfg: Path) -> tuple[Service, ssl.SSLContext, str]:
    """pgmedic's exporter with TLS and basic auth; its client context and Authorization header."""
    pki = make_pki(Path(tempfile.mkdtemp(dir=base)))
    hashed = bcrypt.hashpw(b"bench", bcrypt.gensalt(rounds=10)).decode()
    web = base / "web.yml"
    web.write_text(json.dumps({
        "tls_server_config": {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key")},
        "basic_auth_users": {"prometheus": hashed},
    }))  # fmt: skip
    port = free_port()
    argv = [sys.executable, "-m", "pgmedic", "--config", str(cfg), "exporter", "--listen", f"127.0.0.1:{port}",
            "--web.config.file", str(web)]  # fmt: skip
    service = start_service("exporter-tls", argv, base, port)
    service.url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    return service, context, "Basic " + base64.b64encode(b"prometheus:bench").decode()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--loads", default="0,300,1000")
    parser.add_argument("--tls", action="store_true", help="also pgmedic with TLS and basic auth")
    args = parser.parse_args()
    loads = [int(x) for x in args.loads.split(",")]
    if not shutil.which(PEER):
        print(f"{PEER} is missing: apt-get install -y {PEER} (or `make bench`)", file=sys.stderr)
        return 1

    base = make_temp_dir("pgmedic-bench-")
    template = make_template(base)
    with open(template / "postgresql.conf", "a") as f:
        f.write(f"max_connections = {max(loads) + 20}\n")
    cluster = new_cluster(template, "bench")
    services = []
    clients: list[psycopg.Connection] = []
    try:
        cluster.psql("CREATE ROLE bench LOGIN")
        cfg = write_config(base / "pgmedic.yaml", [cluster], base / "state")
        ours = pgmedic_service("exporter", cfg, base)
        services.append(ours)
        peer_port = free_port()
        dsn = f"host={cluster.socket_dir} port={cluster.port} user={owner()} dbname=postgres sslmode=disable"
        peer = start_service(
            "peer",
            [PEER, f"--web.listen-address=127.0.0.1:{peer_port}"],
            base,
            peer_port,
            env={"DATA_SOURCE_NAME": dsn},
        )
        services.append(peer)
        tls = tls_exporter(base, cfg) if args.tls else None
        if tls:
            services.append(tls[0])
        client_dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user=bench"
        rows = []
        for load in loads:
            while len(clients) < load:
                clients.append(psycopg.connect(client_dsn))
            scrapes: dict[str, Callable[[], float]] = {
                "pgmedic": lambda: timed_scrape(ours.url),
                "peer": lambda: timed_scrape(peer.url),
            }
            if tls:
                scrapes["pgmedic TLS"] = functools.partial(timed_scrape, tls[0].url, tls[1], tls[2])
            for scrape in scrapes.values():  # warm-up
                for _ in range(3):
                    scrape()
            lat: dict[str, list[float]] = {name: [] for name in scrapes}
            names = list(scrapes)
            for i in range(args.rounds):
                for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
                    lat[name].append(scrapes[name]())
            rss = {"pgmedic": rss_mib(ours.proc.pid), "peer": rss_mib(peer.proc.pid)}
            rows.append((load, lat, rss))
        print(
            f"\nscrape latency, {args.rounds} interleaved scrapes per load; PostgreSQL {cluster.psql('SHOW server_version')}"
        )
        print(
            f"{'clients':>8} | {'pgmedic p50':>11} {'p95':>8} {'RSS':>8} | {'peer p50':>9} {'p95':>8} {'RSS':>8} | {'p50 ratio':>9} {'p95 ratio':>9}"
        )
        for load, lat, rss in rows:
            p50 = {k: statistics.median(v) * 1000 for k, v in lat.items()}
            p95 = {k: pct(v, 0.95) * 1000 for k, v in lat.items()}
            print(
                f"{load:>8} | {p50['pgmedic']:>9.1f}ms {p95['pgmedic']:>6.1f}ms {rss['pgmedic']:>5.1f}MiB | "
                f"{p50['peer']:>7.1f}ms {p95['peer']:>6.1f}ms {rss['peer']:>5.1f}MiB | "
                f"{p50['pgmedic'] / p50['peer']:>9.2f} {p95['pgmedic'] / p95['peer']:>9.2f}"
            )
        if tls:
            print("\nwith TLS and basic auth (a new TLS connection per scrape):")
            for load, lat, _rss in rows:
                tls_p50 = statistics.median(lat["pgmedic TLS"]) * 1000
                plain, peer_p50 = statistics.median(lat["pgmedic"]) * 1000, statistics.median(lat["peer"]) * 1000
                print(
                    f"{load:>8} | pgmedic TLS p50 {tls_p50:>6.1f}ms | / pgmedic plain {tls_p50 / plain:>5.2f} | "
                    f"/ peer plain {tls_p50 / peer_p50:>5.2f}"
                )
        print("ratio = pgmedic / peer (lower is better for pgmedic); peer =", PEER)
        return 0
    finally:
        for c in clients:
            c.close()
        for s in services:
            s.stop()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
