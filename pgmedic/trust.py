"""Which files pgmedic may execute or trust with secrets: sshd's StrictModes and sudo's rules, for pgmedic.

pgmedic runs as root. A program it runs is only as safe as the least trusted account that can change
it: a start_script that the PostgreSQL owner can write lets any database superuser (``COPY … TO
PROGRAM`` writes files as that owner) run code as whoever runs the script. So a program runs only if
the file and every directory above it (of the path as given and of its real path, through symlinks)
are owned by root or by the user it will run as, and none of them is writable by group or others.
"""

from __future__ import annotations

import os
import pwd
import stat

from .errors import PgmedicError


class UntrustedError(PgmedicError):
    """A file pgmedic was asked to run or read a secret from fails the ownership and mode rules."""


def _ancestors(path: str) -> list[str]:
    """PATH and every directory above it, up to /."""
    out = [path]
    while path != "/":
        path = os.path.dirname(path)
        out.append(path)
    return out


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def program_problem(path: str, run_as: str) -> str | None:
    """Why PATH must not be run as user RUN_AS (one line, naming the offending path), or None."""
    if not os.path.isabs(path):
        return f"{path}: must be an absolute path"
    try:
        allowed = {0, pwd.getpwnam(run_as).pw_uid}
    except KeyError:
        return f"{path}: it would run as {run_as!r}, which is not an OS user here"
    real = os.path.realpath(path)
    try:
        info = os.stat(real)
    except OSError as exc:
        return f"{path}: {exc.strerror.lower() if exc.strerror else exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path}: not a regular file"
    if not info.st_mode & 0o111:
        return f"{path}: not executable (chmod +x)"
    owners = " or ".join(dict.fromkeys(["root", run_as]))
    # The path as given (its directories decide who can swap a symlink) and the real one.
    for candidate in dict.fromkeys([real, *_ancestors(os.path.dirname(os.path.abspath(path))), *_ancestors(real)]):
        try:
            info = os.stat(candidate)
        except OSError as exc:
            return f"{path}: cannot check {candidate}: {exc.strerror}"
        if info.st_uid not in allowed:
            return f"{path}: refused: {candidate} is owned by {_user(info.st_uid)}, not {owners}"
        if info.st_mode & stat.S_IWOTH:
            return f"{path}: refused: {candidate} is writable by everyone"
        if info.st_mode & stat.S_IWGRP:
            return f"{path}: refused: {candidate} is writable by its group"
    return None


def check_program(path: str, run_as: str) -> None:
    """Raise UntrustedError unless PATH may run as RUN_AS (see ``program_problem``)."""
    problem = program_problem(path, run_as)
    if problem:
        raise UntrustedError(problem)


def secret_file_problem(path: str) -> str | None:
    """Why PATH cannot hold a secret (a token): not a file, readable or writable by others, or empty."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{path}: file does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if stat.S_ISDIR(info.st_mode):
        return f"{path}: is a directory, expected a file holding the token"
    if not stat.S_ISREG(info.st_mode):
        return f"{path}: not a regular file"
    if info.st_mode & 0o077:
        return f"{path}: refused: mode {info.st_mode & 0o777:04o} lets group or others read it (chmod 600)"
    if info.st_size == 0:
        return f"{path}: file is empty"
    return None


def private_dir_problem(path: str) -> str | None:
    """Why PATH cannot be pgmedic's state directory (group- or world-writable), or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None  # created private
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path}: not a directory"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path}: refused: mode {info.st_mode & 0o7777:04o} lets group or others write it (chmod 700)"
    return None
