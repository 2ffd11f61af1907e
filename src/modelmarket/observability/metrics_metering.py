"""The metering child's metrics: how far behind the event log it is, written as prometheus-client multiprocess
files and merged into the gateway's ``/metrics``.

The gateway gives its metering child ``PROMETHEUS_MULTIPROC_DIR`` (``set_child_metrics_env`` in
``metrics.py``); prometheus-client picks its file-backed values from that variable when it is first imported,
which in the child is after the variable is set. Every :data:`SAMPLE_S` the child compares the log's last offset
with the offset metering applied, and the time of the oldest event not yet applied with the clock
(:func:`start_lag_sampler`). The gateway reads the files back with :class:`ChildFilesCollector`: counters of
every process that ever wrote (a restarted child adds to them), gauges of live processes only (a dead child's
last reading is not served as current).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_S = 1.0
"""How often the metering child measures its lag."""
MAX_CHILD_FILES = 256
"""Most multiprocess files read at a scrape (one per kind and process; restarts are bounded by their policy)."""


@dataclass(frozen=True, slots=True)
class LagReading:
    last_offset: int
    """The offset of the last record in the event log."""
    applied_offset: int
    """The offset metering applied up to."""
    oldest_unapplied_at: float | None
    """Unix time of the first record not yet applied (None when there is none, or it has no readable time)."""


def lag_figures(reading: LagReading, now: float) -> tuple[int, float]:
    """(records in the log not yet applied, seconds the oldest of them has waited; 0 when none waits)."""
    pending = max(0, reading.last_offset - reading.applied_offset)
    if pending == 0 or reading.oldest_unapplied_at is None:
        return pending, 0.0
    return pending, max(0.0, now - reading.oldest_unapplied_at)


def event_time(payload: bytes) -> float | None:
    """The ``time`` of a usage event's CloudEvent, as Unix time (None if the record has none readable)."""
    try:
        doc = orjson.loads(payload)
        return datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00")).timestamp()
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class LagSampler:
    """The child's side: measures the lag and writes it (gauges) and the records applied since (a counter)."""

    def __init__(self, read: Callable[[], LagReading], now: Callable[[], float] = time.time) -> None:
        from prometheus_client import Counter, Gauge  # imported here: only a child with the variable set samples

        self.read = read
        self.now = now
        self.pending = Gauge(
            "modelmarket_event_log_lag_events",
            "Usage events in the event log that metering has not applied yet.",
            registry=None,
            multiprocess_mode="mostrecent",
        )
        self.lag = Gauge(
            "modelmarket_event_log_lag_seconds",
            "How long the oldest usage event not yet applied by metering has waited (0 when none waits).",
            registry=None,
            multiprocess_mode="mostrecent",
        )
        self.applied = Counter(
            "modelmarket_metering_applied_events_total",
            "Event-log records applied by metering since the gateway started.",
            registry=None,
        )
        self._applied_before: int | None = None

    def sample(self) -> None:
        reading = self.read()
        pending, lag_s = lag_figures(reading, self.now())
        self.pending.set(pending)
        self.lag.set(lag_s)
        if self._applied_before is not None and reading.applied_offset > self._applied_before:
            self.applied.inc(reading.applied_offset - self._applied_before)
        self._applied_before = reading.applied_offset


def start_lag_sampler(
    open_reader: Callable[[], tuple[Callable[[], LagReading], Callable[[], None]]],
    stop: threading.Event,
) -> threading.Thread | None:
    """In the metering child: sample every :data:`SAMPLE_S` on a thread until ``stop`` is set. ``open_reader``
    is called on that thread and gives (read, close). Nothing happens when the gateway gave no metrics folder."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory or not Path(directory).is_dir():
        return None

    def run() -> None:
        read, close = open_reader()
        try:
            sampler = LagSampler(read)
            while True:
                try:
                    sampler.sample()
                except Exception:  # a metric never stops metering; the next sample tries again
                    log.exception("measuring the metering lag failed")
                if stop.wait(SAMPLE_S):
                    return
        finally:
            close()

    thread = threading.Thread(target=run, name="metering-metrics", daemon=True)
    thread.start()
    return thread


# -- the gateway's side --------------------------------------------------------------------------------------
def _pid_of(path: Path) -> int | None:
    with contextlib.suppress(ValueError):
        return int(path.stem.rsplit("_", 1)[1])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ChildFilesCollector(Collector):
    """Merges the children's multiprocess files into the gateway's exposition."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def files(self) -> list[str]:
        found: list[str] = []
        with contextlib.suppress(OSError):
            for path in sorted(self.directory.glob("*.db"))[:MAX_CHILD_FILES]:
                pid = _pid_of(path)
                if pid is None:
                    continue
                if path.name.startswith("gauge_") and not _alive(pid):
                    continue
                found.append(str(path))
        return found

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        files = self.files()
        if files:
            yield from MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
