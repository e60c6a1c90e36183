#!/usr/bin/env python3
"""Load and abuse against pgmedic's own servers, on 127.0.0.1, bounded in time.

    .venv/bin/python bench/hostile.py webhook  [--clients 50 --seconds 30]
        concurrent Alertmanager-like clients posting to the webhook: errors, latency p50/p99, and
        whether every answered delivery is in the journal (nothing lost).
    .venv/bin/python bench/hostile.py halfopen [--connections 110 --seconds 20]
        a scrape and a webhook post every second, first idle, then while that many connections
        hold half a request open on each server: p50 with / p50 idle.
    .venv/bin/python bench/hostile.py soak     [--minutes 10 --rate 200]
        client connections churned at RATE per second while the exporter is scraped every 0.5 s:
        the exporter's RSS and open descriptors before, during and after.

A benchmark, not a test: nothing here asserts (tests/test_hostile.py does, on shorter runs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable

import psycopg

from pgmedic.demo.measure import percentile, rss_mib
from pgmedic.demo.sandbox import (
    Cluster,
    Service,
    alert_payload,
    http,
    make_temp_dir,
    make_template,
    new_cluster,
    pgmedic_service,
    write_config,
    write_secret,
)

TOKEN = "bench-token"


def timed(call: Callable[..., int], *args: str) -> tuple[float, int]:
    began = time.perf_counter()
    status = call(*args)
    return time.perf_counter() - began, status


class Rig:
    def __init__(self) -> None:
        self.base = make_temp_dir("pgmedic-hostile-")
        template = make_template(self.base)
        with open(template / "postgresql.conf", "a") as f:
            f.write("max_connections = 300\n")
        self.cluster: Cluster = new_cluster(template, "main")
        token = write_secret(self.base / "token", TOKEN)
        self.config = write_config(
            self.base / "pgmedic.yaml", [self.cluster], self.base / "state", remediator={"token_file": str(token)}
        )
        self.services: list[Service] = []

    def start(self, kind: str) -> Service:
        service = pgmedic_service(kind, self.config, self.base)
        self.services.append(service)
        return service

    def close(self) -> None:
        for service in self.services:
            service.stop()
        self.cluster.destroy()
        shutil.rmtree(self.base, ignore_errors=True)


def post(url: str, fingerprint: str) -> int:
    payload = alert_payload("PostgresPostmasterDown", "main", status="resolved", fingerprint=fingerprint)
    return http("POST", url + "/api/v1/alerts", payload, TOKEN, timeout=30)[0]


def scrape(url: str) -> int:
    return http("GET", url + "/metrics", timeout=30)[0]


def journaled_notifications(url: str) -> int:
    count, since = 0, 0
    while True:
        _, body = http("GET", f"{url}/api/v1/events?since={since}&limit=1000")
        events = body["events"]
        if not events:
            return count
        count += sum(1 for e in events if e["kind"] == "notification")
        since = events[-1]["id"]


def bench_webhook(rig: Rig, clients: int, seconds: float) -> None:
    remediator = rig.start("remediator")
    latencies: list[float] = []
    errors: list[str] = []
    ok = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        nonlocal ok
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                took, status = timed(post, remediator.url, f"c{n}-{i}")
            except Exception as exc:  # a refused or reset connection is an error to report
                with lock:
                    errors.append(type(exc).__name__)
                continue
            with lock:
                latencies.append(took)
                if status == 200:
                    ok += 1
                else:
                    errors.append(f"HTTP {status}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    journaled = journaled_notifications(remediator.url)
    print(f"webhook: {clients} clients x {seconds:g}s: {len(latencies)} requests, {ok} answered 200, "
          f"{len(errors)} errors {sorted(set(errors))[:3]}")  # fmt: skip
    print(f"  latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms; {ok / seconds:.0f} deliveries/s")  # fmt: skip
    print(
        f"  journaled notifications: {journaled} of {ok} answered 200 ({'nothing lost' if journaled == ok else 'LOST'})"
    )


def half_open(port: int, stop: threading.Event, count: int, opened: list[int]) -> None:
    """Keep COUNT connections holding half a request open (re-opened when the server closes them)."""
    sockets: list[socket.socket] = []
    try:
        while not stop.is_set():
            alive = []
            for s in sockets:
                try:
                    if s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    continue
                alive.append(s)
            sockets = alive
            while len(sockets) < count:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
                sockets.append(s)
                opened[0] += 1
            stop.wait(0.2)
    finally:
        for s in sockets:
            s.close()


def bench_halfopen(rig: Rig, connections: int, seconds: float) -> None:
    exporter, remediator = rig.start("exporter"), rig.start("remediator")

    def sample(phase: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"scrape": [], "webhook": []}
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            out["scrape"].append(timed(scrape, exporter.url)[0])
            out["webhook"].append(timed(post, remediator.url, f"{phase}-{n}")[0])
            time.sleep(1.0)
        return out

    idle = sample("idle")
    stop = threading.Event()
    opened = [0]
    holders = [
        threading.Thread(target=half_open, args=(int(s.url.rsplit(":", 1)[1]), stop, connections, opened))
        for s in (exporter, remediator)
    ]
    for t in holders:
        t.start()
    time.sleep(2)
    try:
        loaded = sample("loaded")
    finally:
        stop.set()
        for t in holders:
            t.join()
    print(
        f"half-open: {connections} per server held open ({opened[0]} opened in all), a scrape and a post every second"
    )
    for what in ("scrape", "webhook"):
        a, b = statistics.median(idle[what]) * 1000, statistics.median(loaded[what]) * 1000
        print(f"  {what:8} p50 idle {a:6.1f} ms, with half-open {b:6.1f} ms: ratio {b / a:.2f}; "
              f"max with half-open {max(loaded[what]) * 1000:.1f} ms")  # fmt: skip


def fds_and_rss(pid: int) -> tuple[int, float]:
    return len(os.listdir(f"/proc/{pid}/fd")), rss_mib(pid)


def bench_soak(rig: Rig, minutes: float, rate: int) -> None:
    exporter = rig.start("exporter")
    cluster = rig.cluster
    cluster.psql("CREATE ROLE churn LOGIN")
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user=churn"
    stop = threading.Event()
    churned = [0]

    def churn() -> None:
        interval = 4.0 / rate  # four threads
        while not stop.is_set():
            with contextlib.suppress(psycopg.Error):
                psycopg.connect(dsn).close()
                churned[0] += 1
            stop.wait(interval)

    def scraper() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                scrape(exporter.url)
            stop.wait(0.5)

    for _ in range(3):
        scrape(exporter.url)
    before = fds_and_rss(exporter.proc.pid)
    threads = [threading.Thread(target=churn) for _ in range(4)] + [threading.Thread(target=scraper)]
    for t in threads:
        t.start()
    began = time.monotonic()
    peak = before
    try:
        while time.monotonic() - began < minutes * 60:
            time.sleep(10)
            now = fds_and_rss(exporter.proc.pid)
            peak = (max(peak[0], now[0]), max(peak[1], now[1]))
            print(f"  {time.monotonic() - began:5.0f}s: {churned[0]} connections churned, exporter {now[0]} fds, "
                  f"{now[1]:.1f} MiB")  # fmt: skip
    finally:
        stop.set()
        for t in threads:
            t.join()
    for _ in range(3):
        scrape(exporter.url)
    after = fds_and_rss(exporter.proc.pid)
    backends = len(cluster.processes())
    print(f"soak: {minutes:g} min, {churned[0]} client connections ({churned[0] / (minutes * 60):.0f}/s), "
          f"a scrape every 0.5 s")  # fmt: skip
    print(f"  exporter fds {before[0]} before, {peak[0]} peak, {after[0]} after ({backends} server processes live); "
          f"RSS {before[1]:.1f} -> {after[1]:.1f} MiB (peak {peak[1]:.1f})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("scenario", choices=["webhook", "halfopen", "soak"])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--connections", type=int, default=110)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=int, default=200)
    args = parser.parse_args()
    rig = Rig()
    try:
        if args.scenario == "webhook":
            bench_webhook(rig, args.clients, args.seconds or 30)
        elif args.scenario == "halfopen":
            bench_halfopen(rig, args.connections, args.seconds or 20)
        else:
            bench_soak(rig, args.minutes, args.rate)
    finally:
        rig.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
