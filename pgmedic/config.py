"""pgmedic's configuration: one YAML file plus one file per instance in instances.d/ beside it.

The main file (default /etc/pgmedic/pgmedic.yaml, or --config / PGMEDIC_CONFIG) holds the exporter,
remediator and KSYS settings and any hand-written instances. ``pgmedic add instance`` writes
instances.d/NAME.yaml instead, so the CLI never rewrites a file an administrator edits by hand.
Instances use the VM agent's attribute names (type, instancename, database, configfile, scripts).

Every problem raises ConfigError with the file, the key and what is wrong, and nothing is half-loaded.
"""

from __future__ import annotations

import enum
import grp
import os
import pwd
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .durations import parse_duration
from .errors import ConfigError
from .ksysxml import data_directory_from_xml
from .pidfile import PidFile
from .text import CONTROL_RE, control_character, shown

DEFAULT_CONFIG = "/etc/pgmedic/pgmedic.yaml"
DEFAULT_PORT = 5432
INSTANCES_DIR = "instances.d"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # matched whole (fullmatch): no trailing newline
MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is a mistake or an attack
MAX_YAML_DEPTH = 32  # nesting levels; pgmedic's own files need four
SCRIPTS_RUN_AS = ("owner", "invoker")
ACTIONS = ("restart", "start", "none")  # what an alert may trigger; never an automatic stop
# Who starts and stops an instance: found on the host (auto), or one of these (pgmedic.managers).
MANAGER_SETTINGS = ("auto", "systemd", "pg_ctlcluster", "pg_ctl")


# ---- value checkers: each returns the converted value or raises ValueError with what is wrong ----


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {shown(value)}")
    refuse_control_characters(value)
    return value.strip()


def refuse_control_characters(value: str) -> None:
    """ValueError when VALUE holds a newline or any other control character."""
    found = control_character(value)
    if found:
        raise ValueError(f"contains a control character ({found}): {shown(value)}")


def _abs_path(value: Any) -> str:
    text = _str(value)
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path, got {shown(text)}")
    return text


def _script(value: Any) -> str:
    path = _abs_path(value)
    if not os.path.isfile(path):
        raise ValueError(f"script {path} does not exist")
    if not os.access(path, os.X_OK):
        raise ValueError(f"script {path} is not executable (chmod +x)")
    return path


def _command(value: Any) -> tuple[str, ...]:
    """A command run without a shell: a YAML list, or (from the command line) words split as a shell
    would split them, never run by one. Its program must exist and be executable."""
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {shown(value)} into words: {exc}") from None
    return _program_and_words(list(value) if isinstance(value, tuple) else value, "[/usr/local/sbin/pg-start, main]")


