"""The exporter on real clusters over real HTTP: truthful when PostgreSQL is up, dead, hung or full."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from pgmedic.exporter.sqlview import run_isolated
from pgmedic.exporter.tracker import ProcessTracker
from prometheus_client.parser import text_string_to_metric_families

from pgmedic.config import load_config
from pgmedic.connection import open_pgconn
from pgmedic.demo.sandbox import Cluster, Service, as_owner, new_standby, owner, wait_for

# Runs on every PostgreSQL version of the matrix (tests/conftest.py), except those marked one_pg.
pytestmark = pytest.mark.every_pg

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(service: Service, timeout_header: float | None = None, http_timeout: float = 30) -> tuple[Samples, str]:
    request = urllib.request.Request(service.url + "/metrics")
    if timeout_header is not None:
        request.add_header("X-Prometheus-Scrape-Timeout-Seconds", str(timeout_header))
    with urllib.request.urlopen(request, timeout=http_timeout) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    want = frozenset(labels.items())
    matches = [v for (n, lbl), v in samples.items() if n == name and want <= lbl]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} series"
    return matches[0]


def has(samples: Samples, name: str, **labels: str) -> bool:
    want = frozenset(labels.items())
    return any(n == name and want <= lbl for (n, lbl) in samples)


def workers_of(samples: Samples, name: str) -> dict[str, tuple[float, float, float]]:
    """{worker: (up, processes, expected processes)} as the exporter reports them."""
    out = {}
    for (n, lbl), v in samples.items():
        labels = dict(lbl)
        if n == "pg_background_worker_up" and labels["pg_instance"] == name:
            w = labels["worker"]
            out[w] = (
                v,
                value(samples, "pg_background_worker_processes", pg_instance=name, worker=w),
                value(samples, "pg_background_worker_expected_processes", pg_instance=name, worker=w),
            )
    return out


def test_workers_appear_and_go_as_their_settings_say(
    make_cluster: Callable[..., Cluster], exporter_for, pg_major: int
) -> None:
    """archiver with archive_mode; walsummarizer with summarize_wal (17+); io workers counted against
    io_workers (18); autovacuum launcher with autovacuum. Every reported worker runs."""
    c = make_cluster("alpha", start=False)
    settings: dict[str, str | int] = {"archive_mode": "on", "archive_command": "/bin/true"}
    if pg_major >= 17:
        settings["summarize_wal"] = "on"
    if pg_major >= 18:
        settings.update(io_method="worker", io_workers=2)
    c.configure(**settings)
    c.start()
    service = exporter_for(c)
    expected = {"logger", "checkpointer", "background_writer", "walwriter", "autovacuum_launcher", "archiver",
                "logical_replication_launcher"} | ({"stats_collector"} if pg_major <= 14 else set())  # fmt: skip
    expected |= ({"walsummarizer"} if pg_major >= 17 else set()) | ({"io_worker"} if pg_major >= 18 else set())
    workers = wait_for(
        lambda: (w := workers_of(scrape(service)[0], "alpha")) and set(w) == expected and w, 10, "every worker"
    )
    assert all(up == 1 and running == wanted for up, running, wanted in workers.values()), workers
    if pg_major >= 18:
        assert workers["io_worker"][1:] == (2, 2)

    # Reload with other settings: the workers they start go, io workers follow io_workers.
    later: dict[str, str | int] = {"autovacuum": "off"}
    if pg_major >= 17:
        later["summarize_wal"] = "off"
    if pg_major >= 18:
        later["io_workers"] = 4
    c.configure(**later)
    c.reload()
    gone = {"autovacuum_launcher", "walsummarizer"}

    def settled() -> dict[str, tuple[float, float, float]] | None:
        w = workers_of(scrape(service)[0], "alpha")
        io_ok = pg_major < 18 or w.get("io_worker", (0, 0, 0)) == (1, 4, 4)
        return w if not (gone & set(w)) and io_ok else None

    workers = wait_for(settled, 15, "the reloaded settings in the reported workers")
    assert all(up == 1 for up, _, _ in workers.values()), workers
    assert set(workers) == expected - gone

    # Restart-only settings: their workers go after a restart with them off.
    c.pg_ctl("stop", "-m", "fast")
    off: dict[str, str | int] = {
        "archive_mode": "off",
        "max_logical_replication_workers": 0,
        "logging_collector": "off",
    }
    if pg_major >= 18:
        off["io_method"] = "sync"
    c.configure(**off)
    c.start()
    gone |= {"archiver", "logical_replication_launcher", "logger", "io_worker"}
    workers = wait_for(
        lambda: (w := workers_of(scrape(service)[0], "alpha")) and set(w) == expected - gone and w,
        15,
        "only the workers the restart-only settings still start",
    )
    assert all(up == 1 for up, _, _ in workers.values()), workers


def test_standby_workers(make_cluster: Callable[..., Cluster], exporter_for, pg_major: int) -> None:
    """On a streaming standby: startup and walreceiver, no walwriter or autovacuum launcher; from 17 the
    slotsync worker when sync_replication_slots is on and its parameters validate."""
    primary = make_cluster("primary", start=False)
    primary.configure(wal_level="logical" if pg_major >= 17 else "replica")
    primary.start()
    extra: dict[str, str | int] = {}
    if pg_major >= 17:
        primary.psql("SELECT pg_create_physical_replication_slot('standby1')")
        extra = {"primary_slot_name": "standby1", "hot_standby_feedback": "on", "sync_replication_slots": "on"}
    standby = new_standby(primary, "replica", **extra)
    try:
        service = exporter_for(primary, standby)
        want = {"logger", "checkpointer", "background_writer", "startup", "walreceiver"}
        want |= {"stats_collector"} if pg_major <= 14 else set()
        want |= {"slotsync_worker"} if pg_major >= 17 else set()
        want |= {"io_worker"} if pg_major >= 18 else set()

        def standby_workers() -> dict[str, tuple[float, float, float]] | None:
            samples = scrape(service)[0]
            w = workers_of(samples, "replica")
            return w if set(w) == want and all(up == 1 for up, _, _ in w.values()) else None

        workers = wait_for(standby_workers, 20, f"the standby's workers {sorted(want)}")
        assert "walwriter" not in workers and "autovacuum_launcher" not in workers
        samples = scrape(service)[0]
        assert value(samples, "pg_processes", pg_instance="primary", backend_type="walsender") >= 1
    finally:
        standby.destroy()


def test_running_instances_every_metric(make_cluster: Callable[..., Cluster], exporter_for, pg_major: int) -> None:
    a, b = make_cluster("alpha"), make_cluster("beta")
    service = exporter_for(a, b)
    samples, _ = scrape(service, timeout_header=5)
    for c in (a, b):
        name = c.name
        assert value(samples, "pg_postmaster_up", pg_instance=name) == 1
        assert value(samples, "pg_up", pg_instance=name) == 1
        assert value(samples, "pg_postmaster_stale_pid_file", pg_instance=name) == 0
        assert value(samples, "pg_postmaster_state", pg_instance=name, state="ready") == 1
        assert value(samples, "pg_postmaster_state", pg_instance=name, state="stopping") == 0
        start = int((c.data / "postmaster.pid").read_text().split("\n")[2])
        assert value(samples, "pg_postmaster_start_time_seconds", pg_instance=name) == start
        for worker in ("logger", "checkpointer", "background_writer", "walwriter", "autovacuum_launcher"):
            assert value(samples, "pg_background_worker_up", pg_instance=name, worker=worker) == 1
            assert (
                abs(value(samples, "pg_background_worker_start_time_seconds", pg_instance=name, worker=worker) - start)
                < 30
            )
        assert not has(samples, "pg_background_worker_up", pg_instance=name, worker="archiver"), "archive_mode is off"
        if pg_major <= 14:
            assert value(samples, "pg_background_worker_up", pg_instance=name, worker="stats_collector") == 1
        else:
            assert not has(samples, "pg_background_worker_up", pg_instance=name, worker="stats_collector"), "gone"
        assert not has(samples, "pg_background_worker_up", pg_instance=name, worker="walreceiver")
        assert value(samples, "pg_settings_max_connections", pg_instance=name) == 40
        assert has(samples, "pg_settings_reserved_connections", pg_instance=name) == (pg_major >= 16)
        io_workers = has(samples, "pg_background_worker_up", pg_instance=name, worker="io_worker")
        assert io_workers == (pg_major >= 18), "io_method = worker is 18's default"
        assert value(samples, "pg_settings_superuser_reserved_connections", pg_instance=name) == 3
        assert value(samples, "pg_settings_work_mem_bytes", pg_instance=name) == 4 * 1024 * 1024
        assert value(samples, "pg_settings_maintenance_work_mem_bytes", pg_instance=name) == 64 * 1024 * 1024
        assert value(samples, "pg_settings_temp_buffers_bytes", pg_instance=name) == 8 * 1024 * 1024
        assert value(samples, "pg_settings_shared_buffers_bytes", pg_instance=name) == 16 * 1024 * 1024
        assert value(samples, "pg_processes", pg_instance=name, backend_type="checkpointer") == 1
        assert value(samples, "pg_processes", pg_instance=name, backend_type="parallel_worker") == 0
        assert value(samples, "pg_process_memory_bytes", pg_instance=name, backend_type="postmaster", kind="anon") > 0
        assert has(samples, "pg_process_cpu_seconds_total", pg_instance=name, backend_type="postmaster", mode="user")
        info = [lbl for (n, lbl) in samples if n == "pg_instance_info" and ("pg_instance", name) in lbl]
        assert dict(info[0])["version"].startswith(f"{pg_major}.") and dict(info[0])["data_directory"] == str(c.data)
        assert dict(info[0])["port"] == str(c.port)
        assert dict(info[0])["manager"] == "pg_ctl", "a plain initdb cluster: nobody else starts it"
        for collector in ("postmaster", "processes", "connection", "settings", "activity", "workers", "info"):
            assert value(samples, "pgmedic_collector_success", pg_instance=name, collector=collector) == 1
    assert has(samples, "pgmedic_build_info")


def test_activity_and_memory_of_real_clients(cluster: Cluster, exporter_for) -> None:
    service = exporter_for(cluster)
    scrape(service, timeout_header=5)  # the first scrape opens the statistics session
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"
    with psycopg.connect(dsn) as busy, psycopg.connect(dsn, autocommit=True) as idle:
        busy.execute("SELECT 1")  # opens a transaction, left idle in transaction
        busy.execute("SET work_mem = '64MB'")
        busy.execute("SELECT count(*) FROM (SELECT g FROM generate_series(1, 300000) g ORDER BY g DESC) s").fetchone()
        idle.execute("SELECT 1")
        time.sleep(1.1)
        samples, _ = scrape(service, timeout_header=5)
        assert (
            value(
                samples,
                "pg_stat_activity_connections",
                pg_instance="main",
                datname="postgres",
                state="idle in transaction",
            )
            == 1
        )
        assert value(samples, "pg_stat_activity_connections", pg_instance="main", datname="postgres", state="idle") == 1
        assert (
            value(samples, "pg_stat_activity_max_tx_duration_seconds", pg_instance="main", state="idle in transaction")
            >= 1
        )
        # The two clients and the exporter's statistics session (it holds a slot); never the scrape's own
        # fresh connection, whatever the timing, and never in the activity counts above.
        assert value(samples, "pg_client_connections", pg_instance="main") == 3
        for _ in range(5):
            again, _ = scrape(service, timeout_header=5)
            assert value(again, "pg_client_connections", pg_instance="main") == 3
            assert (
                value(again, "pg_stat_activity_connections", pg_instance="main", datname="postgres", state="idle") == 1
            )
        largest = value(samples, "pg_backend_memory_anon_max_bytes", pg_instance="main")
        total = value(
            samples, "pg_process_memory_bytes", pg_instance="main", backend_type="client_backend", kind="anon"
        )
        assert 1024 * 1024 < largest <= total, "the sorting backend's private memory shows, shared pages excluded"


def test_kill_9_postmaster(cluster: Cluster, exporter_for) -> None:
    service = exporter_for(cluster)
    scrape(service, timeout_header=5)
    os.kill(cluster.postmaster_pid(), signal.SIGKILL)
    time.sleep(0.3)
    began = time.monotonic()
    samples, _ = scrape(service, timeout_header=5)
    assert time.monotonic() - began < 1.0, "a dead instance answers at once"
    assert value(samples, "pg_postmaster_up", pg_instance="main") == 0
    assert value(samples, "pg_postmaster_stale_pid_file", pg_instance="main") == 1
    assert value(samples, "pg_up", pg_instance="main") == 0
    assert not has(samples, "pg_postmaster_start_time_seconds", pg_instance="main")
    for collector in ("connection", "settings", "activity"):
        assert value(samples, "pgmedic_collector_success", pg_instance="main", collector=collector) == 0
    assert value(samples, "pgmedic_collector_success", pg_instance="main", collector="postmaster") == 1
    assert value(samples, "pg_background_worker_up", pg_instance="main", worker="checkpointer") == 0
    assert value(samples, "pg_background_worker_up", pg_instance="main", worker="logger") == 0, "settings remembered"


@pytest.mark.one_pg  # the exporter's deadline, not the server's
def test_sigstop_postmaster_scrapes_stay_within_timeout(cluster: Cluster, exporter_for) -> None:
    service = exporter_for(cluster)
    scrape(service, timeout_header=5)
    pid = cluster.postmaster_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            began = time.monotonic()
            samples, _ = scrape(service, timeout_header=2)
            took = time.monotonic() - began
            assert took < 2.0, f"scrape took {took:.2f}s with a 2s scrape timeout"
            assert value(samples, "pg_postmaster_up", pg_instance="main") == 1
            assert value(samples, "pg_up", pg_instance="main") == 0
            assert value(samples, "pgmedic_collector_success", pg_instance="main", collector="connection") == 0
    finally:
        os.kill(pid, signal.SIGCONT)


def test_overlapping_scrapes_do_not_pile_up_connections(cluster: Cluster) -> None:
    """Ten concurrent scrapes of a frozen server: at most one connection attempt is open at a time."""
    from pgmedic.exporter.scraper import Exporter

    exporter = Exporter(load_config(str(cluster.config_path)))
    pid = cluster.postmaster_pid()

    def sockets() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        return count

    before = sockets()
    os.kill(pid, signal.SIGSTOP)
    try:
        peak = 0
        threads = [threading.Thread(target=exporter.scrape, args=(1.0,)) for _ in range(10)]
        for t in threads:
            t.start()
            time.sleep(0.02)
            peak = max(peak, sockets() - before)
        for t in threads:
            t.join(10)
        assert peak <= 1, f"{peak} connection attempts open at once"
    finally:
        os.kill(pid, signal.SIGCONT)
        exporter.close()


@pytest.mark.one_pg  # 30 s of scraping: its subject is the exporter, not the server version
def test_two_scrapers_at_the_same_instant_both_see_a_healthy_server_up(cluster: Cluster, exporter_for) -> None:
    """An HA pair of Prometheus servers: scrapes land together, share one SQL visit, and both say pg_up 1."""
    service = exporter_for(cluster)
    barrier = threading.Barrier(2)
    seen: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + 30

    def scraper() -> None:
        try:
            while time.monotonic() < stop_at:
                barrier.wait(timeout=10)
                samples, _ = scrape(service, timeout_header=1)
                seen.append(value(samples, "pg_up", pg_instance=cluster.name))
                time.sleep(0.05)
        except threading.BrokenBarrierError:
            return  # the other scraper's time was up first (it broke the barrier on its way out)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            barrier.abort()  # never leave the other waiting at the barrier

    threads = [threading.Thread(target=scraper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(seen) > 100 and seen == [1.0] * len(seen), f"pg_up 0 in {seen.count(0.0)} of {len(seen)} scrapes"


def test_clients_filling_max_connections_are_all_counted(cluster: Cluster, exporter_for) -> None:
    cluster.psql("CREATE ROLE app LOGIN")
    service = exporter_for(cluster)
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user=app"
    usable = 40 - 3
    clients = [psycopg.connect(dsn) for _ in range(usable)]
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=5)
        samples, _ = scrape(service, timeout_header=5)
        assert usable <= value(samples, "pg_client_connections", pg_instance="main") <= usable + 1
        assert (
            value(samples, "pg_stat_activity_connections", pg_instance="main", datname="postgres", state="idle")
            == usable
        )
        assert value(samples, "pg_up", pg_instance="main") == 1, "the owner role still gets a reserved slot"
    finally:
        for c in clients:
            c.close()


def test_killed_background_worker_shows(cluster: Cluster, exporter_for) -> None:
    service = exporter_for(cluster)
    samples, _ = scrape(service, timeout_header=5)
    old_start = value(samples, "pg_background_worker_start_time_seconds", pg_instance="main", worker="logger")
    logger = next(
        int(p)
        for p in Path(f"/proc/{cluster.postmaster_pid()}/task/{cluster.postmaster_pid()}/children").read_text().split()
        if "logger" in Path(f"/proc/{p}/cmdline").read_text()
    )
    time.sleep(1.1)  # process start times have 10 ms resolution; make the restart visible
    os.kill(logger, signal.SIGKILL)
    seen_down = restarted = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not restarted:
        samples, _ = scrape(service, timeout_header=5)
        up = value(samples, "pg_background_worker_up", pg_instance="main", worker="logger")
        seen_down |= up == 0
        if up == 1:
            restarted = (
                value(samples, "pg_background_worker_start_time_seconds", pg_instance="main", worker="logger")
                > old_start
            )
        time.sleep(0.05)
    assert restarted or seen_down
    assert restarted, "PostgreSQL restarts its logger; the new start time shows"


def test_promtool_check_metrics_is_clean(cluster: Cluster, exporter_for) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus (or run `make test`)"
    service = exporter_for(cluster)
    _, text = scrape(service, timeout_header=5)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def test_landing_page_and_404(cluster: Cluster, exporter_for) -> None:
    service = exporter_for(cluster)
    with urllib.request.urlopen(service.url + "/", timeout=10) as r:
        page = r.read().decode()
    assert "/metrics" in page and "main" in page
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(service.url + "/nope", timeout=10)
    assert err.value.code == 404


def test_cpu_counter_never_decreases_when_backends_exit(cluster: Cluster, exporter_for) -> None:
    service = exporter_for(cluster)
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"
    with psycopg.connect(dsn) as busy:
        busy.execute("SELECT count(*) FROM generate_series(1, 3000000) g WHERE g % 7 = 3").fetchone()
        samples, _ = scrape(service, timeout_header=5)
        during = value(
            samples, "pg_process_cpu_seconds_total", pg_instance="main", backend_type="client_backend", mode="user"
        )
    assert during > 0, "the busy backend's CPU time shows"
    time.sleep(0.5)
    samples, _ = scrape(service, timeout_header=5)
    after = value(
        samples, "pg_process_cpu_seconds_total", pg_instance="main", backend_type="client_backend", mode="user"
    )
    assert value(samples, "pg_client_connections", pg_instance="main") == 1, (
        "the backend has exited: the session is left"
    )
    assert after >= during, "a counter never goes down when the process behind it exits"


def test_hundreds_of_backends_beyond_1024_descriptors(make_cluster: Callable[..., Cluster], exporter_for) -> None:
    """Two /proc handles per backend push the exporter's sockets past select()'s 1024 limit: it must
    keep answering (the server on epoll), and count every backend."""
    cluster = make_cluster(start=False)
    with open(cluster.data / "postgresql.conf", "a") as f:
        f.write("max_connections = 640\n")
    cluster.start()
    cluster.psql("CREATE ROLE app LOGIN")
    service = exporter_for(cluster)
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user=app"
    clients = [psycopg.connect(dsn) for _ in range(600)]
    try:
        for _ in range(3):
            samples, _ = scrape(service, timeout_header=10)
            assert value(samples, "pg_client_connections", pg_instance="main") >= 600
        fds = len(os.listdir(f"/proc/{service.proc.pid}/fd"))
        assert fds > 1024, f"the exporter holds {fds} descriptors; the test must cross select()'s limit"
    finally:
        for c in clients:
            c.close()


@pytest.mark.one_pg  # a soak: its subject is the exporter, not the server version
def test_descriptors_return_to_a_bound_after_a_connection_churn(cluster: Cluster, exporter_for) -> None:
    """Clients connect and leave (a hundred or more per second) while scrapes run: afterwards the
    exporter counts none of them and holds no descriptors of exited backends (three per live process,
    plus its own few)."""
    service = exporter_for(cluster)
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"
    scrape(service, timeout_header=5)
    base = len(os.listdir(f"/proc/{service.proc.pid}/fd"))
    stop = threading.Event()
    churned = [0]

    def churn() -> None:
        while not stop.is_set():
            with contextlib.suppress(psycopg.Error):
                psycopg.connect(dsn, connect_timeout=5).close()
                churned[0] += 1

    workers = [threading.Thread(target=churn) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            scrape(service, timeout_header=5)
            time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    time.sleep(0.5)
    samples, _ = scrape(service, timeout_header=5)  # the walk after the churn drops what exited
    # Every exit was seen (from fork and exit events, or a listing): only the exporter's session is left.
    assert value(samples, "pg_client_connections", pg_instance="main") == 1
    live = len(cluster.processes())
    fds = len(os.listdir(f"/proc/{service.proc.pid}/fd"))
    assert churned[0] > 40 * 50, f"only {churned[0]} connections in 40 s"
    assert fds <= base + 3 * 2 + 8, (
        f"{fds} descriptors after {churned[0]} connections (before: {base}, {live} live processes)"
    )


def test_backend_seen_idle_then_busy_shows_its_new_cpu_and_memory(cluster: Cluster, exporter_for) -> None:
    """The tracker re-reads CPU times only when schedstat says a process ran, and memory only when statm
    changed: a backend first seen idle must still show the CPU and memory it uses afterwards."""
    service = exporter_for(cluster)
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"

    def cpu_and_largest() -> tuple[float, float]:
        samples, _ = scrape(service, timeout_header=5)
        cpu = sum(
            value(samples, "pg_process_cpu_seconds_total", pg_instance="main", backend_type="client_backend", mode=m)
            for m in ("user", "system")
        )
        return cpu, value(samples, "pg_backend_memory_anon_max_bytes", pg_instance="main")

    with psycopg.connect(dsn, autocommit=True) as client:
        client.execute("SET temp_buffers = '128MB'")
        cpu_before, largest_before = cpu_and_largest()  # now tracked, idle
        # Local buffers of a temp table stay allocated for the session: private (anon) memory.
        client.execute("CREATE TEMP TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 200000) g")
        client.execute("SELECT count(*) FROM generate_series(1, 3000000) g WHERE g % 7 = 3").fetchone()
        cpu_after, largest_after = cpu_and_largest()
    assert cpu_after - cpu_before >= 0.05, (cpu_before, cpu_after)
    assert largest_after - largest_before > 30 * 2**20, (largest_before, largest_after)


def test_idle_clients_are_skipped_and_a_burst_between_scrapes_shows_at_once(cluster: Cluster) -> None:
    """The walk skips client backends the previous scan saw idle, and the scrape's own scan names those
    that ran since: a CPU burst and an allocation by one of many idle clients show in the very next
    scrape, while most idle clients cost no /proc read at all."""
    from pgmedic.exporter.scraper import Exporter

    exporter = Exporter(load_config(str(cluster.config_path)))
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"
    clients = [psycopg.connect(dsn, autocommit=True) for _ in range(24)]
    read_pids: set[int] = set()
    real_pread = os.pread

    def recording_pread(fd: int, n: int, offset: int) -> bytes:
        with contextlib.suppress(OSError, ValueError):  # /proc/PID/...: whose file the tracker read
            read_pids.add(int(os.readlink(f"/proc/self/fd/{fd}").split("/")[2]))
        return real_pread(fd, n, offset)

    def client_cpu_and_largest() -> tuple[float, float]:
        families = exporter.scrape(5.0).families()
        samples = {(f, tuple(sorted(labels.items()))): v for f, rows in families for labels, v in rows}
        cpu = sum(
            v for (f, labels), v in samples.items()
            if f == "pg_process_cpu_seconds_total" and ("backend_type", "client_backend") in labels
        )  # fmt: skip
        return cpu, samples[("pg_backend_memory_anon_max_bytes", (("pg_instance", "main"),))]

    try:
        time.sleep(0.5)  # idle for longer than the scan's margin (sqlview.BUSY_MARGIN)
        for _ in range(3):  # tracked, and scanned twice: the hint now says every client is idle
            client_cpu_and_largest()
        tracker = exporter.scrapers[0].tracker
        assert tracker.hint is not None and not {c.info.backend_pid for c in clients} & tracker.hint
        cpu_before, largest_before = client_cpu_and_largest()
        busy = clients[5]
        busy.execute("SET temp_buffers = '128MB'")
        busy.execute("CREATE TEMP TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 200000) g")
        busy.execute("SELECT count(*) FROM generate_series(1, 3000000) g WHERE g % 7 = 3").fetchone()
        idle = {c.info.backend_pid for c in clients if c is not busy}
        os.pread = recording_pread  # type: ignore[assignment]
        try:
            cpu_after, largest_after = client_cpu_and_largest()
            hinted = len(read_pids & idle)
            read_pids.clear()
            tracker.hint = None  # the control: a walk without the previous scan's word reads every client
            client_cpu_and_largest()
            unhinted = len(read_pids & idle)
        finally:
            os.pread = real_pread
    finally:
        for c in clients:
            c.close()
        exporter.close()
    assert cpu_after - cpu_before >= 0.05, (cpu_before, cpu_after)
    assert largest_after - largest_before > 30 * 2**20, (largest_before, largest_after)
    # 23 idle clients, each read every MEMORY_REFRESH (8) scrapes in turn: most of them cost no read.
    assert unhinted == 23 and hinted <= 8, f"idle clients read: {hinted} with the scan's word, {unhinted} without"


def test_a_role_that_cannot_see_other_sessions_leaves_no_backend_unread(cluster: Cluster) -> None:
    """Without pg_read_all_stats the scan sees other users' backends with a NULL state: it cannot say
    they were idle, so no hint is given and the walk reads every backend, as without SQL."""
    from pgmedic.exporter.scraper import Exporter

    cluster.psql("CREATE ROLE watcher LOGIN")
    exporter = Exporter(load_config(str(cluster.write_config(user="watcher"))))
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"
    try:
        with psycopg.connect(dsn, autocommit=True):
            time.sleep(0.5)
            for _ in range(2):
                samples = exporter.scrape(5.0)
            assert exporter.scrapers[0].tracker.hint is None
        counted = dict(samples.families())["pg_client_connections"]
        assert [value for _, value in counted] == [2.0], counted  # the owner's client and the session
    finally:
        exporter.close()


def test_sql_statements_fail_alone_in_the_pipeline(cluster: Cluster) -> None:
    cfg = load_config(cluster.config_path).instances["main"]
    deadline = time.monotonic() + 10
    pgconn = open_pgconn(cfg, None, deadline)
    try:
        out = run_isolated(
            pgconn,
            ["SELECT 1", "SELECT 1/0", "SELECT current_setting('no.such_setting')", "SELECT 'still here', NULL"],
            deadline,
        )
    finally:
        pgconn.finish()
    assert out[0] == [("1",)]
    assert isinstance(out[1], str) and "division by zero" in out[1]
    assert isinstance(out[2], str) and "no.such_setting" in out[2]
    assert out[3] == [("still here", None)], "a failed statement costs only itself"


def test_connect_to_a_silent_server_gives_up_at_the_deadline(cluster: Cluster, tmp_path: Path) -> None:
    """A socket that accepts and never answers (a frozen postmaster's backlog): no hang past the deadline."""
    cfg = dataclasses.replace(load_config(cluster.config_path).instances["main"], host=str(tmp_path), port=5999)
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(tmp_path / ".s.PGSQL.5999"))
        silent.listen()
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            open_pgconn(cfg, None, began + 0.5)
        assert time.monotonic() - began < 1.5


