"""Why a start failed, in the server's own words, and the class of the failure that decisions read.

``pg_ctl start`` only says "could not start server; Examine the log output". The reason is in the
server log: the ``-l`` file pg_ctl hands the postmaster's stderr to (everything before the logging
collector runs, which covers bind, lock-file and configuration errors) and, once it runs, the
collector's current file (named by ``current_logfiles``). `LogMark` remembers where both ended before
the start; `reasons` reads only what was written since, bounded, and keeps the FATAL and PANIC lines
plus the LOG lines that carry the real cause of a generic FATAL ("could not bind …: Address already in
use" before "could not create any TCP/IP sockets").

The log files belong to the instance's owner, and pgmedic may be root: they are opened without
following symlinks and read only if they are regular files owned by the data directory's owner.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import stat
from dataclasses import dataclass, field

from .text import CONTROL_RE


class Failure(enum.StrEnum):
    """The class of a failed start (a field of its journal event, a label of pgmedic_actions_total)."""

    NONE = "none"  # not a failure
    PORT_IN_USE = "port_in_use"
    PID_FILE_CONFLICT = "pid_file_conflict"  # another (or an old) server holds the data directory
    DATA_DIRECTORY_MISSING = "data_directory_missing"
    PERMISSION_DENIED = "permission_denied"
    CONFIG_ERROR = "config_error"
    DISK_FULL = "disk_full"  # the server cannot write its WAL or files: it will not start until space is freed
    TIMEOUT = "timeout"
    # Not the server's failure: an administrator stopped it cleanly while the start or its wait was under
    # way (a shutdown request in its log since the start). The decision is theirs: never retried.
    STOPPED_BY_ADMINISTRATOR = "stopped_by_administrator"
    OTHER = "other"


# Failures a retry cannot cure: no restart budget is spent on them, the episode fails at once. A full
# disk is one: each start replays WAL, needs a new segment and dies again until a human frees space.
NOT_RETRIED = frozenset(
    {Failure.DATA_DIRECTORY_MISSING, Failure.PERMISSION_DENIED, Failure.CONFIG_ERROR, Failure.DISK_FULL}
)

# First match wins, over the reasons and pg_ctl's output together.
_CLASSES: tuple[tuple[Failure, re.Pattern[str]], ...] = tuple(
    (failure, re.compile(pattern, re.IGNORECASE))
    for failure, pattern in (
        # Before PERMISSION_DENIED: an unreadable configuration file is the configuration's problem.
        (Failure.CONFIG_ERROR, r"could not access the server configuration file|does not know where to find the server"
         r" configuration file|could not open configuration file|Cluster is disabled"),
        (Failure.DATA_DIRECTORY_MISSING, r'data directory "[^"]*" does not exist|directory "[^"]*" does not exist'
         r"|is not a database cluster directory|could not find the database system|no PG_VERSION"),
        (Failure.PERMISSION_DENIED, r"has invalid permissions|has wrong ownership|permission denied"),
        (Failure.PID_FILE_CONFLICT, r'lock file "postmaster\.pid" already exists|pre-existing shared memory block'
         r"|postmaster\.pid names pid|is another postmaster \(PID \d+\) running in data directory"),
        (Failure.PORT_IN_USE, r"address already in use|could not create any TCP/IP sockets"
         r'|lock file "[^"]*\.s\.PGSQL\.\d+\.lock" already exists'),
        (Failure.CONFIG_ERROR, r"configuration file .* contains errors|invalid value for parameter"
         r"|unrecognized configuration parameter|syntax error in file|could not load library"
         r"|parameter \"[^\"]*\" cannot be|invalid configuration|must be (less|greater) than|exceeds"),
        (Failure.DISK_FULL, r"no space left on device|disk quota exceeded"),
        (Failure.TIMEOUT, r"server did not start in time|timed out"),
    )
)  # fmt: skip

_SEVERITY = re.compile(r"\b(FATAL|PANIC|LOG|ERROR):\s+(.*)$")
_CAUSES = re.compile(
    r"could not bind|syntax error in file|invalid value for parameter|unrecognized configuration"
    r"|could not open configuration file"
)
# What the server writes to stderr before its logging is set up (the -l file, or a command's output):
# "postgres: could not access the server configuration file …", without a severity.
_EARLY = re.compile(
    r"^(?:postgres|postmaster): (.+)$|^(postgres does not know where to find .+)$"
    r"|^Error: (?!.*exited with status)(.+)$"  # pg_ctlcluster's own refusals ("Error: Cluster is disabled")
)
# Lines a client connection writes while the server starts: never the reason a start failed. Known by the
# message (PostgreSQL's own texts for a refused connection) or by a user@database in the line's prefix.
_CLIENT_MESSAGE = re.compile(
    r"the database system is (?:starting up|shutting down|in recovery mode|not yet accepting connections"
    r"|not accepting connections)|^role \"[^\"]*\" does not exist|^database \"[^\"]*\" does not exist"
    r"|authentication failed for user|no pg_hba\.conf entry|pg_hba\.conf rejects connection|too many clients"
    r"|remaining connection slots are reserved|is not permitted to log in|too many connections for"
    r"|canceling authentication due to timeout|terminating connection due to administrator command"
    r"|^connection to client lost|^could not receive data from client"
)
_CLIENT_PREFIX = re.compile(r"(?:^|\s)\S*[^\s@\[]@\S+\s*$")  # %u@%d of Debian's log_line_prefix, before the severity
_SHUTDOWN_REQUEST = re.compile(r"received (smart|fast|immediate) shutdown request")
READ_LIMIT = 65_536  # bytes of new log read per file
REASONS_KEPT = 3
REASON_CHARS = 300


def one_line(text: str) -> str:
    """TEXT with control characters blanked, cut to REASON_CHARS: a log line may hold anything."""
    text = CONTROL_RE.sub(" ", text)
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def server_reasons(lines: list[str]) -> list[str]:
    """The lines of LINES that say why a start failed (see ``LogMark.reasons``), the last few, unique."""
    found: list[str] = []
    for line in lines:
        early = _EARLY.match(line.strip())
        if early:
            found.append(one_line(next(group for group in early.groups() if group)))
            continue
        match = _SEVERITY.search(line)
        if not match:
            continue
        severity, message = match.group(1), match.group(2).strip()
        if _from_client(line, match):
            continue
        if severity in ("FATAL", "PANIC") or _CAUSES.search(message):
            found.append(one_line(f"{severity}: {message}"))
    # The last ones matter (an earlier failed attempt may share the file); duplicates say nothing new.
    return list(dict.fromkeys(found))[-REASONS_KEPT:]


def _from_client(line: str, match: re.Match[str]) -> bool:
    """Whether LINE (whose severity MATCH found) was written by a client connection, not the server."""
    return bool(_CLIENT_MESSAGE.search(match.group(2).strip()) or _CLIENT_PREFIX.search(line[: match.start()]))


def without_client_lines(text: str) -> str:
    """TEXT (a command's output) less the lines client connections wrote (see ``server_reasons``)."""
    kept = []
    for line in text.splitlines():
        match = _SEVERITY.search(line)
        if match is None or not _from_client(line, match):
            kept.append(line)
    return "\n".join(kept)


def classify(texts: list[str]) -> Failure:
    joined = "\n".join(texts)
    for failure, pattern in _CLASSES:
        if pattern.search(joined):
            return failure
    return Failure.OTHER


@dataclass
class LogMark:
    """Where the server's log files ended before a start."""

    data_directory: str
    stderr_file: str
    owner_uid: int | None
    ends: dict[str, int] = field(default_factory=dict)

    @classmethod
    def take(cls, data_directory: str, stderr_file: str) -> LogMark:
        try:
            uid: int | None = os.stat(data_directory).st_uid
        except OSError:
            uid = None
        mark = cls(data_directory, stderr_file, uid)
        for path in mark.files():
            mark.ends[path] = _size(path)
        return mark

    def files(self) -> list[str]:
        """The -l file and the logging collector's current file(s), as they are now."""
        out = [self.stderr_file]
        text = self._read(os.path.join(self.data_directory, "current_logfiles"), 0, 4096)
        for line in text.splitlines():
            _, _, rel = line.partition(" ")
            if rel and "\0" not in rel:
                path = rel if os.path.isabs(rel) else os.path.join(self.data_directory, rel)
                out.append(path)
        return list(dict.fromkeys(out))

    def new_lines(self) -> list[str]:
        """Every line written to the log files since the mark (bounded per file)."""
        return [
            line for path in self.files() for line in self._read(path, self.ends.get(path, 0), READ_LIMIT).splitlines()
        ]

    def reasons(self, output: str = "") -> list[str]:
        """Why the server would not start, one line each, bounded: the FATAL/PANIC lines (and their causes)
        and what it printed before its logging started, written since the mark or in OUTPUT (the start
        command's own output); never a client connection's lines."""
        return server_reasons([*self.new_lines(), *output.splitlines()])

    def shutdown_requested(self) -> str | None:
        """The server's "received … shutdown request" line since the mark: someone stopped it."""
        for line in reversed(self.new_lines()):
            match = _SHUTDOWN_REQUEST.search(line)
            if match:
                return f"received {match.group(1)} shutdown request"
        return None

    def _read(self, path: str, start: int, limit: int) -> str:
        """Up to LIMIT bytes of PATH from START (or its last LIMIT bytes if it shrank or grew more):
        only a regular file of the owner, never through a symlink."""
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode) or (self.owner_uid is not None and st.st_uid != self.owner_uid):
                    return ""
                if start > st.st_size:
                    start = 0  # rotated or truncated: all of it is new
                f.seek(max(start, st.st_size - limit))
                return f.read(limit).decode("utf-8", errors="replace")
        return ""


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
