"""The children of a process from the kernel's fork and exit events (pgmedic.procevents), on real
processes: a child started and one reaped show without a listing; lost events or another parent list
anew; and a tracker takes a pid from events only if it is the postmaster's child."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from pgmedic.exporter.tracker import ProcessTracker

from pgmedic import procfs
from pgmedic.procevents import RELIST_EVERY, ChildSet, open_events


def _events_or_fail() -> ChildSet:
    events = open_events()
    if events is None:
        pytest.fail(
            "the process events connector is unavailable: run the tests as root on a kernel with CONFIG_PROC_EVENTS"
        )
    return ChildSet(events)


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_children_follow_forks_and_exits_without_listing() -> None:
    children = _events_or_fail()
    me = os.getpid()
    first = _sleeper()
    started = [first]
    try:
        assert first.pid in children.of(me)  # the first call lists
        listed = children._since_listing
        second = _sleeper()
        started.append(second)
        time.sleep(0.1)
        assert {first.pid, second.pid} <= children.of(me)
        first.kill()
        first.wait()
        time.sleep(0.1)
        now = children.of(me)
        assert second.pid in now and first.pid not in now
        assert children._since_listing == listed + 2, "known from the events, not from a listing"
        assert now == set(procfs.children(me)), "and the same as a listing says"
    finally:
        for p in started:
            p.kill()
            p.wait()
        children.close()


def test_another_parent_or_lost_events_list_anew() -> None:
    children = _events_or_fail()
    try:
        children.of(os.getpid())
        children.of(os.getpid())
        assert children._since_listing == 1
        children.of(os.getppid())
        assert children._since_listing == 0, "another parent: listed"
        for _ in range(RELIST_EVERY):
            children.of(os.getppid())
        assert children._since_listing < RELIST_EVERY, "listed again after RELIST_EVERY calls"
    finally:
        children.close()
    unprivileged = ChildSet(None)  # no connector (no CAP_NET_ADMIN): a listing every time
    child = _sleeper()
    try:
        assert child.pid in unprivileged.of(os.getpid())
        assert unprivileged._since_listing == 0
    finally:
        child.kill()
        child.wait()


def test_a_pid_from_events_is_taken_only_as_the_parents_child() -> None:
    tracker = ProcessTracker()
    child = _sleeper()
    try:
        tracker.walk(os.getpid())
        assert child.pid in tracker.children._children  # a child, though untyped (not a PostgreSQL title)
        stranger = os.getppid()  # alive, but not this process's child: as if its pid had been reused
        tracker.children._children.add(stranger)
        live, _ = tracker.walk(os.getpid())
        assert stranger not in {p.pid for p in live}
        assert stranger not in tracker.children._children, "forgotten at once"
    finally:
        child.kill()
        child.wait()
        tracker.close()