def test_tracker_without_spare_descriptors_reads_the_same(cluster: Cluster) -> None:
    """Past the descriptor budget the tracker reads /proc by path (checking the start time each time):
    it must see the same processes, types and memory as with descriptors kept open."""
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    with psycopg.connect(dsn) as a, psycopg.connect(dsn) as b:
        a.execute("SELECT 1")
        b.execute("SELECT 1")
        kept, by_path = ProcessTracker(), ProcessTracker(max_handles=0)
        for _ in range(2):  # the second walk takes the re-read path of each tracker
            kept.walk(postmaster)
            by_path.walk(postmaster)
            with_fds = {pid: (p.backend_type, p.start_ticks, p.anon > 0) for pid, p in kept._procs.items()}
            without = {pid: (p.backend_type, p.start_ticks, p.anon > 0) for pid, p in by_path._procs.items()}
            assert with_fds == without
        assert kept.totals["client_backend"][0] == by_path.totals["client_backend"][0] == 2
        assert all(anon for _, _, anon in with_fds.values())
    kept.close()
    by_path.close()


@pytest.mark.one_pg
def test_statistics_session_survives_a_restart_and_never_holds_up_a_smart_shutdown(
    cluster: Cluster, exporter_for
) -> None:
    """The long-lived statistics session: the first scrape after a server restart replaces the session the
    server dropped (statistics present at once), and a smart shutdown, which waits for every session to
    end, completes because the refused fresh connection makes the exporter let go of its session."""
    service = exporter_for(cluster)
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmedic'"
    scrape(service, timeout_header=5)
    assert cluster.psql(sessions) == "1", "one session kept between scrapes"
    cluster.pg_ctl("stop", "-m", "fast", "-w")
    cluster.start()
    samples, _ = scrape(service, timeout_header=5)
    assert value(samples, "pg_up", pg_instance="main") == 1
    for collector in ("settings", "activity", "slots", "archiver"):
        assert value(samples, "pgmedic_collector_success", pg_instance="main", collector=collector) == 1, collector

    stop = subprocess.Popen(
        as_owner(
            [os.path.join(cluster.bin_dir, "pg_ctl"), "-D", str(cluster.data), "stop", "-m", "smart", "-w", "-t", "30"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while stop.poll() is None and time.monotonic() < deadline:
            scrape(service, timeout_header=2)  # Prometheus keeps scraping during the shutdown
            time.sleep(0.3)
        assert stop.poll() == 0, "the smart shutdown completed while the exporter kept scraping"
    finally:
        if stop.poll() is None:
            stop.kill()
    samples, _ = scrape(service, timeout_header=5)
    assert value(samples, "pg_up", pg_instance="main") == 0


def test_conninfo_reads_as_psycopg_writes_it() -> None:
    """The exporter's own connection string says what psycopg's make_conninfo would, quotes included."""
    from psycopg.conninfo import conninfo_to_dict

    from pgmedic.connection import conninfo

    params = {"host": "/tmp/a b", "port": 5432, "dbname": "it's", "user": "back\\slash", "options": "-c x=1 -c y=2",
              "application_name": None}  # fmt: skip
    assert conninfo_to_dict(conninfo(params)) == {k: str(v) for k, v in params.items() if v is not None}


@pytest.mark.one_pg  # the tracker's own bookkeeping
def test_the_sums_by_type_stay_equal_to_the_processes_they_sum(cluster: Cluster) -> None:
    """The tracker keeps its sums by type as processes are read, come and go (not added up each scrape):
    through clients that connect, work, go idle and leave, and the exporter's own backends left out,
    they equal the sums of the processes it tracks after every scrape, and CPU counters never go down."""
    from pgmedic.exporter.scraper import Exporter

    exporter = Exporter(load_config(str(cluster.config_path)))
    tracker = exporter.scrapers[0].tracker
    dsn = f"host={cluster.socket_dir} port={cluster.port} dbname=postgres user={owner()}"
    clients: list[psycopg.Connection] = []
    last_cpu: dict[tuple[str, str], float] = {}
    try:
        exporter.scrape(5.0)  # opens the statistics session, which the next walks find
        for step in range(12):
            if step % 3 == 0:
                clients += [psycopg.connect(dsn, autocommit=True) for _ in range(4)]
            if clients and step % 4 == 1:
                clients.pop(0).close()
            for c in clients[::3]:
                c.execute("SELECT count(*) FROM generate_series(1, 200000)").fetchone()
            families = dict(exporter.scrape(5.0).families())
            expected: dict[str, list[int]] = {}
            for proc in tracker._procs.values():
                if proc.backend_type is not None and not proc.own:
                    row = expected.setdefault(proc.backend_type, [0] * 6)
                    for i, v in enumerate((1, *proc.values())):
                        row[i] += v
            assert {k: r for k, r in tracker.totals.items() if r[0]} == expected, f"step {step}"
            counted = {labels["backend_type"]: v for labels, v in families["pg_processes"]}
            assert counted["client_backend"] == len(clients) + 1, "the clients and the statistics session"
            for labels, seconds in families["pg_process_cpu_seconds_total"]:
                key = (labels["backend_type"], labels["mode"])
                assert seconds >= last_cpu.get(key, 0.0), key
                last_cpu[key] = seconds
            largest = max(p.anon for p in tracker._procs.values() if p.backend_type == "client_backend" and not p.own)
            assert [v for _, v in families["pg_backend_memory_anon_max_bytes"]] == [largest]
    finally:
        for c in clients:
            c.close()
        exporter.close()
