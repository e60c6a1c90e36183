"""Who manages an instance: found on the host, not guessed, so that pgmedic acts through that manager.

A server restarted with ``pg_ctl`` behind its manager's back runs outside it: ``systemctl stop`` no
longer stops it, the unit reports it dead and races pgmedic with its own ``Restart=``, and a cluster of
Debian's postgresql-common cannot even start that way (its configuration is in /etc/postgresql). So for
every instance pgmedic finds, in this order:

* an HA agent (Patroni, pg_auto_failover's ``pg_autoctl``, repmgr's ``repmgrd``): an ancestor process of
  the postmaster is the agent, or the agent's configuration names this data directory. The agent owns
  the server: pgmedic observes only and never acts (as Patroni and pg_auto_failover require of every
  other manager);
* ``start_command`` / ``stop_command`` or start/stop scripts: the administrator's own (``command``), also
  over a ``manager`` setting (they are what runs);
* ``systemd``: the postmaster's cgroup is a PostgreSQL service unit, or, while it is down and systemd
  runs, an installed unit whose PGDATA or ``-D`` names this data directory, or Debian's
  ``postgresql@VER-NAME`` for this cluster;
* ``pg_ctlcluster``: a postgresql-common cluster (/etc/postgresql/VER/NAME) whose data directory is this
  one, with its ``start.conf``, port, socket directory and log file;
* ``pg_ctl`` otherwise.

The instance's ``manager`` setting (``systemd``, ``pg_ctlcluster``, ``pg_ctl``) overrides the finding.
Everything is read from files (/proc, /etc, unit files): detection never runs a program.
"""

from __future__ import annotations

import enum
import glob
import os
import pwd
import re
from dataclasses import dataclass

from . import procfs
from .config import MANAGER_SETTINGS, InstanceConfig
from .durations import parse_duration

DEFAULT_SOCKET_DIRECTORY = "/var/run/postgresql"
DEFAULT_PORT = 5432
ANCESTORS_LOOKED_AT = 4  # an agent starts the postmaster itself or through a shell or runuser
CONFIG_READ_LIMIT = 1 << 20


class ManagerKind(enum.StrEnum):
    SYSTEMD = "systemd"
    PG_CTLCLUSTER = "pg_ctlcluster"
    PG_CTL = "pg_ctl"
    COMMAND = "command"  # start_command/stop_command or scripts: the administrator's own
    PATRONI = "patroni"
    PG_AUTOCTL = "pg_autoctl"
    REPMGR = "repmgr"


HA_AGENTS = frozenset({ManagerKind.PATRONI, ManagerKind.PG_AUTOCTL, ManagerKind.REPMGR})
__all__ = ["MANAGER_SETTINGS", "Manager", "ManagerKind", "find_manager"]
AGENT_PROGRAMS = {"patroni": ManagerKind.PATRONI, "pg_autoctl": ManagerKind.PG_AUTOCTL, "repmgrd": ManagerKind.REPMGR}


class StartPolicy(enum.StrEnum):
    """A postgresql-common cluster's start.conf."""

    AUTO = "auto"  # started and stopped automatically
    MANUAL = "manual"  # only an explicit action starts it: `pgmedic start`, never the remediator
    DISABLED = "disabled"  # never started (pg_ctlcluster refuses too)


@dataclass(frozen=True)
class Host:
    """Where this host keeps what detection reads (tests give their own directories)."""

    etc_postgresql: str = "/etc/postgresql"
    unit_dirs: tuple[str, ...] = (
        "/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/lib/systemd/system",
        "/usr/lib/systemd/system",
    )  # fmt: skip
    systemd_marker: str = "/run/systemd/system"  # exists when systemd is the init (sd_booted)
    patroni_configs: tuple[str, ...] = (
        "/etc/patroni.yml",
        "/etc/patroni.yaml",
        "/etc/patroni/*.yml",
        "/etc/patroni/*.yaml",
    )
    repmgr_configs: tuple[str, ...] = ("/etc/repmgr.conf", "/etc/repmgr/*.conf", "/etc/repmgr/*/repmgr.conf")

    def systemd_running(self) -> bool:
        return os.path.isdir(self.systemd_marker)


