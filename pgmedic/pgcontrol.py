"""global/pg_control: how the server last left its data directory, readable while it is down.

A clean shutdown (smart or fast: ``pg_ctl stop``, ``systemctl stop``, ``pg_ctlcluster stop``, pgmedic's
own fast stop) ends with a shutdown checkpoint that sets the cluster state to "shut down" and stamps the
file with the time; a crash, ``kill -9`` or an immediate shutdown leaves "in production" (or a recovery
state). That is how pgmedic tells an administrator's stop from a failure without any log: it is the
server's own record. The first fields of ControlFileData have kept their place since PostgreSQL 9.x
(system identifier, pg_control version, catalog version, state, time), written in the host's byte order.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

PG_CONTROL = os.path.join("global", "pg_control")
_HEAD = struct.Struct("=QIIi4xq")  # system_identifier, pg_control_version, catalog_version_no, state, time


class ClusterState(enum.IntEnum):
    """DBState of pg_control.h."""

    STARTUP = 0
    SHUT_DOWN = 1
    SHUT_DOWN_IN_RECOVERY = 2
    SHUTTING_DOWN = 3
    IN_CRASH_RECOVERY = 4
    IN_ARCHIVE_RECOVERY = 5
    IN_PRODUCTION = 6


CLEAN = frozenset({ClusterState.SHUT_DOWN, ClusterState.SHUT_DOWN_IN_RECOVERY})


@dataclass(frozen=True)
class ControlState:
    state: ClusterState
    time: int  # when pg_control was last written (the shutdown checkpoint's time after a clean stop)

    @property
    def shut_down_cleanly(self) -> bool:
        return self.state in CLEAN


def read_control_state(data_directory: str) -> ControlState | None:
    """The state and time pg_control holds, or None when it cannot be read or makes no sense."""
    try:
        with open(os.path.join(data_directory, PG_CONTROL), "rb") as f:
            head = f.read(_HEAD.size)
    except OSError:
        return None
    if len(head) < _HEAD.size:
        return None
    _, version, _, state, stamp = _HEAD.unpack(head)
    if not 900 <= version < 10_000:  # not a pg_control of a version pgmedic knows (or the other byte order)
        return None
    try:
        return ControlState(ClusterState(state), stamp)
    except ValueError:
        return None
