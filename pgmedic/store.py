"""Writes the CLI makes: one instance file per instance, written atomically, and the audit log."""

from __future__ import annotations

import getpass
import os
import shlex
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
    header = f"# Written by: {shlex.join(argv)}\n# Edit with `pgmedic modify instance {path.stem} ATTR=VALUE`.\n"
    write_atomic(path, header + yaml.safe_dump(attributes, sort_keys=False, default_flow_style=False))


def audit(log_path: str, argv: Sequence[str], outcome: str) -> None:
    """Append one line: when, who, the command and how it ended (as ksysvmmgr.log does)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.geteuid())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    line = f"{stamp} user={user} uid={os.geteuid()} pid={os.getpid()} outcome={outcome} cmd={shlex.join(argv)}\n"
    try:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(line)
    except OSError as exc:
        raise PgmedicError(f"{log_path}: cannot append to the audit log: {exc.strerror}") from None