HOST = Host()


@dataclass(frozen=True)
class DebianCluster:
    """A postgresql-common cluster, as /etc/postgresql/VERSION/NAME describes it."""

    version: str
    name: str
    config_dir: str
    data_directory: str
    port: int
    socket_directory: str
    log_file: str
    start: StartPolicy
    owner: str | None

    @property
    def label(self) -> str:
        return f"{self.version}/{self.name}"

    @property
    def unit(self) -> str:
        return f"postgresql@{self.version}-{self.name}.service"


@dataclass(frozen=True)
class SystemdUnit:
    name: str
    path: str | None  # its unit file, when found
    restart: str = "no"  # Restart=
    restart_sec: float = 0.1  # RestartSec=, systemd's default 100 ms

    @property
    def restarts_itself(self) -> bool:
        """Whether systemd restarts the unit's server by itself after it was killed (Restart= covers a signal)."""
        return self.restart in ("always", "on-failure", "on-abnormal", "on-abort")


class Evidence(enum.StrEnum):
    """How a manager was found (what later findings may rely on)."""

    CONFIGURED = "configured"  # the manager setting, or start/stop commands
    PARENT = "parent"  # an ancestor process of the postmaster
    AGENT_CONFIGURATION = "agent_configuration"
    CGROUP = "cgroup"  # the postmaster's cgroup is the unit's
    REMEMBERED_CGROUP = "remembered_cgroup"  # it was, when the postmaster last ran
    UNIT_FILE = "unit_file"  # an installed unit names the data directory (or is the cluster's)
    CLUSTER = "cluster"  # a postgresql-common cluster
    NOTHING_ELSE = "nothing_else"


@dataclass(frozen=True)
class Manager:
    kind: ManagerKind
    found: str  # how it was found, one line for people
    evidence: Evidence
    unit: SystemdUnit | None = None
    cluster: DebianCluster | None = None

    @property
    def observe_only(self) -> bool:
        """An HA agent owns the server: pgmedic never acts on it."""
        return self.kind in HA_AGENTS

    def describe(self) -> str:
        return f"{self.kind} ({self.found})"


# ---- postgresql-common ---------------------------------------------------------------------------

