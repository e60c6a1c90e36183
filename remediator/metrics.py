"""The remediator's own metrics, in a registry per app (no globals), plus state read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from pgmedic.config import Mode
from pgmedic.failures import Failure
from pgmedic.reload import ConfigStatus
from pgmedic.states import Would

NOTIFICATION_RESULTS = ("accepted", "duplicate", "recheck", "ignored", "rejected")
KSYS_RESULTS = ("delivered", "failed")
INSTANCE_STATES = ("ok", "acting", "suspended", "failed")
RECOVERY_BUCKETS = (0.5, 1, 1.5, 2, 2.5, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)


class RemediatorMetrics:
    def __init__(self, instances: list[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.notifications = Counter(
            "pgmedic_notifications", "Alerts received, by what was decided.", ["result"], registry=self.registry
        )
        self.actions = Counter(
            "pgmedic_actions",
            "Remediation actions by instance, action (start, restart), result (ok, failed, skipped) and the class "
            f"of a failure ({', '.join(f for f in Failure if f is not Failure.NONE)}; none otherwise).",
            ["pg_instance", "action", "result", "failure"],
            registry=self.registry,
        )
        self.action_duration = Histogram(
            "pgmedic_action_duration_seconds",
            "How long start/restart actions took (stop escalation included).",
            ["action"],
            buckets=RECOVERY_BUCKETS,
            registry=self.registry,
        )
        self.recovery = Histogram(
            "pgmedic_recovery_seconds",
            "Time until the instance accepted connections again, since the alert started, since the webhook, "
            "or (fast_path) since the fast path saw the crash.",
            ["pg_instance", "since"],
            buckets=RECOVERY_BUCKETS,
            registry=self.registry,
        )
        self.observed = Counter(
            "pgmedic_remediator_observed",
            "Decisions observe mode journaled instead of acting on, by what would have been done.",
            ["pg_instance", "would"],
            registry=self.registry,
        )
        self.ksys = Counter(
            "pgmedic_ksys_notifications", "Deliveries of events to KSYS notifiers.", ["result"], registry=self.registry
        )
        for result in NOTIFICATION_RESULTS:
            self.notifications.labels(result)
        for result in KSYS_RESULTS:
            self.ksys.labels(result)
        self.add_instances(instances)

    def add_instances(self, instances: list[str]) -> None:
        """Make each instance's action series exist at 0 (also for instances added by a reload)."""
        for name in instances:
            for action in ("start", "restart"):
                self.actions.labels(name, action, "ok", Failure.NONE)
                for failure in Failure:
                    if failure is not Failure.NONE:
                        self.actions.labels(name, action, "failed", failure)
            for would in Would:
                self.observed.labels(name, would)

    def add_config_collector(self, status: ConfigStatus) -> None:
        """pgmedic_config_last_reload_successful and ..._success_timestamp_seconds, read at scrape time."""
        self.registry.register(_ConfigCollector(status))

    def add_state_collector(
        self, read: Callable[[], dict[str, tuple[str, int]]], modes: Callable[[], dict[str, Mode]]
    ) -> None:
        """READ returns {instance: (state, budget_remaining)} fresh at each scrape, MODES {instance: mode}."""
        self.registry.register(_StateCollector(read, modes))


class _ConfigCollector:
    def __init__(self, status: ConfigStatus) -> None:
        self._status = status

    def describe(self) -> Iterator[Metric]:
        """Names only: registering must not collect."""
        yield GaugeMetricFamily("pgmedic_config_last_reload_successful", "")
        yield GaugeMetricFamily("pgmedic_config_last_reload_success_timestamp_seconds", "")

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "pgmedic_config_last_reload_successful",
            "1 when the last configuration reload (SIGHUP) succeeded.",
            value=1 if self._status.last_reload_ok else 0,
        )
        yield GaugeMetricFamily(
            "pgmedic_config_last_reload_success_timestamp_seconds",
            "Unix time the configuration in force was loaded (at start or by the last successful reload).",
            value=self._status.loaded_at,
        )


class _StateCollector:
    def __init__(self, read: Callable[[], dict[str, tuple[str, int]]], modes: Callable[[], dict[str, Mode]]) -> None:
        self._read = read
        self._modes = modes

    def describe(self) -> Iterator[Metric]:
        """Names only: registering must not read the journal."""
        yield GaugeMetricFamily("pgmedic_restart_budget_remaining", "")
        yield GaugeMetricFamily("pgmedic_instance_state", "")
        yield GaugeMetricFamily("pgmedic_remediator_mode", "")

    def collect(self) -> Iterator[Metric]:
        states = self._read()
        budget = GaugeMetricFamily(
            "pgmedic_restart_budget_remaining", "Restarts left in the current window.", labels=["pg_instance"]
        )
        state = GaugeMetricFamily(
            "pgmedic_instance_state",
            "Remediation state: ok, acting, suspended (maintenance) or failed (budget spent).",
            labels=["pg_instance", "state"],
        )
        for name, (current, remaining) in sorted(states.items()):
            budget.add_metric([name], remaining)
            for s in INSTANCE_STATES:
                state.add_metric([name, s], 1 if s == current else 0)
        yield budget
        yield state
        mode = GaugeMetricFamily(
            "pgmedic_remediator_mode",
            "1 for the mode the remediator is in for this instance: act, or observe (decisions journaled only).",
            labels=["pg_instance", "mode"],
        )
        for name, current_mode in sorted(self._modes().items()):
            for m in Mode:
                mode.add_metric([name, m], 1 if m is current_mode else 0)
        yield mode
