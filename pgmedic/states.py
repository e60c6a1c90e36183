"""What a probe can say about an instance: its state, and why, as enums that decisions read.

Decisions (the remediator's, `monitor`'s exit code) read these, never the probe's message text, so
rewording a message can never change what pgmedic does.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    ACCEPTING = "accepting"
    REJECTING = "rejecting"
    NOT_RESPONDING = "not_responding"
    NOT_RUNNING = "not_running"
    NO_DATA_DIRECTORY = "no_data_directory"
    UNVERIFIED = "unverified"  # /proc could not be read to tell whose process the pid file names


class Would(enum.StrEnum):
    """What the remediator in observe mode journals instead of doing (its event: `would_<this>`)."""

    START = "start"
    RESTART = "restart"
    ESCALATE = "escalate"


# Exit codes of `pgmedic monitor`, shared with any supervisor that calls it as a monitor script.
EXIT_CODES = {
    State.ACCEPTING: 0,
    State.REJECTING: 1,
    State.NOT_RESPONDING: 1,
    State.NOT_RUNNING: 3,
    State.NO_DATA_DIRECTORY: 4,
    State.UNVERIFIED: 2,  # a deployment problem: pgmedic runs as neither root nor the owner
}


class Reason(enum.StrEnum):
    """Why the probe says what it says."""

    ACCEPTING = "accepting"
    LOGIN_REFUSED = "login_refused"  # accepting: the server answered and refused pgmedic's role (pg_hba, peer)
    NO_DATA_DIRECTORY = "no_data_directory"
    NO_PID_FILE = "no_pid_file"
    STALE_PID_FILE = "stale_pid_file"  # names no postmaster of this data directory
    UNVERIFIABLE = "unverifiable"  # /proc not readable to check the pid file
    STARTING = "starting"
    STOPPING = "stopping"
    RECOVERING = "recovering"
    FULL = "full"  # every connection slot taken: alive, never a restart case
    HUNG = "hung"  # no answer to SQL within the timeout
    SQL_ERROR = "sql_error"  # up, but the probe's SQL failed otherwise
    EXITED = "exited"  # the postmaster exited while being probed
