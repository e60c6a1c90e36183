#!/usr/bin/env python3
"""Time to recovery after `kill -9` through each manager pgmedic acts through, side by side.

Two instances in the same run, drills interleaved round by round so machine noise hits both alike:

* debian   a postgresql-common cluster (pg_createcluster, configuration in /etc/postgresql): found as
           manager pg_ctlcluster, started with `pg_ctlcluster VER NAME start` as its owner;
* plain    an initdb cluster: manager pg_ctl, started with `pg_ctl start -w` as its owner.

One remediator watches both with its fast path (pidfd), so the figure is the remediator's own path:
crash seen, leftovers reaped, the manager's start, the wait until it accepts. Recovery = the first probe
(pgmedic's own, every 20 ms) that finds the instance accepting after the kill. Prints median, min and
max per instance and the ratio of the medians.

    .venv/bin/python bench/managers.py [--drills 5]

A benchmark, not a test; run as root (pg_createcluster registers the cluster in /etc/postgresql).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import time
import uuid

from pgmedic.config import load_config
from pgmedic.demo.sandbox import (
    Cluster,
    chown_owner,
    free_port,
    http,
    make_temp_dir,
    make_template,
    new_cluster,
    new_debian_cluster,
    pgmedic_service,
    wait_for,
    write_config,
)
from pgmedic.instance import Instance
from pgmedic.states import State

DRILL_TIMEOUT = 60.0
SETTLE = 2.0  # seconds after a recovery: the fast path watches the new postmaster within one


def recovery_seconds(cluster: Cluster, instance: Instance) -> float:
    """kill -9 of CLUSTER's postmaster, then the time until pgmedic's probe finds it accepting."""
    os.kill(cluster.postmaster_pid(), signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < DRILL_TIMEOUT:
        if instance.probe(timeout=1.0).state is State.ACCEPTING and instance.postmaster() is not None:
            return time.monotonic() - killed
        time.sleep(0.02)
    raise TimeoutError(f"{cluster.name} did not recover within {DRILL_TIMEOUT:g}s")


def episodes_done(url: str, instance: str) -> int:
    _, body = http("GET", f"{url}/api/v1/events?limit=10000&instance={instance}")
    return sum(1 for e in body["events"] if e["kind"] == "episode_done")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drills", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "bench/managers.py: run as root (pg_createcluster registers clusters in /etc/postgresql)", file=sys.stderr
        )
        return 2
    work = make_temp_dir("pgmedic-bench-managers-")
    template_base = work / "template"
    template_base.mkdir()
    chown_owner(template_base)
    debian = new_debian_cluster(f"pgmb{uuid.uuid4().hex[:8]}")
    plain = new_cluster(make_template(template_base), "plain")
    remediator = None
    try:
        debian.extra.update(max_restart=1000, restart_delay="0s")
        plain.extra.update(max_restart=1000, restart_delay="0s")
        config = write_config(work / "pgmedic.yaml", [debian, plain], work / "state", remediator={"fast_path": True})
        remediator = pgmedic_service("remediator", config, work, free_port())
        loaded = load_config(str(config))
        instances = {c.name: Instance(loaded.instance(c.name)) for c in (debian, plain)}
        manager = {name: str(inst.manager().kind) for name, inst in instances.items()}
        time.sleep(SETTLE)
        times: dict[str, list[float]] = {debian.name: [], plain.name: []}
        for drill in range(args.drills):
            for cluster in (debian, plain) if drill % 2 == 0 else (plain, debian):
                done = episodes_done(remediator.url, cluster.name)
                times[cluster.name].append(recovery_seconds(cluster, instances[cluster.name]))
                # The action ends after the server accepts (pg_ctlcluster checks readiness for a while): the
                # next drill waits for the episode to end, or it would kill the server under the action.
                wait_for(lambda c=cluster, n=done: episodes_done(remediator.url, c.name) > n, 60, "the episode to end")
                time.sleep(SETTLE)
        print(f"kill -9 -> accepting, {args.drills} drills each, remediator fast path (seconds)")
        for label, cluster in (("debian", debian), ("plain", plain)):
            series = times[cluster.name]
            print(
                f"  {label:7} manager {manager[cluster.name]:14} median {statistics.median(series):.2f}  "
                f"min {min(series):.2f}  max {max(series):.2f}  ({', '.join(f'{t:.2f}' for t in series)})"
            )
        ratio = statistics.median(times[debian.name]) / statistics.median(times[plain.name])
        print(f"  ratio debian/plain (medians): {ratio:.2f}")
    finally:
        if remediator is not None:
            remediator.stop()
        debian.destroy()
        plain.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
