"""Throwaway PostgreSQL clusters and local services: for the demo, the benchmarks and the tests.

A cluster is made with initdb in a temp dir (as the `postgres` user when root: PostgreSQL refuses to
run as root), started on a free loopback port with its own socket directory, and destroyed with
everything still running in its data directory, whatever happened to it (SIGSTOP, SIGKILL, a
half-finished start). Services (exporter, remediator, Prometheus, Alertmanager) run as child
processes in their own sessions and are always stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import procfs
from ..actions import ensure_run_directory
from ..managers import debian_cluster_of
from . import pgversions

PG_BIN_CANDIDATES = [f"/usr/lib/postgresql/{v}/bin" for v in (17, 16, 15, 14, 13)]
INSTALL_HINT = "install the PostgreSQL server: apt-get install -y postgresql (or run `make test`, which does it)"


def pg_bin_dir() -> str:
    for candidate in PG_BIN_CANDIDATES:
        if os.path.isfile(os.path.join(candidate, "initdb")):
            return candidate
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise RuntimeError(f"no initdb found: {INSTALL_HINT}")


def owner() -> str:
    """PostgreSQL refuses to run as root: as root the clusters belong to `postgres`."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(f"running as root needs the OS user postgres: {INSTALL_HINT}") from None
        return "postgres"
    return pwd.getpwuid(os.geteuid()).pw_name


def as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", owner(), "--", *argv] if os.geteuid() == 0 else argv


def chown_owner(path: str | Path, follow_symlinks: bool = True) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(owner())
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=follow_symlinks)


