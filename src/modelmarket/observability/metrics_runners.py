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
ReplicaKey = tuple[str, str, str]
"""(model, version, replica index)."""


@dataclass
class RunnerFacts:
    """One scrape's reading of the runners."""

    up: list[tuple[ReplicaKey, float]] = field(default_factory=list)
    in_flight: list[tuple[ReplicaKey, float]] = field(default_factory=list)
    rss_bytes: list[tuple[ReplicaKey, float]] = field(default_factory=list)
    queue_depth: list[tuple[tuple[str, str], float]] = field(default_factory=list)
    restarts: dict[tuple[str, str], int] = field(default_factory=dict)


class RestartCount:
    """Restarts per version that never go down while the gateway runs.

    The snapshot counts restarts per replica process (``restarts``, with its ``pid``), and a replica that is
    scaled down or replaced takes its count with it; replica indexes are reused. So each replica's (pid,
    count) is kept from one scrape to the next, and a count that ended is kept aside in the version's total (a
    counter, as Prometheus expects). A replica's count ended when the replica is gone, when its count went down,
    or when another process holds its index with a count no higher: a restart gives a new pid one restart more
    (and, while the process is down between the two, no pid and the same count); a replaced replica starts
    again from 0. Seen across one scrape interval, a replacement whose new process then restarted more times
    than the old one had is read as restarts of the old one: the total is short by the old count, never over."""

    def __init__(self) -> None:
        self.last: dict[ReplicaKey, tuple[int | None, int]] = {}
        self.retired: dict[tuple[str, str], int] = {}

    def update(self, current: dict[ReplicaKey, tuple[int | None, int]]) -> dict[tuple[str, str], int]:
        """``current``: (pid or None, restarts) per replica in this scrape's snapshot -> restarts per version."""
        for key, (pid_before, before) in self.last.items():
            now = current.get(key)
            if now is None or _ended(pid_before, before, *now):
                self.retired[key[:2]] = self.retired.get(key[:2], 0) + before
        self.last = dict(current)
        totals = dict(self.retired)
        for (model, version, _), (_, count) in current.items():
            totals[(model, version)] = totals.get((model, version), 0) + count
        return totals


def _ended(pid_before: int | None, before: int, pid: int | None, count: int) -> bool:
    """Whether the replica process seen as (``pid_before``, ``before``) is not the one now seen as (``pid``,
    ``count``) nor an earlier run of it."""
    if count < before:
        return True
    return pid is not None and pid != pid_before and count == before


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
        restarts: dict[ReplicaKey, tuple[int | None, int]] = {}
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
                pid = process.get("pid")
                restarts[key] = (int(pid) if pid is not None else None, int(process.get("restarts") or 0))
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
