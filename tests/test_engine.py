"""The remediator's decisions in-process, fast: budget, backoff, dedupe, recheck and FAILED, with a
scripted instance in place of PostgreSQL and a real journal in a temp directory. The same behaviour
is proven on real clusters in test_remediator.py; these run in seconds for the inner loop."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pgmedic.remediator.engine import Engine
from pgmedic.remediator.metrics import RemediatorMetrics
from pgmedic.remediator.payload import parse_payload

from pgmedic.actions import ActionResult
from pgmedic.config import Config, InstanceConfig, RemediatorConfig
from pgmedic.instance import Identity, Probe, Verdict
from pgmedic.journal import Journal
from pgmedic.managers import Evidence, Manager, ManagerKind
from pgmedic.states import Reason, State
from tests.harness import alert_payload

pytestmark = pytest.mark.fast


@dataclass
class Scripted:
    """An instance whose state the test sets; its actions succeed or fail as told."""

    config: InstanceConfig
    up: bool = True
    start_works: bool = True
    actions: list[tuple[float, str]] = field(default_factory=list)  # (end time, action)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.config.name

    def probe(self, timeout: float | None = None) -> Probe:
        if self.up:
            return Probe(State.ACCEPTING, Reason.ACCEPTING, "scripted: accepting")
        return Probe(State.NOT_RUNNING, Reason.NO_PID_FILE, "scripted: not running")

    def identify(self, pid_file: Any = None) -> Identity:
        return Identity(Verdict.VERIFIED if self.up else Verdict.NO_PID_FILE, "scripted")

    def pid_file(self) -> None:
        return None

    def manager(self, max_age: float = 0.0) -> Manager:
        return Manager(ManagerKind.PG_CTL, "scripted", Evidence.NOTHING_ELSE)

    def clean_stop(self, after: float = 0.0) -> None:
        return None  # every stop of a scripted instance is a crash

    def act(self, action: str) -> ActionResult:
        with self.lock:
            self.up = self.start_works
            self.actions.append((time.time(), action))
        return ActionResult(action, self.start_works, "scripted")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Any]:
    made: list[Engine] = []

    def build(**instance: Any) -> tuple[Engine, Scripted]:
        cfg = InstanceConfig(
            "main", "postgres", "postgres", "/nonexistent", "test",
            **{"restart_delay": 0.05, "max_restart": 3, "critical": True, **instance},
        )  # fmt: skip
        config = Config(
            str(tmp_path / "pgmedic.yaml"), {"main": cfg},
            remediator=RemediatorConfig(state_dir=str(tmp_path / "state"), recovery_watch=0.0),
        )  # fmt: skip
        scripted = Scripted(cfg)
        engine = Engine(
            config, Journal(config.remediator.state_dir), RemediatorMetrics(["main"]),
            instance_for=lambda _cfg: scripted,  # type: ignore[arg-type,return-value]
            run_action=lambda _inst, action, _why: scripted.act(action),
        )  # fmt: skip
        engine.start()
        made.append(engine)
        return engine, scripted

    try:
        yield build
    finally:
        for engine in made:
            engine.stop()


def deliver(engine: Engine, **kwargs: Any) -> list[dict[str, Any]]:
    import json

    return engine.decide(
        parse_payload(json.dumps(alert_payload("PostgresPostmasterDown", "main", **kwargs)).encode()), "test"
    )


def kinds(engine: Engine) -> Counter[str]:
    return Counter(e["kind"] for e in engine.journal.events(limit=10000))


def wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_episode_is_acted_on_once_however_often_delivered(rig: Any) -> None:
    engine, inst = rig()
    inst.up = False
    starts = "2026-11-28T10:00:00.000Z"
    results = [deliver(engine, starts_at=starts)[0]["result"] for _ in range(20)]
    wait(lambda: kinds(engine)["episode_done"] == 1 and not engine.journal.open_episodes("main"))
    assert results[0] == "accepted" and set(results[1:]) <= {"duplicate", "recheck"}
    assert [a for _, a in inst.actions] == ["start"]
    assert deliver(engine, starts_at=starts)[0]["result"] == "recheck", "ended episode + still firing: re-probe"
    wait(lambda: kinds(engine)["skipped"] >= 1)
    assert len(inst.actions) == 1, "a healthy instance's re-delivered alert causes nothing"


def test_the_budget_is_spent_with_backoff_from_the_end_of_each_attempt_then_failed_once(rig: Any) -> None:
    engine, inst = rig(restart_delay=0.2, max_restart=3)
    inst.up, inst.start_works = False, False
    deliver(engine)
    wait(lambda: kinds(engine)["episode_failed"] == 1)
    ends = [t for t, _ in inst.actions]
    assert len(ends) == 3
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, f"backoff doubles from restart_delay: {gaps}"
    k = kinds(engine)
    assert k["failed"] == 1 and k["escalated"] == 1 and k["restart_started"] == 3
    assert engine.journal.state("main").failed
    # Another failure while FAILED: recorded, nothing done, no second escalation.
    deliver(engine, fingerprint="another")
    wait(lambda: kinds(engine)["episode_skipped"] == 1)
    assert len(inst.actions) == 3 and kinds(engine)["escalated"] == 1
    assert engine.snapshot()["main"] == ("failed", 0)
    # resume re-arms the budget
    engine.journal.set_suspended("main", False, "test")
    inst.start_works = True
    deliver(engine, fingerprint="third")
    wait(lambda: kinds(engine)["episode_done"] == 1)
    assert engine.snapshot()["main"] == ("ok", 2)


def test_a_suspended_instance_gets_no_action(rig: Any) -> None:
    engine, inst = rig()
    engine.journal.set_suspended("main", True, "test")
    inst.up = False
    deliver(engine)
    wait(lambda: kinds(engine)["episode_skipped"] == 1)
    assert inst.actions == []


def test_resolved_and_unknown_alerts_are_journaled_and_ignored(rig: Any) -> None:
    engine, inst = rig()
    inst.up = False
    assert deliver(engine, status="resolved")[0]["result"] == "ignored"
    import json

    other = alert_payload("PostgresPostmasterDown", "nosuch")
    assert engine.decide(parse_payload(json.dumps(other).encode()), "test")[0]["reason"] == "not a configured instance"
    time.sleep(0.2)
    assert inst.actions == [] and kinds(engine)["notification"] == 2
