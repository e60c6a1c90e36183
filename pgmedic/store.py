"""Writes the CLI makes: one instance file per instance, written atomically, and the audit log."""

from __future__ import annotations

import getpass
import grp
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import PgmedicError


def write_atomic(path: Path, text: str, mode: int = 0o640) -> None:
    """Write TEXT to PATH so that readers see the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_instance_file(path: Path, attributes: dict[str, Any], argv: Sequence[str]) -> None:
    """Write one instance's attributes as YAML made by the YAML library.

    The header records the command as a JSON array (ASCII-only, every control character escaped), so
    no value can end the comment line and inject YAML after it.
    """
    command = json.dumps(list(argv), ensure_ascii=True)
    header = f"# Written by: {command}\n# Edit with `pgmedic modify instance {path.stem} ATTR=VALUE`.\n"
    write_atomic(path, header + yaml.safe_dump(attributes, sort_keys=False, default_flow_style=False))


def audit(log_path: str, argv: Sequence[str], outcome: str, group: str | None = None) -> None:
    """Append one JSON object per line: when, who, the command and how it ended.

    JSON escapes every control character, so no value can forge a line. The file is created 0600
    (0640 with the state group) whatever the umask.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.geteuid())
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "user": user,
        "uid": os.geteuid(),
        "pid": os.getpid(),
        "argv": list(argv),
        "result": outcome,
    }
    line = json.dumps(entry, ensure_ascii=True) + "\n"
    try:
        Path(log_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = open_private(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, group)
        with os.fdopen(fd, "a") as f:
            f.write(line)
    except OSError as exc:
        raise PgmedicError(f"{log_path}: cannot append to the audit log: {exc.strerror}") from None


def private_mode(group: str | None) -> int:
    """The mode of pgmedic's own files: 0600, or 0640 when a state group may read them."""
    return 0o640 if group else 0o600


def open_private(path: str, flags: int, group: str | None = None) -> int:
    """Open (creating) PATH and make it 0600 (0640 and the group's with GROUP), whatever the umask.

    Only a file pgmedic's own user owns is changed; it is never loosened, only set to exactly this mode.
    """
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, private_mode(group))
    try:
        make_private(fd, group)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private(fd_or_path: int | str, group: str | None = None) -> None:
    """Set an existing file (descriptor or path) of ours to pgmedic's private mode."""
    info = os.stat(fd_or_path)
    if info.st_uid != os.geteuid():
        return
    if group:
        gid = grp.getgrnam(group).gr_gid
        if info.st_gid != gid:
            os.chown(fd_or_path, -1, gid)
    if info.st_mode & 0o777 != private_mode(group):
        os.chmod(fd_or_path, private_mode(group))
