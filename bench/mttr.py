#!/usr/bin/env python3
"""Time to recovery after `kill -9` of the postmaster, through the full chain, side by side.

Three chains in the same run, drills interleaved round by round so machine noise hits all alike:

* pgmedic  the shipped chain: exporter -> Prometheus (shipped rules, 1 s intervals) -> Alertmanager
           (shipped routing) -> pgmedic remediator (probe, budget, journal) -> start as owner;
* naive    the same Prometheus and Alertmanager, but the webhook is a trivial HTTP handler that only
           runs `pg_ctl start` (no checks, no journal, no dedupe);
* fast     the shipped chain with the remediator's fast path on for this instance (pidfd watch);
* monit    a local supervisor polling every 1 s (monit's shortest practical cycle) and running `pg_ctl start`;
* floor    a local supervisor polling the postmaster every 100 ms and running `pg_ctl start`.

Recovery = the first successful SQL connection after the kill, seen by this script polling every
20 ms. Prints median/min/max per chain, pgmedic's per-stage medians, and the ratios.

The crash-loop scenario (``--scenario crash-loop`` or ``both``, the default) kills the postmaster, and
kills the new one again the moment it accepts connections (an extension that takes the server down on
first use): it times the second recovery. Prometheus usually has not seen the instance up in between,
so the alert keeps firing with its old startsAt and no new notification comes; a chain that only acts
on notifications stalls there (counted as failed after 30 s).

    .venv/bin/python bench/mttr.py [--drills 7] [--fast] [--scenario kill9|crash-loop|both]

--fast runs the fast profile (250 ms scrapes and evaluation). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

from pgmedic import procfs
from pgmedic.demo.drills import timeline
from pgmedic.demo.sandbox import Cluster, as_owner, make_temp_dir, make_template, new_cluster
from pgmedic.demo.stack import Stack, build_stack
from pgmedic.reaper import become_subreaper, start_reaper

BENCH_INSTANCE = {"max_restart": 1000, "restart_delay": "0s"}  # deliberate drills: no budget, no backoff
DRILL_TIMEOUT = 30.0
SETTLE = 12.0  # seconds between two drills of one chain: the alert resolves, Alertmanager's group flushes


def pg_ctl_start(cluster: Cluster) -> int:
    argv = [os.path.join(cluster.bin_dir, "pg_ctl"), "-D", str(cluster.data), "-l", str(cluster.root / "server.log"),
            "-o", f"-p {cluster.port}", "-w", "-t", "30", "start"]  # fmt: skip
    return subprocess.run(as_owner(argv), capture_output=True, timeout=60).returncode


def accepting(cluster: Cluster) -> bool:
    try:
        psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, dbname="postgres",
                        user=cluster.instance_attrs()["instancename"], connect_timeout=2).close()  # fmt: skip
        return True
    except psycopg.Error:
        return False


def kill_and_time(cluster: Cluster, jitter: bool = True) -> tuple[float, float]:
    """kill -9 the postmaster at a random phase of the scrape interval; (kill time, seconds until SQL works)."""
    if jitter:
        time.sleep(random.uniform(0.0, 1.0))  # drills 12 s apart would otherwise hit the same scrape phase
    pid = cluster.postmaster_pid()
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    while time.time() - t0 < DRILL_TIMEOUT:
        if accepting(cluster):
            return t0, time.time() - t0
        time.sleep(0.02)
    return t0, float("inf")


def crash_loop_and_time(cluster: Cluster) -> float:
    """kill -9, then kill -9 the new postmaster as soon as it accepts: seconds from the second kill to
    accepting again. A chain that never brings it back is restarted by hand for the next round."""
    _, first = kill_and_time(cluster)
    second = kill_and_time(cluster, jitter=False)[1] if first != float("inf") else float("inf")
    if second == float("inf") and not accepting(cluster):
        pg_ctl_start(cluster)
    return second


class NaiveWebhook:
    """Alertmanager's receiver in the naive chain: any POST runs `pg_ctl start`, nothing else."""

    def __init__(self) -> None:
        self.received: list[float] = []
        self.cluster: Cluster | None = None  # set once the naive chain's cluster exists
        bench = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.end_headers()
                if bench.cluster is not None and any(a["status"] == "firing" for a in body.get("alerts", [])):
                    bench.received.append(time.time())
                    pg_ctl_start(bench.cluster)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


class Supervisor:
    """The floor (and monit-like polling): poll every INTERVAL; when the postmaster is gone (or a
    zombie), pg_ctl start."""

    def __init__(self, cluster: Cluster, interval: float = 0.1) -> None:
        self.cluster = cluster
        self.interval = interval
        self.stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(Exception):
                stat = procfs.read_stat(self.cluster.postmaster_pid())
                if stat is None or stat.is_zombie:
                    pg_ctl_start(self.cluster)