def _program_and_words(value: Any, example: str) -> tuple[str, ...]:
    """VALUE as a command: a non-empty list of words without control characters, the first an executable."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a command as a list of words, e.g. {example}")
    for word in value:
        refuse_control_characters(word)
    _script(value[0])
    return tuple(value)


def _unit(value: Any) -> str:
    text = _str(value)
    if not re.fullmatch(r"[A-Za-z0-9:_.@\\-]+\.service", text):
        raise ValueError(f"expected a systemd service unit name such as postgresql@15-main.service, got {shown(text)}")
    return text


def _dir(value: Any) -> str:
    path = _abs_path(value)
    if not os.path.isdir(path):
        raise ValueError(f"directory {path} does not exist")
    return path


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {shown(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return check


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ValueError(f"expected true or false, got {shown(value)}")


def _duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {shown(value)}")
    return seconds


def _type(value: Any) -> str:
    if _str(value).upper() != "POSTGRES":
        raise ValueError(f"must be POSTGRES, got {shown(value)}")
    return "POSTGRES"


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {shown(value)}")
        return str(value)

    return check


class Mode(enum.StrEnum):
    """How the remediator treats an instance: act on its failures, or only journal what it would do."""

    ACT = "act"
    OBSERVE = "observe"  # roll-out: every decision taken and journaled as "would restart/escalate", none acted on


def _mode(value: Any) -> Mode:
    return Mode(_one_of(*Mode)(value))


def _account(lookup: Callable[[str], object], kind: str, hint: str = "") -> Callable[[Any], str]:
    """A check that the value names an OS user or group of this host (KIND says which)."""

    def check(value: Any) -> str:
        name = _str(value)
        try:
            lookup(name)
        except KeyError:
            raise ValueError(f"no OS {kind} named {shown(name)} on this host{hint}") from None
        return name

    return check


_user = _account(pwd.getpwnam, "user")
_group = _account(grp.getgrnam, "group")
_owner = _account(pwd.getpwnam, "user", " (the owner of the data directory)")


def _argv(value: Any) -> tuple[str, ...]:
    return _program_and_words([value] if isinstance(value, str) else value, "[/usr/local/sbin/notify-ksys]")


def _url(value: Any) -> str:
    text = _str(value)
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError(f"expected an http:// or https:// URL, got {shown(text)}")
    return text


def split_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as (host, port); ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {shown(text)}")
    return host.strip("[]"), int(port)


def listen_address(config_path: str, key: str, given: str | None, configured: str) -> tuple[str, int]:
    """The (host, port) to serve on: --listen if given, else the config; a bad value is a ConfigError."""
    try:
        return split_listen(given or configured)
    except ValueError as exc:
        raise ConfigError("--listen" if given else config_path, None if given else key, str(exc)) from None


def _listen(value: Any) -> str:
    text = _str(value)
    split_listen(text)
    return text


def _actions(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of alert names to actions")
    for alert, action in value.items():
        refuse_control_characters(str(alert))
        if action not in ACTIONS:
            raise ValueError(f"action for {shown(alert)} must be one of {', '.join(ACTIONS)}, got {shown(action)}")
    return {str(k): str(v) for k, v in value.items()}


def setting(check: Callable[[Any], Any], default: Any = MISSING, *, factory: Callable[[], Any] | None = None) -> Any:
    """A configuration field: its CHECK (value -> converted value, ValueError when wrong) and default,
    declared once here; the key tables and defaults are derived from the dataclasses."""
    if factory is not None:
        return field(default_factory=factory, metadata={"check": check})
    return field(default=default, metadata={"check": check})


def checks(cls: type) -> dict[str, Callable[[Any], Any]]:
    """{key: check} of a configuration section, from its fields."""
    return {f.name: f.metadata["check"] for f in fields(cls) if "check" in f.metadata}


@dataclass(frozen=True)
class InstanceConfig:
    """One PostgreSQL instance, as the VM agent describes it plus pgmedic's own settings."""

    name: str
    instancename: str = setting(_owner)  # OS user owning the data directory; also the default database role
    database: str = setting(_str)
    data_directory: str = setting(_abs_path)
    source: str = field(default="")  # the file this instance was read from
    type: str = setting(_type, "POSTGRES")
    configfile: str | None = setting(_abs_path, None)
    start_script: str | None = setting(_script, None)
    stop_script: str | None = setting(_script, None)
    monitor_script: str | None = setting(_script, None)
    # repmgr-style commands (argv, no shell) that replace the built-in start and stop, under the scripts' trust rule.
    start_command: tuple[str, ...] | None = setting(_command, None)
    stop_command: tuple[str, ...] | None = setting(_command, None)
    # Who starts and stops it: auto (found on the host: pgmedic.managers) or one of MANAGER_SETTINGS.
    manager: str = setting(_one_of(*MANAGER_SETTINGS), "auto")
    unit: str | None = setting(_unit, None)  # the systemd unit, when it cannot be found (with manager: systemd)
    bin_dir: str | None = setting(_dir, None)
    port: int | None = setting(_int_in(1, 65535), None)
    host: str | None = setting(_str, None)
    user: str | None = setting(_str, None)
    log_file: str | None = setting(_abs_path, None)
    start_timeout: float = setting(_duration, 60.0)
    stop_timeout: float = setting(_duration, 30.0)
    monitor_timeout: float = setting(_duration, 5.0)
    max_restart: int = setting(_int_in(0, 1000), 3)
    restart_window: float = setting(_duration, 900.0)
    restart_delay: float = setting(parse_duration, 5.0)
    critical: bool = setting(_bool, False)
    # owner: the instance's OS user; invoker: whoever runs pgmedic (the VM agent's way), root included.
    scripts_run_as: str = setting(_one_of(*SCRIPTS_RUN_AS), "owner")
    # The remediator's fast path for this instance: None follows remediator.fast_path.
    fast_path: bool | None = setting(_bool, None)
    # act or observe for this instance: None follows remediator.mode.
    mode: Mode | None = setting(_mode, None)  # noqa: RUF009 (an enum: immutable)

    @property
    def script_user(self) -> str:
        """The OS user start/stop/monitor scripts run as (and who besides root may own them)."""
        if self.scripts_run_as == "invoker":
            return pwd.getpwuid(os.geteuid()).pw_name
        return self.instancename

    def mode_in(self, remediator: RemediatorConfig) -> Mode:
        """Whether the remediator acts on this instance or only observes (its own setting, else the global one)."""
        return remediator.mode if self.mode is None else self.mode

    def fast_path_on(self, remediator: RemediatorConfig) -> bool:
        """Whether the remediator's fast path watches this instance (its own setting, else the global one)."""
        return remediator.fast_path if self.fast_path is None else self.fast_path

    def scripts(self) -> dict[str, str]:
        """The configured scripts by attribute name."""
        named = {"start_script": self.start_script, "stop_script": self.stop_script}
        named["monitor_script"] = self.monitor_script
        for key, command in (("start_command", self.start_command), ("stop_command", self.stop_command)):
            if command:
                named[key] = command[0]
        return {key: path for key, path in named.items() if path}

    def port_for(self, pid_file: PidFile | None) -> int:
        """The port the server listens on: the running postmaster's, else the configured one, else 5432."""
        return (pid_file.port if pid_file is not None and pid_file.port else None) or self.port or DEFAULT_PORT

    @property
    def role(self) -> str:
        """The database role pgmedic connects as: ``user`` or else the owner's name (initdb's superuser)."""
        return self.user or self.instancename

    def attributes(self) -> dict[str, Any]:
        """The attributes as written in a config file (defaults and derived fields left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if "check" not in f.metadata or (f.name == "data_directory" and self.configfile):
                continue
            value = getattr(self, f.name)
            if value is not None and (f.name in ("type", "instancename", "database") or value != f.default):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class ExporterConfig:
    listen: str = setting(_listen, "127.0.0.1:9188")
    default_scrape_timeout: float = setting(
        _duration, 10.0
    )  # when Prometheus sends no X-Prometheus-Scrape-Timeout-Seconds
    timeout_margin: float = setting(parse_duration, 0.25)
    # TLS and basic auth (exporter-toolkit format, pgmedic.webconfig); --web.config.file overrides it.
    web_config_file: str | None = setting(_abs_path, None)


@dataclass(frozen=True)
class RemediatorConfig:
    listen: str = setting(_listen, "127.0.0.1:9189")
    token_file: str | None = setting(_abs_path, None)
    state_dir: str = setting(_abs_path, "/var/lib/pgmedic")
    actions: dict[str, str] = setting(_actions, factory=dict)  # noqa: RUF009 (a field): alertname -> action
    retention: float = setting(_duration, 30 * 86400.0)  # journal history kept; unfinished work is never pruned
    state_group: str | None = setting(
        _group, None
    )  # a group that may read the journal and audit log (files 0640, else 0600)
    # After a recovery, how long the remediator watches the postmaster itself, until the alert resolves:
    # a crash before Prometheus has seen the instance up raises no new alert.
    recovery_watch: float = setting(parse_duration, 120.0)
    # Watch each postmaster through a pidfd and restart a crashed one at once (opt-in; README, fast path).
    fast_path: bool = setting(_bool, False)
    # Alertmanager to ask, before a fast-path start, whether a silence covers the instance (maintenance).
    alertmanager_url: str | None = setting(_url, None)
    # TLS and basic auth for the read side (exporter-toolkit format); the webhook keeps its token.
    web_config_file: str | None = setting(_abs_path, None)
    # act: remediate; observe: decide and journal "would restart/escalate" only (a fleet's roll-out).
    mode: Mode = setting(_mode, Mode.ACT)  # noqa: RUF009 (an enum: immutable)
    # This host's name in the pgmedic_host label (a target label of the scrape config): alerts naming
    # another host are journaled as ignored, never acted on, whatever the routing did.
    host: str = setting(_str, factory=socket.gethostname)


@dataclass(frozen=True)
class KsysConfig:
    command: tuple[str, ...] | None = setting(_argv, None)
    webhook: str | None = setting(_url, None)
    timeout: float = setting(_duration, 10.0)
    run_as: str | None = setting(
        _user, None
    )  # the user the command runs as; default: nobody when root, else pgmedic's own user

    @property
    def command_user(self) -> str:
        """Who runs the KSYS command: least privilege, since it only needs the event on stdin."""
        if self.run_as:
            return self.run_as
        return "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def notifiers(self) -> tuple[str, ...]:
        """The configured notifier kinds, in delivery order."""
        return tuple(name for name, on in (("command", self.command), ("webhook", self.webhook)) if on)


@dataclass(frozen=True)
class Config:
    path: str
    instances: dict[str, InstanceConfig]
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    remediator: RemediatorConfig = field(default_factory=RemediatorConfig)
    ksys: KsysConfig = field(default_factory=KsysConfig)
    audit_log: str | None = None

    @property
    def instances_dir(self) -> Path:
        return Path(self.path).parent / INSTANCES_DIR

    @property
    def audit_log_path(self) -> str:
        return self.audit_log or os.path.join(self.remediator.state_dir, "audit.log")

    def instance(self, name: str) -> InstanceConfig:
        try:
            return self.instances[name]
        except KeyError:
            known = ", ".join(sorted(self.instances)) or "none configured"
            raise ConfigError(self.path, f"instances.{name}", f"no such instance (known: {known})") from None


INSTANCE_KEYS = checks(InstanceConfig)
EXPORTER_KEYS = checks(ExporterConfig)
REMEDIATOR_KEYS = checks(RemediatorConfig)
KSYS_KEYS = checks(KsysConfig)
TOP_KEYS = ("instances", "exporter", "remediator", "ksys", "audit_log")


def config_path(explicit: str | None = None) -> str:
    """The config file to use: --config, else $PGMEDIC_CONFIG, else /etc/pgmedic/pgmedic.yaml."""
    return explicit or os.environ.get("PGMEDIC_CONFIG") or DEFAULT_CONFIG


def _check_section(raw: Any, schema: dict[str, Any], source: str, prefix: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix, "expected a mapping")
    out = {}
    for key, value in raw.items():
        if key not in schema:
            raise ConfigError(source, f"{prefix}.{key}", f"unknown key (known: {', '.join(schema)})")
        if isinstance(value, str) and CONTROL_RE.search(value):
            raise ConfigError(source, f"{prefix}.{key}", f"contains a control character: {shown(value)}")
        try:
            out[key] = schema[key](value)
        except ValueError as exc:
            raise ConfigError(source, f"{prefix}.{key}", str(exc)) from None
    return out


def build_instance(name: str, raw: Any, source: str) -> InstanceConfig:
    """Validate one instance's attributes and resolve its data directory (from the XML if configfile)."""
    prefix = f"instances.{name}"
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(source, prefix, "instance name must be letters, digits, '_', '.', '-' (max 63)")
    values = _check_section(raw, INSTANCE_KEYS, source, prefix)
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix, "expected a mapping of attributes")
    for required in ("instancename", "database"):
        if required not in values:
            raise ConfigError(source, f"{prefix}.{required}", "is required")
    if ("configfile" in values) == ("data_directory" in values):
        raise ConfigError(source, f"{prefix}.configfile", "set exactly one of configfile or data_directory")
    if "configfile" in values:
        values["data_directory"] = data_directory_from_xml(values["configfile"], values["instancename"])
    return InstanceConfig(name=name, source=source, **values)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader for configuration written by people: no duplicate keys, no aliases, bounded nesting.

    PyYAML silently keeps the last of two equal keys; aliases let a few lines expand into gigabytes
    ("billion laughs"); and its composer recurses once per nesting level, so 20,000 levels end in a
    RecursionError. Each is refused here with the line it is on.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in pgmedic files", mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_text(path: Path, *, required: bool) -> str | None:
    """The file as UTF-8 text, bounded in size; None when it is absent and not required."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError(str(path), None, "file does not exist") from None
        return None
    except PermissionError:
        raise ConfigError(str(path), None, "file is not readable") from None
    except IsADirectoryError:
        raise ConfigError(str(path), None, "is a directory, expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), None, f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a pgmedic config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(str(path), f"line {line}", f"not UTF-8 (byte 0x{data[exc.start]:02x})") from None


def read_yaml_file(path: Path, *, required: bool) -> Any:
    """PATH parsed by the strict loader (bounded, no aliases, UTF-8); ConfigError in one line."""
    text = _read_text(path, required=required)
    if text is None:
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(str(path), where, f"malformed YAML: {problem}") from None
    except RecursionError:  # belt and braces: the depth bound above should make this unreachable
        raise ConfigError(str(path), None, "malformed YAML: nested too deeply") from None


def load_config(path: str | None = None, *, required: bool = False) -> Config:
    """Load and validate the whole configuration; a missing main file is an empty one unless required."""
    main = Path(config_path(path))
    # A main file may be absent when the CLI wrote every instance into instances.d/.
    raw = read_yaml_file(main, required=required and not (main.parent / INSTANCES_DIR).is_dir()) or {}
    source = str(main)
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "expected a mapping at the top level")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(source, str(key), f"unknown key (known: {', '.join(TOP_KEYS)})")
    instances: dict[str, InstanceConfig] = {}
    raw_instances = raw.get("instances") or {}
    if not isinstance(raw_instances, dict):
        raise ConfigError(source, "instances", "expected a mapping of instance names to attributes")
    for name, attrs in raw_instances.items():
        instances[str(name)] = build_instance(str(name), attrs, source)
    instances_dir = main.parent / INSTANCES_DIR
    if instances_dir.is_dir():
        for file in sorted(instances_dir.glob("*.yaml")):
            name = file.stem
            if name in instances:
                raise ConfigError(
                    str(file), f"instances.{name}", f"duplicate instance name, also defined in {instances[name].source}"
                )
            instances[name] = build_instance(name, read_yaml_file(file, required=True), str(file))
    audit = raw.get("audit_log")
    if audit is not None:
        try:
            audit = _abs_path(audit)
        except ValueError as exc:
            raise ConfigError(source, "audit_log", str(exc)) from None
    return Config(
        path=source,
        instances=instances,
        exporter=ExporterConfig(**_check_section(raw.get("exporter"), EXPORTER_KEYS, source, "exporter")),
        remediator=RemediatorConfig(**_check_section(raw.get("remediator"), REMEDIATOR_KEYS, source, "remediator")),
        ksys=KsysConfig(**_check_section(raw.get("ksys"), KSYS_KEYS, source, "ksys")),
        audit_log=audit,
    )
