"""What a configuration that loads can still get wrong on this host: files pgmedic must not trust.

``check-config`` reports every problem (one line each, exit 2); the remediator refuses to start on a
bad token file or state directory and logs the rest; each action refuses its own untrusted script.
"""

from __future__ import annotations

from .config import Config
from .instance import Instance
from .managers import ManagerProblem
from .trust import private_dir_problem, program_problem, secret_file_problem


def deployment_problems(config: Config) -> list[str]:
    """One line per problem: untrusted scripts and KSYS command, a configured manager this host does not
    have for the instance, a loose token file or state directory."""
    problems = []
    for name, cfg in sorted(config.instances.items()):
        for key, path in cfg.scripts().items():
            problem = program_problem(path, cfg.script_user)
            if problem:
                problems.append(f"instances.{name}.{key}: {problem}")
        try:
            Instance(cfg).manager()
        except ManagerProblem as exc:
            problems.append(f"instances.{name}.manager: {exc}")
    if config.ksys.command:
        problem = program_problem(config.ksys.command[0], config.ksys.command_user)
        if problem:
            problems.append(f"ksys.command: {problem}")
    if config.remediator.token_file:
        problem = secret_file_problem(config.remediator.token_file)
        if problem:
            problems.append(f"remediator.token_file: {problem}")
    problem = private_dir_problem(config.remediator.state_dir)
    if problem:
        problems.append(f"remediator.state_dir: {problem}")
    return problems