def summary(values: list[float]) -> tuple[float, float, float, int]:
    ok = [v for v in values if v != float("inf")]
    if not ok:
        return float("nan"), float("nan"), float("nan"), len(values)
    return statistics.median(ok), min(ok), max(ok), len(values) - len(ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--drills", type=int, default=7)
    parser.add_argument("--fast", action="store_true", help="250 ms scrape and evaluation intervals")
    parser.add_argument("--scenario", choices=("kill9", "crash-loop", "both"), default="both")
    args = parser.parse_args()
    stop_reaper = threading.Event()
    become_subreaper()
    start_reaper(stop_reaper, interval=0.05)  # fair to all chains: no postmaster waits on a slow init
    overrides = (
        {"scrape_interval": "250ms", "scrape_timeout": "250ms", "evaluation_interval": "250ms"} if args.fast else None
    )
    stacks: list[Stack] = []
    base = make_temp_dir("pgmedic-mttr-")
    floor_cluster = monit_cluster = None
    naive_hook = None
    supervisor = monit = None
    try:
        # One pipeline for both Alertmanager chains: the same exporter, Prometheus and Alertmanager,
        # so detection (scrape and evaluation phase) is alike; only the receiver differs.
        naive_hook = NaiveWebhook()
        ours = build_stack(
            "mttr", instance=BENCH_INSTANCE, prometheus_overrides=overrides, extra_instances={"naive": naive_hook.url},
            more_instances={"fast": {"fast_path": True}},
        )  # fmt: skip
        stacks.append(ours)
        naive_cluster = ours.clusters["naive"]
        naive_hook.cluster = naive_cluster
        template = make_template(base)
        floor_cluster = new_cluster(template, "floor")
        supervisor = Supervisor(floor_cluster)
        monit_cluster = new_cluster(template, "monit")
        monit = Supervisor(monit_cluster, interval=1.0)
        chains = {
            "pgmedic": ours.cluster, "fast": ours.clusters["fast"], "naive": naive_cluster,
            "monit": monit_cluster, "floor": floor_cluster,
        }  # fmt: skip
        if args.scenario in ("crash-loop", "both"):
            loops: dict[str, list[float]] = {name: [] for name in chains}
            for i in range(args.drills):
                began = time.time()
                for name, cluster in chains.items():
                    loops[name].append(crash_loop_and_time(cluster))
                print(f"crash loop {i + 1}/{args.drills}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in loops.items()))
                time.sleep(max(0.0, began + SETTLE - time.time()))
            print(f"\ncrash loop: second kill right after the first recovery, {args.drills} drills per chain")
            print(f"{'chain':>8} | {'median':>7} {'min':>7} {'max':>7} | {'failed':>6}")
            for name, values in loops.items():
                med, lo, hi, failed = summary(values)
                print(f"{name:>8} | {med:>6.2f}s {lo:>6.2f}s {hi:>6.2f}s | {failed:>6}")
            if args.scenario == "crash-loop":
                return 0
            print()
        results: dict[str, list[float]] = {name: [] for name in chains}
        handling: dict[str, list[float]] = {"pgmedic": [], "naive": []}  # webhook received -> accepting
        stages: list[list[tuple[str, float | None]]] = []
        for i in range(args.drills):
            began = time.time()
            t0, ttr = kill_and_time(ours.cluster)
            results["pgmedic"].append(ttr)
            time.sleep(1.0)
            stages.append(timeline(ours, t0))
            webhook = dict(stages[-1]).get("webhook received")
            if webhook is not None and ttr != float("inf"):
                handling["pgmedic"].append(ttr - webhook)
            t0, ttr = kill_and_time(naive_cluster)
            results["naive"].append(ttr)
            received = [r - t0 for r in naive_hook.received if r >= t0]
            if received and ttr != float("inf"):
                handling["naive"].append(ttr - received[0])
            for name in ("fast", "monit", "floor"):
                results[name].append(kill_and_time(chains[name])[1])
            print(
                f"drill {i + 1}/{args.drills}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()),
                flush=True,
            )
            time.sleep(max(0.0, began + SETTLE - time.time()))
        profile = "fast (250 ms)" if args.fast else "shipped (1 s)"
        print(f"\ntime to recovery after kill -9, {args.drills} drills per chain, {profile} intervals")
        print(f"{'chain':>8} | {'median':>7} {'min':>7} {'max':>7} | {'failed':>6} | {'webhook->accepting median':>26}")
        for name, values in results.items():
            med, lo, hi, failed = summary(values)
            hand = f"{statistics.median(handling[name]):.3f}s" if handling.get(name) else "-"
            print(f"{name:>8} | {med:>6.2f}s {lo:>6.2f}s {hi:>6.2f}s | {failed:>6} | {hand:>26}")
        med = {name: summary(v)[0] for name, v in results.items()}
        print(
            f"\nratio pgmedic/naive: {med['pgmedic'] / med['naive']:.2f}   pgmedic/floor: {med['pgmedic'] / med['floor']:.2f}"
            f"   fast/floor: {med['fast'] / med['floor']:.2f}   fast/monit: {med['fast'] / med['monit']:.2f}"
        )
        if handling["pgmedic"] and handling["naive"]:
            extra = statistics.median(handling["pgmedic"]) - statistics.median(handling["naive"])
            print(f"pgmedic's checks and journal cost {extra * 1000:+.0f} ms per recovery against the naive webhook")
        print("\npgmedic per-stage medians (seconds after the kill):")
        for idx, (stage, _) in enumerate(stages[0]):
            seen = [s[idx][1] for s in stages if s[idx][1] is not None]
            shown = f"{statistics.median(seen):6.2f}s" if seen else "   n/a"
            print(f"  {shown}  {stage}")
        return 0
    finally:
        if supervisor:
            supervisor.stop.set()
        if monit:
            monit.stop.set()
        if naive_hook:
            naive_hook.close()
        for stack in stacks:
            stack.close()
        for made in (floor_cluster, monit_cluster):
            if made:
                made.destroy()
        stop_reaper.set()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