_CONF_LINE = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(?:'((?:[^'\\]|''|\\.)*)'|([^\s#']+))""")


def read_conf(path: str, into: dict[str, str] | None = None, depth: int = 0) -> dict[str, str]:
    """The settings of a postgresql.conf-style file (the last one wins), following include_dir and
    include (relative to the file), bounded in size and depth; unreadable files are skipped."""
    out = {} if into is None else into
    text = _read_text(path)
    if text is None or depth > 4:
        return out
    base = os.path.dirname(path)
    for line in text.splitlines():
        match = _CONF_LINE.match(line)
        if not match:
            continue
        key = match.group(1).lower()
        value = match.group(2).replace("''", "'") if match.group(2) is not None else match.group(3)
        if key in ("include", "include_if_exists"):
            read_conf(os.path.join(base, value), out, depth + 1)
        elif key == "include_dir":
            for file in sorted(glob.glob(os.path.join(base, value, "*.conf"))):
                read_conf(file, out, depth + 1)
        else:
            out[key] = value
    return out


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(CONFIG_READ_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return None


def debian_clusters(host: Host = HOST) -> list[DebianCluster]:
    """Every postgresql-common cluster of this host (as pg_lsclusters lists them), by version and name."""
    out = []
    for conf in sorted(glob.glob(os.path.join(host.etc_postgresql, "*", "*", "postgresql.conf"))):
        config_dir = os.path.dirname(conf)
        version, name = config_dir.split(os.sep)[-2:]
        settings = read_conf(conf)
        data = settings.get("data_directory") or _link_or(os.path.join(config_dir, "pgdata"), "")
        data = data or f"/var/lib/postgresql/{version}/{name}"
        try:
            port = int(settings.get("port", DEFAULT_PORT))
        except ValueError:
            port = DEFAULT_PORT
        sockets = settings.get("unix_socket_directories") or settings.get("unix_socket_directory") or ""
        socket_dir = sockets.split(",")[0].strip() or DEFAULT_SOCKET_DIRECTORY
        log = _link_or(os.path.join(config_dir, "log"), f"/var/log/postgresql/postgresql-{version}-{name}.log")
        lines = (_read_text(os.path.join(config_dir, "start.conf")) or "").splitlines()
        words = [word for line in lines for word in line.split("#")[0].split()]
        start = next((StartPolicy(w) for w in words if w in StartPolicy.__members__.values()), StartPolicy.AUTO)
        out.append(DebianCluster(version, name, config_dir, data, port, socket_dir, log, start, owner_of(data)))
    return out


def owner_of(path: str) -> str | None:
    """The OS user owning PATH (a data directory), or None when it is missing or its uid has no name."""
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except (OSError, KeyError):
        return None


def _link_or(path: str, default: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return default


def debian_cluster_of(data_directory: str, host: Host = HOST) -> DebianCluster | None:
    target = os.path.realpath(data_directory)
    return next((c for c in debian_clusters(host) if os.path.realpath(c.data_directory) == target), None)


# ---- systemd -------------------------------------------------------------------------------------


def unit_of_process(pid: int) -> str | None:
    """The service unit whose cgroup holds PID (the systemd hierarchy: v2, or v1's name=systemd)."""
    data = procfs.read_file(f"{procfs.PROC}/{pid}/cgroup", 8192)
    for line in (data or b"").decode(errors="replace").splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers in ("", "name=systemd"):
            last = path.rstrip("/").rsplit("/", 1)[-1]
            if last.endswith(".service"):
                return last
    return None


def _unit_files(name: str, host: Host) -> list[str]:
    """The unit file of NAME (or its template) and its drop-ins, in the order systemd applies them."""
    template = re.sub(r"@[^.]*\.service$", "@.service", name)
    files = []
    for candidate in dict.fromkeys((name, template)):
        found = next(
            (os.path.join(d, candidate) for d in host.unit_dirs if os.path.isfile(os.path.join(d, candidate))), None
        )
        if found:
            files.append(found)
            break
    for candidate in dict.fromkeys((template, name)):
        for d in host.unit_dirs:
            files += sorted(glob.glob(os.path.join(d, candidate + ".d", "*.conf")))
    return files


def _service_settings(files: list[str]) -> dict[str, list[str]]:
    """The [Service] keys of FILES (every value, in order: Environment= and ExecStart= add up)."""
    out: dict[str, list[str]] = {}
    for path in files:
        section = ""
        for raw in (_read_text(path) or "").splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
                key, _, value = line.partition("=")
                out.setdefault(key.strip(), []).append(value.strip())
    return out


def load_unit(name: str, host: Host = HOST) -> SystemdUnit:
    files = _unit_files(name, host)
    settings = _service_settings(files)
    restart = (settings.get("Restart") or ["no"])[-1] or "no"
    try:
        restart_sec = parse_duration((settings.get("RestartSec") or ["100ms"])[-1])
    except ValueError:
        restart_sec = 0.1
    return SystemdUnit(name, files[0] if files else None, restart, restart_sec)


def unit_data_directories(name: str, host: Host = HOST) -> list[str]:
    """The data directories the unit NAME names: its PGDATA=, or a -D/--pgdata of its ExecStart."""
    settings = _service_settings(_unit_files(name, host))
    named = []
    for value in settings.get("Environment", []):
        named += [
            word.strip("\"'")[len("PGDATA=") :] for word in value.split() if word.strip("\"'").startswith("PGDATA=")
        ]
    for value in settings.get("ExecStart", []):
        words = value.split()
        named += [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-D", "--pgdata")]
        named += [w.split("=", 1)[1] for w in words if w.startswith("--pgdata=")]
    return [path.rstrip("/") or "/" for path in named if path.startswith("/")]


def unit_names_data_directory(name: str, data_directory: str, host: Host = HOST) -> bool:
    target = os.path.realpath(data_directory)
    return any(os.path.realpath(path) == target for path in unit_data_directories(name, host))


def postgres_units(host: Host = HOST) -> list[str]:
    """The installed service units (not templates) whose file name says postgres, pgsql or edb."""
    out = []
    for directory in host.unit_dirs:
        for path in sorted(glob.glob(os.path.join(directory, "*.service"))):
            name = os.path.basename(path)
            if "@" not in name and re.search(r"postgres|pgsql|edb", name) and name not in out:
                out.append(name)
    return out


def _postgres_unit(name: str, data_directory: str, host: Host) -> bool:
    """A unit of a PostgreSQL server, not any unit a postmaster may have been started from (cron, an
    ssh session's service, pgmedic's own remediator)."""
    if name.startswith(("postgresql", "postgres-", "postgres.", "postgres@")):
        return True
    return unit_names_data_directory(name, data_directory, host)


def installed_unit(data_directory: str, cluster: DebianCluster | None, host: Host = HOST) -> str | None:
    """An installed unit for this data directory: Debian's postgresql@VER-NAME, or a PostgreSQL unit
    (its file's name says postgres, pgsql or edb) whose PGDATA or -D names it."""
    if cluster is not None and any(os.path.isfile(os.path.join(d, "postgresql@.service")) for d in host.unit_dirs):
        return cluster.unit
    return next((name for name in postgres_units(host) if unit_names_data_directory(name, data_directory, host)), None)


# ---- HA agents -----------------------------------------------------------------------------------


def agent_ancestor(pid: int) -> tuple[ManagerKind, int, str] | None:
    """(agent, its pid, its program) when an ancestor of PID is an HA agent."""
    for _ in range(ANCESTORS_LOOKED_AT):
        stat = procfs.read_stat(pid)
        if stat is None or stat.ppid <= 1:
            return None
        pid = stat.ppid
        data = procfs.read_file(f"{procfs.PROC}/{pid}/cmdline", 4096) or b""
        for word in data.split(b"\0")[:3]:
            program = os.path.basename(word.decode(errors="replace").split(" ")[0]).rstrip(":")
            if program in AGENT_PROGRAMS:
                return AGENT_PROGRAMS[program], pid, program
    return None


def _config_naming(patterns: tuple[str, ...], key: str, data_directory: str) -> str | None:
    """The first file of PATTERNS whose KEY (YAML `key:` or conf `key =`) names DATA_DIRECTORY."""
    target = os.path.realpath(data_directory)
    line = re.compile(rf"""^\s*{key}\s*[:=]\s*['"]?([^'"#\s]+)""", re.MULTILINE)
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            for value in line.findall(_read_text(path) or ""):
                if os.path.realpath(value.rstrip("/") or "/") == target:
                    return path
    return None


def agent_configuration(data_directory: str, owner: str, host: Host = HOST) -> tuple[ManagerKind, str] | None:
    """(agent, its configuration file) when an HA agent's configuration names this data directory."""
    found = _config_naming(host.patroni_configs, "data_dir", data_directory)
    if found:
        return ManagerKind.PATRONI, found
    found = _config_naming(host.repmgr_configs, "data_directory", data_directory)
    if found:
        return ManagerKind.REPMGR, found
    try:
        home = pwd.getpwnam(owner).pw_dir
    except KeyError:
        return None
    # pg_autoctl keeps its configuration under a path made of the data directory's own path.
    autoctl = os.path.join(home, ".config", "pg_autoctl") + os.path.realpath(data_directory) + "/pg_autoctl.cfg"
    return (ManagerKind.PG_AUTOCTL, autoctl) if os.path.isfile(autoctl) else None


# ---- the finding ---------------------------------------------------------------------------------


class ManagerProblem(Exception):
    """The configured manager cannot be used for this instance (one line)."""


def find_manager(
    cfg: InstanceConfig, postmaster_pid: int | None, host: Host = HOST, remembered: Manager | None = None
) -> Manager:
    """Who manages CFG's instance now (POSTMASTER_PID: its verified postmaster, if running). REMEMBERED is
    the finding of a previous look: a unit whose cgroup held the postmaster still manages it once it died
    (systemd restarts it in the same unit), even where no unit file names the data directory.

    Raises ManagerProblem when the `manager` setting names one that this host does not have for it.
    """
    data = cfg.data_directory
    cluster = debian_cluster_of(data, host)
    forced = cfg.manager
    if forced != "auto" and _commands(cfg):  # what runs is the administrator's own
        return Manager(ManagerKind.COMMAND, f"start/stop commands in the configuration (over manager: {forced})",
                       Evidence.CONFIGURED, cluster=cluster)  # fmt: skip
    if forced == "pg_ctl":
        return Manager(ManagerKind.PG_CTL, "manager: pg_ctl in the configuration", Evidence.CONFIGURED)
    if forced == "pg_ctlcluster":
        if cluster is None:
            raise ManagerProblem(
                f"manager: pg_ctlcluster, but no cluster in {host.etc_postgresql} has data directory {data}"
            )
        return Manager(
            ManagerKind.PG_CTLCLUSTER, f"cluster {cluster.label} (configured)", Evidence.CONFIGURED, cluster=cluster
        )
    if forced == "systemd":
        name = cfg.unit or (unit_of_process(postmaster_pid) if postmaster_pid else None)
        name = name or installed_unit(data, cluster, host)
        if name is None:
            raise ManagerProblem(f"manager: systemd, but no unit for {data} was found: set unit: NAME.service")
        return Manager(ManagerKind.SYSTEMD, f"{name} (configured)", Evidence.CONFIGURED, load_unit(name, host), cluster)
    if postmaster_pid:
        agent = agent_ancestor(postmaster_pid)
        if agent is not None:
            kind, pid, program = agent
            return Manager(kind, f"the postmaster runs under {program} (pid {pid})", Evidence.PARENT)
    configured = agent_configuration(data, cfg.instancename, host)
    if configured is not None:
        kind, path = configured
        return Manager(kind, f"{path} names this data directory", Evidence.AGENT_CONFIGURATION)
    if _commands(cfg):
        return Manager(
            ManagerKind.COMMAND, "start/stop commands in the configuration", Evidence.CONFIGURED, cluster=cluster
        )
    unit = cfg.unit
    if unit is not None:
        return Manager(ManagerKind.SYSTEMD, f"{unit} (configured)", Evidence.CONFIGURED, load_unit(unit, host), cluster)
    if postmaster_pid:
        running_in = unit_of_process(postmaster_pid)
        if running_in and _postgres_unit(running_in, data, host):
            return Manager(ManagerKind.SYSTEMD, f"{running_in}: the postmaster's cgroup", Evidence.CGROUP,
                           load_unit(running_in, host), cluster)  # fmt: skip
    elif remembered is not None and remembered.unit is not None and remembered.evidence in _IN_CGROUP:
        return Manager(ManagerKind.SYSTEMD, f"{remembered.unit.name}: the postmaster's cgroup when it last ran",
                       Evidence.REMEMBERED_CGROUP, remembered.unit, cluster)  # fmt: skip
    if host.systemd_running():
        unit = installed_unit(data, cluster, host)
        if unit is not None:
            return Manager(ManagerKind.SYSTEMD, f"{unit}: an installed unit for this data directory",
                           Evidence.UNIT_FILE, load_unit(unit, host), cluster)  # fmt: skip
    if cluster is not None:
        return Manager(ManagerKind.PG_CTLCLUSTER, f"cluster {cluster.label}, start.conf {cluster.start}",
                       Evidence.CLUSTER, cluster=cluster)  # fmt: skip
    return Manager(ManagerKind.PG_CTL, "no unit, distribution cluster or HA agent manages this data directory",
                   Evidence.NOTHING_ELSE)  # fmt: skip


_IN_CGROUP = frozenset({Evidence.CGROUP, Evidence.REMEMBERED_CGROUP})


def _commands(cfg: InstanceConfig) -> bool:
    return bool(cfg.start_command or cfg.stop_command or cfg.start_script or cfg.stop_script)
