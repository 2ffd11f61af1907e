"""The runners' metrics, read from the gateway's side when Prometheus scrapes.

A runner runs sandboxed (no network, no writable folder shared with the gateway), so it records nothing itself:
:class:`RunnerCollector` reads the supervisor's status snapshot (what ``modelmarket runners`` shows) in the
gateway's event loop (:meth:`RunnerCollector.refresh`), and turns it into metrics when the registry is
collected. A replica's resident memory is what the supervisor reads from the runner's cgroup or from
``/proc/<pid>/status``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

UP_STATES = frozenset({"running", "in the gateway"})
"""A replica's ``state`` in the supervisor's snapshot when it is running and answered its latest probe (or is the
gateway itself, for a runtime loaded in-process)."""
_VERSION = ("model", "version")
_REPLICA = ("model", "version", "replica")


@dataclass
class RunnerFacts:
    """One scrape's reading of the runners."""

    up: list[tuple[tuple[str, str, str], float]] = field(default_factory=list)
    in_flight: list[tuple[tuple[str, str, str], float]] = field(default_factory=list)
    rss_bytes: list[tuple[tuple[str, str, str], float]] = field(default_factory=list)
    queue_depth: list[tuple[tuple[str, str], float]] = field(default_factory=list)
    restarts: dict[tuple[str, str], int] = field(default_factory=dict)


class RestartCount:
    """Restarts per version that never go down while the gateway runs.

    The snapshot counts restarts per replica, and a replica that is scaled down or replaced takes its count with
    it: what a replica had counted when it was last seen is kept aside, so the version's total stays monotonic
    (a counter, as Prometheus expects)."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str, str], int] = {}
        self.retired: dict[tuple[str, str], int] = {}

    def update(self, current: dict[tuple[str, str, str], int]) -> dict[tuple[str, str], int]:
        for key, before in self.last.items():
            now = current.get(key)
            if now is None or now < before:  # gone, or a new process under the same index
                self.retired[key[:2]] = self.retired.get(key[:2], 0) + before
        self.last = dict(current)
        totals = dict(self.retired)
        for (model, version, _), count in current.items():
            totals[(model, version)] = totals.get((model, version), 0) + count
        return totals


class RunnerCollector(Collector):
    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor
        self.facts = RunnerFacts()
        self._restarts = RestartCount()

    def refresh(self) -> None:
        """Read the supervisor (call in its event loop: its replica lists change there)."""
        snapshot = getattr(self.supervisor, "snapshot", None)
        if snapshot is None:  # a stand-in supervisor without runners of its own
            return
        facts = RunnerFacts()
        restarts: dict[tuple[str, str, str], int] = {}
        for version in snapshot().get("runners", ()):
            model, name = str(version["model"]), str(version["version"])
            facts.queue_depth.append(((model, name), float(version.get("queue_depth") or 0)))
            for process in version.get("processes", ()):
                key = (model, name, str(process["replica"]))
                facts.up.append((key, 1.0 if process.get("state") in UP_STATES else 0.0))
                facts.in_flight.append((key, float(process.get("outstanding") or 0)))
                rss = process.get("rss_bytes")
                if rss is not None:
                    facts.rss_bytes.append((key, float(rss)))
                restarts[key] = int(process.get("restarts") or 0)
        facts.restarts = self._restarts.update(restarts)
        self.facts = facts

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: the names are fixed, the series come and go

    def collect(self) -> Iterator[Any]:
        facts = self.facts
        up = GaugeMetricFamily(
            "modelmarket_runner_up",
            "1 while a runner replica is running and answering its probe, else 0.",
            labels=_REPLICA,
        )
        in_flight = GaugeMetricFamily(
            "modelmarket_runner_calls_in_flight", "Calls a runner replica is serving now.", labels=_REPLICA
        )
        rss = GaugeMetricFamily(
            "modelmarket_runner_resident_memory_bytes",
            "Resident memory of a runner replica (its cgroup, else /proc/<pid>/status VmRSS).",
            labels=_REPLICA,
        )
        queue = GaugeMetricFamily(
            "modelmarket_runner_queue_depth",
            "Calls of a version waiting for a replica or in flight on one.",
            labels=_VERSION,
        )
        restarts = CounterMetricFamily(
            "modelmarket_runner_restarts", "Times a version's runner processes were restarted.", labels=_VERSION
        )
        for family, rows in ((up, facts.up), (in_flight, facts.in_flight), (rss, facts.rss_bytes)):
            for replica_key, value in rows:
                family.add_metric(list(replica_key), value)
        for version_key, value in facts.queue_depth:
            queue.add_metric(list(version_key), value)
        for version_key, count in facts.restarts.items():
            restarts.add_metric(list(version_key), float(count))
        yield from (up, in_flight, rss, queue, restarts)
