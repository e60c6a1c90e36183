"""``pgmedic discover``: every PostgreSQL on this host, and the instance files that watch them as they are.

Found where administrators and distributions put them: postgresql-common clusters (/etc/postgresql),
PostgreSQL systemd units (PGDATA or -D of the unit), running postmasters (/proc: a postgres process
whose parent is not one; its working directory is its data directory), and the data directories of
the VM agent's POSTGRESconfig.xml given with ``configfile=``. One entry per data directory, with what
the instance model finds for it (version, port, socket directory, owner, manager) and the configured
instance that already watches it, if any.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from . import procfs
from .config import NAME_RE, Config, InstanceConfig
from .instance import POSTGRES_EXECUTABLES, Instance
from .ksysxml import instances_in_xml
from .managers import (
    DEFAULT_PORT,
    DEFAULT_SOCKET_DIRECTORY,
    HOST,
    Host,
    ManagerProblem,
    debian_clusters,
    owner_of,
    postgres_units,
    read_conf,
    unit_data_directories,
)
from .pidfile import read_pid_file


@dataclass(frozen=True)
class Found:
    """One PostgreSQL data directory of this host."""

    name: str  # the instance name `discover --add` would give it
    data_directory: str
    version: str | None
    port: int
    socket_directory: str
    owner: str | None
    manager: str
    managed_by: str
    running: bool
    found_by: str  # postgresql-common, systemd, process, configfile
    watched_as: str | None  # the configured instance watching it
    configfile: str | None = None  # the POSTGRESconfig.xml naming it (then added with configfile=)

    def attributes(self) -> dict[str, Any]:
        """The instance attributes `discover --add` writes: what `add instance` would take."""
        out: dict[str, Any] = {"type": "POSTGRES", "instancename": self.owner, "database": "postgres"}
        if self.configfile:
            out["configfile"] = self.configfile
        else:
            out["data_directory"] = self.data_directory
        out["port"] = self.port
        out["host"] = self.socket_directory
        return out

    def document(self) -> dict[str, Any]:
        return asdict(self)


def _version(data: str) -> str | None:
    try:
        with open(os.path.join(data, "PG_VERSION")) as f:
            return f.read(16).strip() or None
    except OSError:
        return None


def _running_postmasters() -> list[str]:
    """The data directories of the postmasters running on this host (a postgres whose parent is not one)."""
    out = []
    for entry in os.listdir(procfs.PROC):
        if not entry.isdigit():
            continue
        pid = int(entry)
        exe = procfs.read_link(pid, "exe")
        if exe is None or os.path.basename(exe.split(" ")[0]) not in POSTGRES_EXECUTABLES:
            continue
        stat = procfs.read_stat(pid)
        parent = procfs.read_link(stat.ppid, "exe") if stat is not None else None
        if (
            stat is None
            or stat.is_zombie
            or (parent and os.path.basename(parent.split(" ")[0]) in POSTGRES_EXECUTABLES)
        ):
            continue
        cwd = procfs.read_link(pid, "cwd")
        if cwd:
            out.append(cwd.removesuffix(" (deleted)"))
    return out


def discover(config: Config, configfiles: list[str], host: Host = HOST) -> list[Found]:
    """Every PostgreSQL data directory of this host, in the order found; names unique."""
    candidates: dict[str, tuple[str, str, str | None]] = {}  # realpath -> (name, found_by, configfile)

    def note(name: str, data: str, found_by: str, configfile: str | None = None) -> None:
        candidates.setdefault(os.path.realpath(data), (name, found_by, configfile))

    clusters = {os.path.realpath(c.data_directory): c for c in debian_clusters(host)}
    for cluster in clusters.values():
        note(f"{cluster.version}-{cluster.name}", cluster.data_directory, "postgresql-common")
    for unit in postgres_units(host):
        for data in unit_data_directories(unit, host)[:1]:
            note(unit.removesuffix(".service"), data, "systemd")
    for path in configfiles:
        for instance_id, data in instances_in_xml(path).items():
            note(instance_id, data, "configfile", path)
    for data in _running_postmasters():
        note(_name_of(data), data, "process")
    watched = {os.path.realpath(cfg.data_directory): name for name, cfg in config.instances.items()}
    out: list[Found] = []
    taken = set(config.instances)
    for real, (proposed, found_by, configfile) in candidates.items():
        name = _unique(_instance_name(proposed), taken)
        taken.add(name)
        found_cluster = clusters.get(real)
        pid_file = read_pid_file(real) if os.path.isdir(real) else None
        settings = read_conf(os.path.join(real, "postgresql.conf"))
        sockets = (settings.get("unix_socket_directories") or "").split(",")[0].strip()
        port = (pid_file.port if pid_file else None) or (found_cluster.port if found_cluster else None)
        socket_dir = (pid_file.socket_directory if pid_file else None) or (
            cluster.socket_directory if cluster else None
        )
        try:
            port = port or int(settings.get("port", DEFAULT_PORT))
        except ValueError:
            port = DEFAULT_PORT
        owner = owner_of(real)
        cfg = InstanceConfig(name, owner or "postgres", "postgres", real, "discover")
        instance = Instance(cfg)
        postmaster = instance.postmaster()
        try:
            manager = instance.manager(postmaster=postmaster, verified=True)
            kind, how = str(manager.kind), manager.found
        except ManagerProblem as exc:
            kind, how = "unknown", str(exc)
        out.append(
            Found(
                name, real, _version(real), port, socket_dir or sockets or DEFAULT_SOCKET_DIRECTORY, owner, kind, how,
                postmaster is not None, found_by, watched.get(real), configfile,
            )
        )  # fmt: skip
    return out


def _name_of(data: str) -> str:
    """A name for a data directory found running: its cluster_name, else its last directory (with the one
    above when that is only "data", as in /var/lib/pgsql/16/data)."""
    named = read_conf(os.path.join(data, "postgresql.conf")).get("cluster_name")
    if named:
        return named
    parts = [p for p in data.split("/") if p]
    return "-".join(parts[-2:]) if parts and parts[-1] in ("data", "pgdata") else (parts[-1] if parts else "root")


def _instance_name(proposed: str) -> str:
    """PROPOSED made a valid instance name (letters, digits, '_', '.', '-'; at most 63)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", proposed).strip("-._")[:63] or "postgres"
    return name if NAME_RE.fullmatch(name) else "pg-" + name[:60]


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    for n in range(2, 1000):
        candidate = f"{name[:58]}-{n}"
        if candidate not in taken:
            return candidate
    raise ValueError(f"no free instance name for {name}")
