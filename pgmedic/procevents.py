"""Forks and exits from the kernel's process events connector, so a postmaster's children are known
without listing them every scrape.

Listing them (/proc/PID/task/PID/children) makes the kernel visit every child's task structure: with a
thousand clients that is the largest per-backend cost left in a scrape, and after an idle gap each of
those visits is a cold memory access. The connector instead queues one small message per fork and
exit on the host, and the exporter reads the queue at its next scrape. ``ChildSet`` keeps a
postmaster's children that way and lists them anew whenever it cannot be sure: at the first scrape,
when the postmaster changed, when the queue overflowed (the kernel says so: ENOBUFS), every
RELIST_EVERY scrapes regardless, and always when the connector cannot be had (it needs CAP_NET_ADMIN,
or a kernel without CONFIG_PROC_EVENTS): then it is the listing every time, as before.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

from . import procfs

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK, PROC_EVENT_EXIT = 0x1, 0x80000000
NLMSG_DONE = 3
HEADERS = 16 + 20  # nlmsghdr, cn_msg
EVENT = HEADERS + 16  # proc_event: what, cpu, timestamp; then the event's data
RECEIVE_BUFFER = 4 << 20  # bytes of queued events (each costs the socket about 1 KB of it) before overflow
RELIST_EVERY = 64  # scrapes between listings even when every event arrived


class ProcEvents:
    """A listening socket on the process events connector; OSError if the kernel or privileges refuse."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
        try:
            with contextlib.suppress(OSError):  # SO_RCVBUFFORCE: root may exceed rmem_max
                self.sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)
            self.sock.bind((0, CN_IDX_PROC))
            op = struct.pack("I", PROC_CN_MCAST_LISTEN)
            message = struct.pack("IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            self.sock.send(struct.pack("IHHII", 16 + len(message), NLMSG_DONE, 0, 0, 0) + message)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def drain(self) -> list[tuple[int, int]] | None:
        """The events queued since the last drain, in order: (parent, child) for a new process, (0, pid)
        for a process that exited; None if some were lost (the queue overflowed)."""
        events: list[tuple[int, int]] = []
        lost = False
        while True:
            try:
                data = self.sock.recv(256)
            except BlockingIOError:
                return None if lost else events
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # closed: the caller lists the children each time
                    return None
                lost = True  # the queue overflowed: keep reading, the caller lists the children anew
                continue
            if len(data) < EVENT + 8:
                continue
            (what,) = struct.unpack_from("I", data, HEADERS)
            if what == PROC_EVENT_FORK:
                _parent_pid, parent, child_pid, child = struct.unpack_from("4I", data, EVENT)
                if child_pid == child:  # a process, not a thread
                    events.append((parent, child))
            elif what == PROC_EVENT_EXIT:
                pid, tgid = struct.unpack_from("2I", data, EVENT)
                if pid == tgid:
                    events.append((0, pid))

    def close(self) -> None:
        self.sock.close()


def open_events() -> ProcEvents | None:
    """The connector, or None where it cannot be had (no privilege, no kernel support)."""
    try:
        return ProcEvents()
    except OSError:
        return None


class ChildSet:
    """A postmaster's direct children, kept from fork and exit events between listings (see above)."""

    def __init__(self, events: ProcEvents | None) -> None:
        self.events = events
        self._parent: int | None = None
        self._children: set[int] = set()
        self._since_listing = 0

    def of(self, parent: int) -> set[int]:
        """PARENT's children now (the caller reads the set, and changes it only through forget())."""
        queued = self.events.drain() if self.events is not None else None
        self._since_listing += 1
        if queued is None or parent != self._parent or self._since_listing >= RELIST_EVERY:
            # Events queued after the drain are applied next time (a fork or exit the listing already
            # shows changes nothing then); the exits drained here take out what the listing still
            # shows as a zombie, and a fork after such an exit (the pid reused) puts it back.
            self._parent, self._children, self._since_listing = parent, set(procfs.children(parent)), 0
        for forker, pid in queued or ():
            if forker == parent:
                self._children.add(pid)
            elif forker == 0:
                self._children.discard(pid)
        return self._children

    def forget(self, pid: int) -> None:
        """PID is not a child after all (it exited, or is another process's by now)."""
        self._children.discard(pid)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