def write_secret(path: Path, text: str) -> Path:
    """A token file as pgmedic requires it: readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)
    return path


def make_trusted_dir(prefix: str) -> Path:
    """A directory pgmedic will run programs from: no world-writable ancestor (unlike /tmp), mode 0755.

    As root it is made under /var/lib (root-owned 0755 all the way up); otherwise under the home
    directory. The caller removes it.
    """
    base = "/var/lib" if os.geteuid() == 0 else os.path.expanduser("~")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)
    return path


def make_pki(directory: Path) -> Path:
    """With openssl: a CA, server certificates for 127.0.0.1 (server, server2) and a client certificate
    (client), each NAME.crt and NAME.key (0600), all signed by ca.crt. For TLS tests and benchmarks."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=pgmedic test CA")  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("server2", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        (directory / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def major_of(data: Path) -> int:
    return int((data / "PG_VERSION").read_text().strip())


def bin_dir_for(data: Path) -> str:
    """The server binaries of DATA's major version (from PG_VERSION)."""
    return pgversions.bin_dir(major_of(data))


def make_temp_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    chown_owner(path)
    return path


def make_template(base: Path, major: int | None = None) -> Path:
    """initdb once (PostgreSQL MAJOR, the distribution's by default): trust auth on the socket and
    loopback (test clusters only)."""
    data = base / "template"
    bin_dir = pgversions.bin_dir(major) if major else pg_bin_dir()
    subprocess.run(
        as_owner([os.path.join(bin_dir, "initdb"), "-D", str(data), "-A", "trust", "-U", owner(), "--no-sync"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    with open(data / "postgresql.conf", "a") as f:
        f.write(
            "\n# pgmedic tests\nlisten_addresses = '127.0.0.1'\nfsync = off\nsynchronous_commit = off\n"
            "full_page_writes = off\nshared_buffers = 16MB\nmax_connections = 40\nlogging_collector = on\n"
            "log_directory = 'log'\nautovacuum_naptime = 1\n"
        )
    return data


@dataclass
class Cluster:
    """One throwaway cluster plus a pgmedic config naming it."""

    name: str
    root: Path
    data: Path
    port: int
    socket_dir: Path
    state_dir: Path
    config_path: Path
    bin_dir: str
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- config --------------------------------------------------------------------------------
    def instance_attrs(self) -> dict[str, Any]:
        return {
            "type": "POSTGRES",
            "instancename": owner(),
            "database": "postgres",
            "data_directory": str(self.data),
            "bin_dir": self.bin_dir,
            "port": self.port,
            "host": str(self.socket_dir),
            "start_timeout": "30s",
            "stop_timeout": "3s",
            "monitor_timeout": "2s",
            **self.extra,
        }

    def write_config(self, extra_top: dict[str, Any] | None = None, **instance_extra: Any) -> Path:
        """This cluster's own pgmedic config (INSTANCE_EXTRA kept for later writes)."""
        self.extra.update(instance_extra)
        return write_config(self.config_path, [self], self.state_dir, **(extra_top or {}))

    # ---- server --------------------------------------------------------------------------------
    def pg_ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            as_owner([os.path.join(self.bin_dir, "pg_ctl"), "-D", str(self.data), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        result = self.pg_ctl(
            "start", "-w", "-t", "30", "-l", str(self.root / "server.log"), "-o", f"-p {self.port}", timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}{self.server_log()}")

    def server_log(self) -> str:
        try:
            return (self.root / "server.log").read_text()[-2000:]
        except OSError:
            return ""

    def configure(self, **settings: str | int) -> None:
        """Append SETTINGS to postgresql.conf (the last line wins): for a restart or a reload to apply."""
        with open(self.data / "postgresql.conf", "a") as f:
            f.writelines(f"{key} = '{value}'\n" for key, value in settings.items())

    def reload(self) -> None:
        self.pg_ctl("reload")

    def move_wal(self, target: Path) -> None:
        """Move pg_wal into TARGET (an empty directory, say on a filesystem of its own) and leave a symlink,
        as `initdb --waldir` does. The server must be stopped."""
        wal = self.data / "pg_wal"
        for entry in wal.iterdir():
            shutil.move(str(entry), str(target / entry.name))
        wal.rmdir()
        wal.symlink_to(target)
        for path in (target, *target.rglob("*")):  # a move across filesystems copies: as root
            chown_owner(path)
        chown_owner(wal, follow_symlinks=False)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n")[0])

    def psql(self, sql: str, user: str | None = None, timeout: float = 20) -> str:
        result = subprocess.run(
            as_owner(
                [
                    os.path.join(self.bin_dir, "psql"),
                    "-X",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-U",
                    user or owner(),
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ]
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def processes(self) -> list[int]:
        """Every process whose working directory is this data directory (postmaster, children, orphans)."""
        return procfs.pids_in_directory(str(self.data))

    def wait_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.psql("SELECT 1", timeout=5) == "1":
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not accept connections within {timeout}s")

    def destroy(self) -> None:
        """Kill everything in the data directory (after SIGCONT, in case a test stopped it) and remove it."""
        for _ in range(100):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                _kill_if_in(pid, str(self.data))
            time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)


def _kill_if_in(pid: int, directory: str) -> None:
    """SIGCONT then SIGKILL PID through a pidfd, if it still works in DIRECTORY once the pidfd is open."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        cwd = procfs.read_link(pid, "cwd")
        if cwd is not None and os.path.realpath(cwd) == os.path.realpath(directory):
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


@contextlib.contextmanager
def small_filesystem(mountpoint: Path, size_mib: int, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of SIZE_MIB (and INODES, if given) at MOUNTPOINT, owned by the cluster owner, unmounted on
    exit (lazily: a server still holding files in it must not keep the test from cleaning up). Needs root."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mib}m,mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "pgmedic-test", str(mountpoint)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        chown_owner(mountpoint)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def new_cluster(template: Path, name: str = "main", start: bool = True) -> Cluster:
    root = make_temp_dir(f"pgmedic-{name}-")
    data = root / "data"
    subprocess.run(["cp", "-a", str(template), str(data)], check=True)
    socket_dir = root / "sock"
    socket_dir.mkdir()
    chown_owner(socket_dir)
    state = root / "state"
    cluster = Cluster(name, root, data, free_port(), socket_dir, state, root / "pgmedic.yaml", bin_dir_for(data))
    cluster.configure(unix_socket_directories=str(socket_dir), cluster_name=name)
    cluster.write_config()
    if start:
        try:
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
    return cluster


DEBIAN_VERSION = "15"  # the distribution's server: the version postgresql-common registers here
PG_CREATECLUSTER = "/usr/bin/pg_createcluster"
PG_DROPCLUSTER = "/usr/bin/pg_dropcluster"
DEBIAN_HINT = "apt-get install -y postgresql-common postgresql (or run `make test`, which installs them)"


@dataclass
class DebianCluster(Cluster):
    """A cluster as postgresql-common makes it on Debian and Ubuntu (pg_createcluster): data in
    /var/lib/postgresql/VER/NAME, configuration in /etc/postgresql/VER/NAME, log in /var/log/postgresql,
    sockets in /var/run/postgresql, peer authentication for the owner. Dropped with pg_dropcluster."""

    version: str = DEBIAN_VERSION

    @property
    def config_dir(self) -> Path:
        return Path("/etc/postgresql") / self.version / self.name

    @property
    def log_file(self) -> Path:
        return Path("/var/log/postgresql") / f"postgresql-{self.version}-{self.name}.log"

    def instance_attrs(self) -> dict[str, Any]:
        """As a user writes it for such a cluster: the data directory and the usual attributes, nothing else."""
        return {
            "type": "POSTGRES", "instancename": owner(), "database": "postgres", "data_directory": str(self.data),
            "start_timeout": "30s", "stop_timeout": "3s", "monitor_timeout": "2s", **self.extra,
        }  # fmt: skip

    def pg_ctlcluster(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            as_owner(["pg_ctlcluster", self.version, self.name, *args]), capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> None:
        found = debian_cluster_of(str(self.data))
        if found is not None:
            ensure_run_directory(found)
        result = self.pg_ctlcluster("start")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctlcluster start failed: {result.stdout}{result.stderr}")

    def configure(self, **settings: str | int) -> None:
        with open(self.config_dir / "conf.d" / "pgmedic-test.conf", "a") as f:
            f.writelines(f"{key} = '{value}'\n" for key, value in settings.items())

    def server_log(self) -> str:
        try:
            return self.log_file.read_text()[-2000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        """Kill what still runs in the data directory, then pg_dropcluster (data, configuration and log go)."""
        Cluster.destroy(self)  # kills (after SIGCONT) every process in the data directory; removes ROOT
        subprocess.run([PG_DROPCLUSTER, self.version, self.name], capture_output=True, timeout=60)
        shutil.rmtree(self.data, ignore_errors=True)
        shutil.rmtree(self.config_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.log_file.unlink()


def new_debian_cluster(name: str, start: bool = True) -> DebianCluster:
    """pg_createcluster VER NAME on a free port (NAME unique to the caller); always dropped by destroy()."""
    if not os.path.exists(PG_CREATECLUSTER):
        raise RuntimeError(f"no pg_createcluster: {DEBIAN_HINT}")
    if os.geteuid() != 0:
        raise RuntimeError("pg_createcluster registers clusters in /etc/postgresql: run the tests as root")
    root = make_temp_dir(f"pgmedic-deb-{name}-")
    port = free_port()
    data = Path("/var/lib/postgresql") / DEBIAN_VERSION / name
    cluster = DebianCluster(
        name, root, data, port, Path("/var/run/postgresql"), root / "state", root / "pgmedic.yaml",
        f"/usr/lib/postgresql/{DEBIAN_VERSION}/bin",
    )  # fmt: skip
    try:
        made = subprocess.run(
            [PG_CREATECLUSTER, DEBIAN_VERSION, name, "-p", str(port), "--", "--no-sync"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"pg_createcluster failed: {made.stdout}{made.stderr}")
        cluster.configure(fsync="off", shared_buffers="16MB", max_connections=40, listen_addresses="127.0.0.1")
        cluster.write_config()
        if start:
            cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def new_standby(primary: Cluster, name: str = "standby", **settings: str | int) -> Cluster:
    """A streaming standby of PRIMARY, started with SETTINGS; destroyed like a cluster.

    Not `pg_basebackup -R`: its primary_conninfo lists every option of its own libpq, which an older
    libpq.so that a server build may load for its walreceiver refuses ("sslnegotiation").
    """
    root = make_temp_dir(f"pgmedic-{name}-")
    data = root / "data"
    socket_dir = root / "sock"
    socket_dir.mkdir()
    chown_owner(socket_dir)
    chown_owner(root)
    standby = Cluster(name, root, data, free_port(), socket_dir, root / "state", root / "pgmedic.yaml", primary.bin_dir)
    try:
        argv = [os.path.join(primary.bin_dir, "pg_basebackup"), "-D", str(data), "-c", "fast", "-X", "stream",
                "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", owner()]  # fmt: skip
        subprocess.run(as_owner(argv), check=True, capture_output=True, timeout=120)
        conninfo = f"host={primary.socket_dir} port={primary.port} user={owner()} dbname=postgres"
        (data / "standby.signal").touch()
        chown_owner(data / "standby.signal")
        standby.configure(
            unix_socket_directories=str(socket_dir), cluster_name=name, port=standby.port,
            primary_conninfo=conninfo, **settings,
        )  # fmt: skip
        standby.write_config()
        standby.start()
    except BaseException:
        standby.destroy()
        raise
    return standby


def write_config(path: Path, clusters: list[Cluster], state_dir: Path, **top: Any) -> Path:
    """One pgmedic config naming several clusters (each with its own instance attributes)."""
    doc: dict[str, Any] = {"remediator": {"state_dir": str(state_dir)}}
    for key, value in top.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    doc["instances"] = {c.name: c.instance_attrs() for c in clusters}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Service:
    """A long-running process started by a test (exporter, remediator, Prometheus…), always stopped."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_service(
    name: str, argv: list[str], log_dir: Path, port: int, env: dict[str, str] | None = None, address: str = "127.0.0.1"
) -> Service:
    """Start ARGV, wait until it listens on ADDRESS:PORT (or fail with its log)."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    service = Service(name, proc, log_path, f"http://{address}:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {service.log()}")
        with socket.socket() as s:
            if s.connect_ex((address, port)) == 0:
                return service
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{name} did not listen on port {port} within 30s: {service.log()}")


def kill_service(service: Service) -> None:
    """SIGKILL SERVICE (a crash, not a shutdown) and wait until it is gone."""
    service.proc.kill()
    service.proc.wait(10)


def start_again(service: Service, log_dir: Path) -> Service:
    """SERVICE, killed or stopped, started again with the same command line, address, port and data."""
    where = urllib.parse.urlsplit(service.url)
    argv = service.proc.args
    assert isinstance(argv, list) and where.port is not None
    return start_service(service.name, [str(a) for a in argv], log_dir, where.port, address=where.hostname or "")


def pgmedic_service(
    kind: str, config: Path, log_dir: Path, port: int | None = None, address: str = "127.0.0.1"
) -> Service:
    """`pgmedic exporter` or `pgmedic remediator` on a free loopback port (of ADDRESS, in 127.0.0.0/8)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "pgmedic", "--config", str(config), kind, "--listen", f"{address}:{port}"]
    return start_service(kind, argv, log_dir, port, address=address)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll PREDICATE until it returns something truthy; fail with WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http(
    method: str, url: str, body: bytes | dict[str, Any] | None = None, token: str | None = None, timeout: float = 30
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one HTTP request; errors are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def rfc3339(ts: float | None = None) -> str:
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e9):09d}Z"


def alert_payload(
    alertname: str, pg_instance: str | None, *, status: str = "firing", starts_at: str | None = None,
    fingerprint: str = "f00dfeed", remediation: str = "restart", **labels: str,
) -> dict[str, Any]:  # fmt: skip
    """An Alertmanager version 4 webhook payload with one alert (tests and benchmarks post it)."""
    alert_labels = {"alertname": alertname, "severity": "critical", "remediation": remediation, **labels}
    if pg_instance is not None:
        alert_labels["pg_instance"] = pg_instance
    return {
        "version": "4",
        "groupKey": '{}/{remediation="restart"}:' + f'{{alertname="{alertname}"}}',
        "status": status,
        "receiver": "pgmedic-remediator",
        "groupLabels": {"alertname": alertname},
        "commonLabels": alert_labels,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": alert_labels,
                "annotations": {"summary": "test"},
                "startsAt": starts_at or rfc3339(),
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }
