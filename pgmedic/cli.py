"""The ``pgmedic`` command, in the VM agent's grammar: ``ACTION CLASS [NAME] [ATTR=VALUE …]``.

A user's own ``ksysvmmgr -s add app NAME type=POSTGRES instancename=… database=… configfile=…``
line works with the command name replaced: ``app`` and ``application`` mean ``instance``, and the
agent's ``-s`` and ``-l N`` flags are accepted.

Exit codes: 0 done / healthy; 1 action failed or instance running but not accepting; 2 usage or
configuration error; 3 not running; 4 data directory missing or unusable; 5 FAILED (the remediator
spent its restart budget; ``pgmedic resume instance NAME`` re-arms it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pwd
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__, actions
from .config import INSTANCE_KEYS, Config, InstanceConfig, build_instance, load_config
from .deployment import deployment_problems
from .errors import ConfigError, PgmedicError
from .instance import Instance
from .journal import open_journal
from .locks import instance_lock
from .managers import ManagerProblem
from .services import reload_service, running_services
from .signals import SIGNAL_STEP
from .states import EXIT_CODES, State
from .store import audit, write_instance_file
from .text import control_character, shown

CLASSES = ("instance", "app", "application")
EXIT_USAGE = 2
EXIT_FAILED = 5
WEB_CONFIG_HELP = "TLS and basic auth, exporter-toolkit format (default from config: web_config_file)"
ACTION_LOCK_WAIT = 10.0  # seconds a CLI start/stop waits for a remediation in progress


class UsageError(PgmedicError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgmedic",
        description="Keep PostgreSQL instances alive: config, start/stop/monitor, exporter, remediator.",
    )
    p.add_argument("--config", help="main config file (default $PGMEDIC_CONFIG or /etc/pgmedic/pgmedic.yaml)")
    p.add_argument(
        "-s", action="store_true", help="sync: tell the running exporter and remediator to reload after a change"
    )
    p.add_argument("-l", type=int, choices=range(4), default=1, metavar="{0,1,2,3}", help="log level")
    p.add_argument("--version", action="version", version=f"pgmedic {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help_text in (
        ("add", "add an instance: add instance NAME ATTR=VALUE…"),
        ("modify", "change attributes: modify instance NAME ATTR=VALUE… (ATTR= removes one)"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("cls", metavar="instance")
        s.add_argument("name")
        s.add_argument("attrs", nargs="*", metavar="ATTR=VALUE")
    for name, help_text in (
        ("delete", "remove an instance written by add"),
        ("suspend", "maintenance: the remediator takes no action on this instance"),
        ("resume", "end maintenance or a FAILED state; re-arms the restart budget"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("cls", metavar="instance")
        s.add_argument("name")
    s = sub.add_parser(
        "discover", help="list every PostgreSQL on this host; --add NAME… writes instance files that watch them"
    )
    s.add_argument(
        "words", nargs="*", metavar="configfile=PATH", help="also the data directories of a POSTGRESconfig.xml"
    )
    s.add_argument("--json", action="store_true")
    s.add_argument("--add", nargs="+", metavar="NAME", default=[], help="add these found instances (names as listed)")
    s = sub.add_parser("query", help="attributes and live state of one or all instances")
    s.add_argument("cls", metavar="instance")
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true")
    sub.add_parser("check-config", help="validate the configuration and every instance's XML")
    for name, help_text in (
        ("start", "start the instance as its owner (exit 0 started)"),
        ("stop", "stop: fast, then immediate, then SIGKILL (exit 0 stopped)"),
        ("monitor", "probe: 0 healthy, 1 not accepting, 3 not running, 4 no data directory, 5 FAILED"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("words", nargs="+", metavar="[instance] NAME")
    s = sub.add_parser("exporter", help="serve Prometheus metrics for every configured instance")
    s.add_argument("--listen", help="HOST:PORT (default from config, 127.0.0.1:9188)")
    s.add_argument("--web.config.file", dest="web_config_file", help=WEB_CONFIG_HELP)
    s = sub.add_parser("remediator", help="serve the Alertmanager webhook that repairs instances")
    s.add_argument("--listen", help="HOST:PORT (default from config, 127.0.0.1:9189)")
    s.add_argument("--web.config.file", dest="web_config_file", help=WEB_CONFIG_HELP)
    s = sub.add_parser(
        "assets", help="write the shipped rules, routing, Prometheus flags, runbooks and dashboards to DIR"
    )
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--force", action="store_true", help="overwrite files that exist")
    s = sub.add_parser("fleet", help="a fleet's Alertmanager routes and Prometheus targets from an inventory")
    s.add_argument("action", choices=["generate"], help="generate: write them (docs/fleet.md)")
    s.add_argument("inventory", metavar="INVENTORY", help="YAML: hosts with name and address (docs/fleet.md)")
    s.add_argument("dir", metavar="DIR", help="where alertmanager.yml and file_sd/*.json go")
    s = sub.add_parser("demo", help="the whole chain on a throwaway cluster: a drill and its incident timeline")
    s.add_argument("--drill", default="kill9", help="kill9 (default), sigstop, worker, exhaust, exporter")
    s.add_argument("--once", action="store_true", help="exit after the drill: 0 only if the outcome was seen")
    s.add_argument("--fast-path", action="store_true", help="with the remediator's fast path on (README)")
    return p


def _check_class(word: str) -> None:
    if word.lower() not in CLASSES:
        raise UsageError(f"unknown class {shown(word)}: expected instance (or app, application)")


def _parse_attrs(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected ATTR=VALUE, got {shown(pair)}")
        if key not in INSTANCE_KEYS:
            raise UsageError(f"unknown attribute {shown(key)} (known: {', '.join(INSTANCE_KEYS)})")
        if key in out:
            raise UsageError(f"attribute {shown(key)} given twice")
        out[key] = value
    return out


def _instance_file(config: Config, name: str) -> Path:
    return config.instances_dir / f"{name}.yaml"


def _writable_instance(config: Config, name: str) -> Path:
    """The instances.d file of NAME; instances in the hand-edited main file are not the CLI's to change."""
    inst = config.instance(name)
    path = _instance_file(config, name)
    if Path(inst.source) != path:
        raise UsageError(f"instance {shown(name)} is defined in {inst.source}; edit that file by hand")
    return path


def cmd_add(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    _add_instance(config, args.name, _parse_attrs(args.attrs), argv)
    return 0


def _add_instance(config: Config, name: str, attrs: dict[str, Any], argv: Sequence[str]) -> None:
    """Validate and write instances.d/NAME.yaml (``add`` and ``discover --add`` alike)."""
    if name in config.instances:
        raise UsageError(f"instance {shown(name)} already exists (in {config.instances[name].source}); use modify")
    path = _instance_file(config, name)
    inst = build_instance(name, attrs, "command line")
    write_instance_file(path, inst.attributes(), argv)
    print(f"added instance {name} ({inst.data_directory}) to {path}")
    _note_manager(inst)


def _note_manager(inst: InstanceConfig) -> None:
    """Say who will start and stop the instance, or that its configured manager is not here (check-config
    reports it too, and actions refuse until it is)."""
    try:
        print(f"manager: {Instance(inst).manager().describe()}")
    except ManagerProblem as exc:
        print(f"note: {exc}")


DISCOVER_COLUMNS = ("name", "version", "port", "socket_directory", "owner", "manager", "watched_as", "data_directory")


def cmd_discover(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .discover import discover

    configfiles = []
    for word in args.words:
        key, sep, value = word.partition("=")
        if key != "configfile" or not sep or not value.startswith("/"):
            raise UsageError(f"expected configfile=/PATH/POSTGRESconfig.xml, got {shown(word)}")
        configfiles.append(value)
    found = discover(config, configfiles)
    by_name = {f.name: f for f in found}
    if args.add:
        chosen = []
        for name in dict.fromkeys(args.add):
            if name not in by_name:
                raise UsageError(f"nothing found as {shown(name)} (found: {', '.join(by_name) or 'none'})")
            if by_name[name].watched_as:
                raise UsageError(
                    f"{name} ({by_name[name].data_directory}) is already watched as instance {by_name[name].watched_as}"
                )
            if by_name[name].owner is None:
                raise UsageError(f"{name}: the owner of {by_name[name].data_directory} is not an OS user here")
            chosen.append(by_name[name])
        for item in chosen:
            _add_instance(config, item.name, item.attributes(), argv)
        return 0
    if args.json:
        print(json.dumps([f.document() for f in found], indent=2))
        return 0
    if not found:
        print("no PostgreSQL found on this host (postgresql-common clusters, systemd units, running postmasters)")
        return 0
    rows = [
        [str(getattr(f, column) if getattr(f, column) is not None else "-") for column in DISCOVER_COLUMNS]
        for f in found
    ]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(DISCOVER_COLUMNS)]
    for row in [[c.upper() for c in DISCOVER_COLUMNS], *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print("\nadd one with `pgmedic discover --add NAME`; `pgmedic discover --json` gives how each manager was found")
    return 0


def cmd_modify(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    path = _writable_instance(config, args.name)
    changes = _parse_attrs(args.attrs)
    merged: dict[str, Any] = dict(config.instance(args.name).attributes())
    for key, value in changes.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    # configfile and data_directory exclude each other: setting one replaces the other.
    for given, other in (("configfile", "data_directory"), ("data_directory", "configfile")):
        if changes.get(given):
            merged.pop(other, None)
    inst = build_instance(args.name, merged, "command line")
    write_instance_file(path, inst.attributes(), argv)
    print(f"modified instance {args.name} in {path}")
    _note_manager(inst)
    return 0


def cmd_delete(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    path = _writable_instance(config, args.name)
    path.unlink()
    print(f"deleted instance {args.name} ({path})")
    return 0


def cmd_suspend_resume(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    config.instance(args.name)
    journal = open_journal(config.remediator.state_dir, group=config.remediator.state_group)
    assert journal is not None
    changed = journal.set_suspended(args.name, args.command == "suspend", invoking_user(), config.ksys.notifiers)
    verb = "suspended" if args.command == "suspend" else "resumed"
    print(f"instance {args.name} {verb}" + ("" if changed else " (it already was)"))
    return 0


def invoking_user() -> str:
    """Who runs this command: the sudo caller if any, else the login name, else the uid."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def describe(config: Config, name: str, live: bool = True) -> dict[str, Any]:
    """Attributes, live state and the remediator's view of one instance (for query and the status API)."""
    cfg = config.instance(name)
    instance = Instance(cfg)
    out: dict[str, Any] = {"name": name, **cfg.attributes(), "data_directory": cfg.data_directory}
    out["source"] = cfg.source
    try:
        manager = instance.manager()
        out["manager"], out["managed_by"] = str(manager.kind), manager.found
    except ManagerProblem as exc:
        out["manager"], out["managed_by"] = "unknown", str(exc)
    if live:
        probe = instance.probe()
        out["state"] = str(probe.state)
        out["detail"] = probe.detail
        if probe.postmaster is not None:
            out["postmaster_pid"] = probe.postmaster.pid
            out["postmaster_start_time"] = probe.postmaster.start_time
            out["pid_file_status"] = probe.pid_file.status if probe.pid_file else None
    journal = open_journal(config.remediator.state_dir, create=False, group=config.remediator.state_group)
    if journal is not None:
        st = journal.state(name)
        out["remediation"] = "FAILED" if st.failed else ("suspended" if st.suspended else "active")
        if st.failed:
            out["failed_reason"] = st.failed_reason
        last = journal.last_episode(name)
        if last:
            out["last_action"] = last
    else:
        out["remediation"] = "active"
    return out


def cmd_query(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    names = [args.name] if args.name else sorted(config.instances)
    for name in names:
        config.instance(name)
    rows = [describe(config, name) for name in names]
    if args.json:
        print(json.dumps(rows if not args.name else rows[0], indent=2, default=str))
        return 0
    if not rows:
        print(f"no instances configured in {config.path} or {config.instances_dir}")
    for row in rows:
        for key, value in row.items():
            if key == "postmaster_start_time":
                value = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(value))
            print(f"{key + ':':24}{value}")
        print()
    return 0


def cmd_check_config(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    problems = deployment_problems(config)
    for problem in problems:
        print(f"pgmedic: {config.path}: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    names = sorted(config.instances)
    if not names:
        print(f"{config.path}: valid, but no instances are configured (add one with `pgmedic add instance …`)")
    else:
        print(f"{config.path}: valid, {len(names)} instance(s): {', '.join(names)}")
    for name in names:
        print(f"  {name}: manager {Instance(config.instance(name)).manager().describe()}")
    return 0


def _action_target(config: Config, words: list[str]) -> Instance:
    if len(words) == 2:
        _check_class(words[0])
        words = words[1:]
    if len(words) != 1:
        raise UsageError("expected [instance] NAME")
    return Instance(config.instance(words[0]))


def cmd_action(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    instance = _action_target(config, args.words)
    if args.command == "monitor":
        result = actions.monitor(instance)
        journal = open_journal(config.remediator.state_dir, create=False, group=config.remediator.state_group)
        st = journal.state(instance.name) if journal else None
        if st is not None and st.failed_within(instance.config.restart_window):
            hint = f"after repair run `pgmedic resume instance {instance.name}`"
            print(f"{instance.name}: FAILED ({st.failed_reason}); {hint}")
            # A missing data directory keeps its own, more specific code while it lasts.
            return result.exit_code if result.exit_code == EXIT_CODES[State.NO_DATA_DIRECTORY] else EXIT_FAILED
        print(f"{instance.name}: {result.message}")
        return result.exit_code
    with _action_lock(config, instance.name) as held:
        if not held:
            print(f"{instance.name}: {args.command}: refused: the remediator is acting on it; try again shortly")
            return 1
        if args.command == "start":
            result = actions.start(instance)
        else:
            result = actions.stop(instance, f"pgmedic stop by {invoking_user()}")
    for step in result.steps:
        if not step.startswith(SIGNAL_STEP):  # those were logged as they were sent
            logging.info("%s", step)
    print(f"{instance.name}: {args.command}: {result.message} ({result.duration:.1f}s)")
    return result.exit_code


@contextlib.contextmanager
def _action_lock(config: Config, name: str) -> Iterator[bool]:
    """The instance's lock for a start or stop (waits up to ACTION_LOCK_WAIT for the remediator).

    Without access to the state directory (pgmedic run as the owner, say) the action goes ahead
    unlocked: PostgreSQL's own lock file still refuses a second postmaster.
    """
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(instance_lock(config.remediator.state_dir, name, timeout=ACTION_LOCK_WAIT))
        except (OSError, PgmedicError) as exc:
            logging.info("acting without the instance lock (%s)", exc)
            held = True
        yield held


def cmd_exporter(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pgmedic.exporter.server import serve

    return int(serve(config, args.listen, args.web_config_file))


def cmd_remediator(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from pgmedic.remediator.server import serve

    return int(serve(config, args.listen, args.web_config_file))


def cmd_assets(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .assets import write_assets

    target = Path(args.dir)
    written = write_assets(target, force=args.force)
    print(f"wrote {len(written)} files under {target}: alerts/ (rules, routing, prometheus.yml and .flags, promtool")
    print("tests), grafana/ (dashboards, provisioning), docs/ (runbooks); only ports, paths and the token change")
    return 0


def cmd_fleet(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .fleet import generate

    written = generate(args.inventory, args.dir)
    print(f"wrote {', '.join(str(p) for p in written)}: reload Alertmanager; Prometheus reads file_sd by itself")
    return 0


def cmd_demo(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .demo.run import run_demo

    return run_demo(args.drill, args.once, args.fast_path)


COMMANDS = {
    "add": cmd_add,
    "modify": cmd_modify,
    "delete": cmd_delete,
    "suspend": cmd_suspend_resume,
    "resume": cmd_suspend_resume,
    "query": cmd_query,
    "discover": cmd_discover,
    "check-config": cmd_check_config,
    "start": cmd_action,
    "stop": cmd_action,
    "monitor": cmd_action,
    "exporter": cmd_exporter,
    "remediator": cmd_remediator,
    "assets": cmd_assets,
    "fleet": cmd_fleet,
    "demo": cmd_demo,
}
AUDITED = ("add", "modify", "delete", "suspend", "resume")


def _audited(args: argparse.Namespace) -> bool:
    """Whether the command changes the configuration or the journal (then the audit log has it)."""
    return args.command in AUDITED or (args.command == "discover" and bool(args.add))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.INFO, logging.DEBUG)[args.l],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    full_argv = ["pgmedic", *argv]
    try:
        refuse_control_characters(argv)
        if hasattr(args, "cls"):
            _check_class(args.cls)
        config = load_config(args.config, required=args.command == "check-config" and bool(args.config))
        code = COMMANDS[args.command](config, args, full_argv)
        if _audited(args):
            audit(config.audit_log_path, full_argv, "ok", config.remediator.state_group)
            code = code or sync_services(config, args, full_argv)
        return code
    except (ConfigError, UsageError) as exc:
        print(f"pgmedic: {exc}", file=sys.stderr)
        _audit_failure(args, full_argv, str(exc))
        return EXIT_USAGE
    except PgmedicError as exc:
        print(f"pgmedic: {exc}", file=sys.stderr)
        _audit_failure(args, full_argv, str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def sync_services(config: Config, args: argparse.Namespace, argv: Sequence[str]) -> int:
    """With -s: make the running services reload, one line each (1 if any did not). Without: say that
    they still run the previous configuration (suspend and resume act through the journal at once)."""
    running = running_services(config)
    if not args.s:
        if running and args.command in ("add", "modify", "delete", "discover"):
            names = " and ".join(f"the {s.kind} (pid {s.pid})" for s in running)
            print(f"note: {names} still run the previous configuration: repeat with -s, or reload them (SIGHUP)")
        return 0
    if not running:
        print(f"sync: no running exporter or remediator uses {config.path}")
        return 0
    ok = True
    for service in running:
        reloaded, line = reload_service(service, f"pgmedic -s {args.command} by {invoking_user()}")
        print(f"sync: {line}")
        ok = ok and reloaded
    return 0 if ok else 1


def refuse_control_characters(argv: Sequence[str]) -> None:
    """No word of a command may hold a newline or another control character: such a value could forge a
    line of the audit log or of a YAML file, so the whole command is refused before anything is read."""
    for position, word in enumerate(argv, 1):
        found = control_character(word)
        if found:
            raise UsageError(f"argument {position} contains a control character ({found}): {shown(word)}")


def _audit_failure(args: argparse.Namespace, argv: list[str], why: str) -> None:
    """Refused changes are audited too, when the config can say where the log is."""
    if not _audited(args):
        return
    with contextlib.suppress(PgmedicError):
        config = load_config(args.config)
        audit(config.audit_log_path, argv, "refused: " + why, config.remediator.state_group)


if __name__ == "__main__":
    sys.exit(main())
