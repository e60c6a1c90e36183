"""``pgmedic demo``: the whole chain on a throwaway cluster, one drill, and the incident timeline.

Starts PostgreSQL (initdb in a temp dir), the exporter, the remediator, Prometheus and Alertmanager
on loopback from the shipped alerts/ files, prints every URL, runs a drill (kill -9 of the
postmaster by default) and prints what happened when. Then it keeps running with a one-line live
status until Ctrl-C, and removes everything it started. ``--once`` exits after the drill: 0 only if
the expected outcome (for kill9 and sigstop: a recovery) was seen.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from ..config import load_config
from ..instance import Instance
from ..reaper import become_subreaper, start_reaper
from .drills import DRILLS, format_timeline, run_drill, timeline
from .sandbox import http
from .stack import Stack, build_stack


def status_line(stack: Stack, instance: Instance) -> str:
    probe = instance.probe(timeout=1.0)
    try:
        firing = sorted({a["alertname"] for a in stack.query('ALERTS{alertstate="firing"}') for a in [a["metric"]]})
    except Exception:
        firing = ["(prometheus unreachable)"]
    _, body = http("GET", stack.url("remediator") + "/api/v1/status", timeout=3)
    st = body.get("instances", {}).get(stack.cluster.name, {}) if isinstance(body, dict) else {}
    restarts = sum(1 for e in stack.events() if e["kind"] == "restart_started")
    return (
        f"{time.strftime('%H:%M:%S')} postgres: {probe.state:<14} alerts: {', '.join(firing) or 'none':<40} "
        f"restarts: {restarts}  budget: {st.get('budget_remaining', '?')}/{st.get('max_restart', '?')} "
        f"remediation: {st.get('state', '?')}"
    )


def run_demo(drill: str = "kill9", once: bool = False, fast_path: bool = False) -> int:
    if drill not in DRILLS:
        print(f"pgmedic demo: unknown drill {drill!r} (known: {', '.join(DRILLS)})", file=sys.stderr)
        return 2
    stop = threading.Event()
    if become_subreaper():
        start_reaper(stop, interval=0.05)
    print("pgmedic demo: starting PostgreSQL, exporter, remediator, Prometheus and Alertmanager on 127.0.0.1 …")
    try:
        stack = build_stack("demo", instance={"fast_path": True} if fast_path else None)
    except (RuntimeError, TimeoutError) as exc:  # a missing tool, or a part that never came up
        print(f"pgmedic demo: {exc}", file=sys.stderr)
        return 2
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    try:
        cluster = stack.cluster
        print(f"  PostgreSQL     {cluster.data} (port {cluster.port}, socket {cluster.socket_dir})")
        print(f"  exporter       {stack.url('exporter')}/metrics")
        print(f"  remediator     {stack.url('remediator')}/api/v1/status   events: /api/v1/events")
        print(f"  Prometheus     {stack.url('prometheus')}/alerts")
        for am in stack.alertmanagers:
            print(f"  Alertmanager   {am.url}")
        print(f"  config         {stack.config_path}")
        chosen = DRILLS[drill]
        print(f"\ndrill {drill}: {chosen.description}")
        t0, handle, ok = run_drill(stack, drill)
        if chosen.recovers:
            alertname = "PostgresNotResponding" if drill == "sigstop" else "PostgresPostmasterDown"
            time.sleep(1.0)  # let Prometheus' last samples land
            print("\nincident timeline (seconds after the drill):")
            print(format_timeline(timeline(stack, t0, alertname)))
        verdict = "recovered" if chosen.recovers else "expected outcome seen"
        print(f"\n{verdict if ok else 'NOT ' + verdict} within {chosen.timeout:.0f}s")
        chosen.cleanup(handle)
        if once:
            return 0 if ok else 1
        print("\nlive status (Ctrl-C to stop and remove everything):")
        instance = Instance(load_config(str(stack.config_path)).instance(cluster.name))
        while not interrupted.is_set():
            sys.stdout.write("\r" + status_line(stack, instance)[:160].ljust(160))
            sys.stdout.flush()
            interrupted.wait(1.0)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("\npgmedic demo: stopping and removing everything …")
        stack.close()
        stop.set()
