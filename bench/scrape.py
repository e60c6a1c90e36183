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
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import psycopg

from pgmedic.demo.measure import percentile
from pgmedic.demo.sandbox import (
    Cluster,
    Service,
    as_owner,
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
TICKS = os.sysconf("SC_CLK_TCK")


def timed_scrape(url: str, context: ssl.SSLContext | None = None, auth: str | None = None) -> float:
    request = urllib.request.Request(url + "/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
    if auth:
        request.add_header("Authorization", auth)
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        response.read()
    return time.perf_counter() - began


def sample_count(url: str) -> int:
    """Samples in one scrape of URL (the lines of the text format that are not comments)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        return sum(1 for line in response.read().decode().splitlines() if line and not line.startswith("#"))


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


def cpu_seconds(pid: int) -> float:
    """CPU time of PID, all its threads, in seconds: the sum of their schedstat run times (nanoseconds,
    where utime + stime count 10 ms ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


def reaped_cpu_seconds(pid: int) -> float:
    """cutime + cstime of PID: the CPU of its children that exited (the postmaster's reaped backends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICKS


@dataclass
class Phase:
    """One load, one pattern: each exporter's latencies and CPU per scrape."""

    latency: dict[str, list[float]]
    cpu: dict[str, float]  # exporter process CPU per scrape, seconds
    pg_cpu: dict[str, float]  # PostgreSQL-side CPU per scrape where attributable, seconds
    samples: dict[str, int] = dataclasses.field(default_factory=dict)  # samples in one scrape


def measure(
    scrapes: dict[str, Callable[[], float]], pids: dict[str, int], rounds: int, gap: float,
    pg_side: dict[str, Callable[[], float]],
) -> Phase:  # fmt: skip
    """ROUNDS of every scrape, rotating who goes first, GAP seconds idle before each scrape."""
    for scrape in scrapes.values():  # warm-up
        for _ in range(3):
            scrape()
    names = list(scrapes)
    latency: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0.0)
    pg_cpu = dict.fromkeys(names, 0.0)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if gap:
                time.sleep(gap)
            before, pg_before = cpu_seconds(pids[name]), pg_side[name]() if name in pg_side else 0.0
            latency[name].append(scrapes[name]())
            time.sleep(0.005)  # let the exporter's and the backend's last accounting land
            cpu[name] += cpu_seconds(pids[name]) - before
            if name in pg_side:
                pg_cpu[name] += pg_side[name]() - pg_before
    return Phase(latency, {n: c / rounds for n, c in cpu.items()}, {n: c / rounds for n, c in pg_cpu.items()})


def ours_pg_cpu(postmaster: int, session: int) -> float:
    return reaped_cpu_seconds(postmaster) + cpu_seconds(session)


def long_lived_backends(cluster: Cluster) -> dict[str, int]:
    """The exporters' long-lived backends: pgmedic's statistics session and the peer's connection."""
    rows = cluster.psql(
        "SELECT pid, application_name FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND usename = current_user AND pid <> pg_backend_pid() AND now() - backend_start > interval '0.5 s' "
        "ORDER BY backend_start"
    )
    found: dict[str, int] = {}
    for line in rows.splitlines():
        pid, _, name = line.partition("|")
        found.setdefault("pgmedic" if name == "pgmedic" else "peer", int(pid))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--loads", default="0,300,1000,pgbench")
    parser.add_argument("--tls", action="store_true", help="also pgmedic with TLS and basic auth")
    parser.add_argument("--gap", type=float, default=0.2, help="idle seconds before each scrape (realistic)")
    parser.add_argument("--patterns", default="realistic,back-to-back")
    parser.add_argument("--shared-buffers", default="128MB")
    args = parser.parse_args()
    loads = args.loads.split(",")
    patterns = args.patterns.split(",")
    if not shutil.which(PEER):
        print(f"{PEER} is missing: apt-get install -y {PEER} (or `make bench`)", file=sys.stderr)
        return 1
    clients_needed = max([int(x) for x in loads if x.isdigit()] or [0])

    base = make_temp_dir("pgmedic-bench-")
    template = make_template(base)
    with open(template / "postgresql.conf", "a") as f:
        # The distribution's defaults where the test template differs, except what the bench needs.
        f.write(f"max_connections = {clients_needed + 40}\nfsync = on\nsynchronous_commit = on\n"
                f"full_page_writes = on\nshared_buffers = '{args.shared_buffers}'\nautovacuum_naptime = 60\n")  # fmt: skip
    cluster = new_cluster(template, "bench")
    services: list[Service] = []
    clients: list[psycopg.Connection] = []
    bench_load: subprocess.Popen[bytes] | None = None
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
        scrapes: dict[str, Callable[[], float]] = {
            "pgmedic": functools.partial(timed_scrape, ours.url),
            "peer": functools.partial(timed_scrape, peer.url),
        }
        pids = {"pgmedic": ours.proc.pid, "peer": peer.proc.pid}
        if tls:
            scrapes["pgmedic TLS"] = functools.partial(timed_scrape, tls[0].url, tls[1], tls[2])
            pids["pgmedic TLS"] = tls[0].proc.pid
        client_dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user=bench"
        postmaster = cluster.postmaster_pid()
        rows = []
        for load in loads:
            if load == "pgbench":
                bench_load = start_pgbench(cluster)
            else:
                while len(clients) < int(load):
                    clients.append(psycopg.connect(client_dsn))
            timed_scrape(peer.url)
            timed_scrape(ours.url)
            time.sleep(0.6)
            backends = long_lived_backends(cluster)
            pg_side: dict[str, Callable[[], float]] = {}
            if "pgmedic" in backends:
                # pgmedic's fresh backend exits each scrape: the postmaster reaps it and its CPU lands in the
                # postmaster's cutime/cstime (nothing else exits here, autovacuum aside); plus its session's.
                pg_side["pgmedic"] = functools.partial(ours_pg_cpu, postmaster, backends["pgmedic"])
            if "peer" in backends:
                pg_side["peer"] = functools.partial(cpu_seconds, backends["peer"])
            samples = {"pgmedic": sample_count(ours.url), "peer": sample_count(peer.url)}
            for pattern in patterns:
                gap = args.gap if pattern == "realistic" else 0.0
                phase = measure(scrapes, pids, args.rounds, gap, pg_side)
                phase.samples = samples
                rows.append((load, pattern, phase))
            if bench_load is not None:
                bench_load.terminate()
                bench_load.wait(30)
                bench_load = None
        report(rows, cluster, args, tls is not None)
        return 0
    finally:
        if bench_load is not None:
            bench_load.kill()
        for c in clients:
            c.close()
        for s in services:
            s.stop()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def start_pgbench(cluster: Cluster) -> subprocess.Popen[bytes]:
    """A write load: pgbench -c 8 (TPC-B-like) until terminated."""
    pgbench = os.path.join(cluster.bin_dir, "pgbench")
    conn = ["-h", str(cluster.socket_dir), "-p", str(cluster.port), "postgres"]
    subprocess.run(as_owner([pgbench, "-i", "-q", "-s", "5", *conn]), check=True, capture_output=True, timeout=300)
    return subprocess.Popen(
        as_owner([pgbench, "-c", "8", "-j", "2", "-T", "3600", *conn]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def report(rows: list[tuple[str, str, Phase]], cluster: Cluster, args: argparse.Namespace, tls: bool) -> None:
    version = cluster.psql("SHOW server_version")
    print(f"\nscrape cost, {args.rounds} interleaved scrapes per load and pattern; PostgreSQL {version}, "
          f"shared_buffers {args.shared_buffers}, fsync on; realistic = a new connection per scrape after "
          f"{args.gap:g}s idle; back-to-back = no idle gap")  # fmt: skip
    print(f"{'load':>8} {'pattern':>12} | {'pgmedic p50':>11} {'p95':>7} {'CPU/scr':>8} {'PG CPU':>7} | "
          f"{'peer p50':>8} {'p95':>7} {'CPU/scr':>8} {'PG CPU':>7} | {'p50 ratio':>9} {'CPU ratio':>9} | "
          f"{'samples':>11}")  # fmt: skip
    for load, pattern, phase in rows:
        p50 = {k: statistics.median(v) * 1000 for k, v in phase.latency.items()}
        p95 = {k: percentile(v, 0.95) * 1000 for k, v in phase.latency.items()}
        cpu = {k: v * 1000 for k, v in phase.cpu.items()}
        pg = {k: v * 1000 for k, v in phase.pg_cpu.items()}
        print(
            f"{load:>8} {pattern:>12} | {p50['pgmedic']:>9.2f}ms {p95['pgmedic']:>5.1f}ms {cpu['pgmedic']:>6.2f}ms "
            f"{pg.get('pgmedic', float('nan')):>5.2f}ms | {p50['peer']:>6.2f}ms {p95['peer']:>5.1f}ms "
            f"{cpu['peer']:>6.2f}ms {pg.get('peer', float('nan')):>5.2f}ms | "
            f"{p50['pgmedic'] / p50['peer']:>9.2f} {cpu['pgmedic'] / cpu['peer']:>9.2f} | "
            f"{phase.samples.get('pgmedic', 0):>5}/{phase.samples.get('peer', 0):<5}"
        )
        if tls:
            print(f"{'':>21} | pgmedic TLS p50 {p50['pgmedic TLS']:.2f}ms, CPU/scrape {cpu['pgmedic TLS']:.2f}ms")
    print("ratio = pgmedic / peer (below 1.0: pgmedic is cheaper); CPU/scr = the exporter process's CPU per "
          "scrape (all threads, schedstat); PG CPU = its backends' (pgmedic: the reaped fresh one and its statistics session; peer: its long-lived one); "
          "samples = in one scrape, pgmedic/peer")  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
