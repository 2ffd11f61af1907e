"""The metering child's metrics: how far behind the event log it is, written as prometheus-client multiprocess
files and merged into the gateway's ``/metrics``.

The gateway gives its metering child ``PROMETHEUS_MULTIPROC_DIR`` (``set_child_metrics_env`` in
``metrics.py``); prometheus-client picks its file-backed values from that variable when it is first imported,
which in the child is after the variable is set. Every :data:`SAMPLE_S` the child compares the log's last offset
with the offset metering applied, and the time of the oldest event not yet applied with the clock
(:func:`start_lag_sampler`); it counts how far the applied offset moved, from where the child before it stopped
counting (or from the offset at its own start), so a restart loses no record (and repeats none, unless the child
was killed in the instant between moving its counter and recording where it counted up to).

The gateway reads the files back with :class:`ChildFilesCollector`: at each scrape the counter files of
processes that are gone are folded into a total kept in memory and deleted, with their gauge files (a dead
child's last reading is not served as current); so the folder holds the live child's files only, however often
the child was restarted.
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
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from modelmarket.core.process import pid_alive

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_S = 1.0
"""How often the metering child measures its lag."""
START_WAIT_S = 10.0
"""Longest the metering child waits for the sampler's first reading (the offset it counts from) before applying."""
COUNTED_FILE = "metering_counted_offset"
"""In the multiprocess folder: the applied offset the children have counted up to (the next child starts there)."""
MAX_COUNTED_CHARS = 32
MAX_CHILD_FILES = 64
"""Most multiprocess files of one kind read at a scrape, newest first (the live child writes one per kind)."""


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


def read_counted(directory: Path) -> int | None:
    """The applied offset an earlier child counted up to (None: no child counted yet, or nothing readable)."""
    try:
        with (directory / COUNTED_FILE).open("rb") as f:
            text = f.read(MAX_COUNTED_CHARS + 1)
    except OSError:
        return None
    if len(text) > MAX_COUNTED_CHARS or not text.strip().isdigit():
        return None
    return int(text)


def stage_counted(directory: Path, offset: int) -> Path:
    """Write the offset counted up to beside :data:`COUNTED_FILE`; ``os.replace`` the returned file onto it."""
    scratch = directory / f".{COUNTED_FILE}.{os.getpid()}"
    scratch.write_bytes(str(offset).encode())
    return scratch


def write_counted(directory: Path, offset: int) -> None:
    """Record the offset counted up to, replacing the earlier figure in one step."""
    os.replace(stage_counted(directory, offset), directory / COUNTED_FILE)


def counted_from(counted: int | None, applied_at_start: int | None) -> int | None:
    """Where a starting child counts from: where the child before it stopped counting (the records that child
    applied after its last sample are this one's to count), else the offset applied when it started."""
    if counted is not None and (applied_at_start is None or counted <= applied_at_start):
        return counted
    return applied_at_start


class LagSampler:
    """The child's side: measures the lag and writes it (gauges) and how far the applied offset moved (a counter).

    ``counted_from`` is the applied offset already counted (None: the first sample's reading); ``directory``,
    when given, is where the offset counted up to is left for the next child (:data:`COUNTED_FILE`)."""

    def __init__(
        self,
        read: Callable[[], LagReading],
        now: Callable[[], float] = time.time,
        counted_from: int | None = None,
        directory: Path | None = None,
    ) -> None:
        from prometheus_client import Counter, Gauge  # imported here: only a child with the variable set samples

        self.read = read
        self.now = now
        self.directory = directory
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
            "How far metering's applied offset in the event log moved since the gateway started (one per record).",
            registry=None,
        )
        self.counted = counted_from

    def sample(self) -> None:
        reading = self.read()
        pending, lag_s = lag_figures(reading, self.now())
        self.pending.set(pending)
        self.lag.set(lag_s)
        applied = reading.applied_offset
        if applied == self.counted:
            return
        # the record for the next child is written first and put in place right after the counter moved: a
        # child killed in between (one rename) leaves the next to count this sample's records again
        staged = stage_counted(self.directory, applied) if self.directory is not None else None
        if self.counted is not None and applied > self.counted:
            self.applied.inc(applied - self.counted)
        self.counted = applied  # moved on, or back (a restored store: followed without counting)
        if staged is not None and self.directory is not None:
            os.replace(staged, self.directory / COUNTED_FILE)


def start_lag_sampler(
    open_reader: Callable[[], tuple[Callable[[], LagReading], Callable[[], None]]],
    stop: threading.Event,
) -> threading.Thread | None:
    """In the metering child: sample every :data:`SAMPLE_S` on a thread until ``stop`` is set. ``open_reader``
    is called on that thread and gives (read, close). Returns once the thread has read the offset it counts
    from (waiting at most :data:`START_WAIT_S`), so call it before metering applies anything. Nothing happens
    when the gateway gave no metrics folder."""
    value = os.environ.get(MULTIPROC_ENV)
    if not value or not Path(value).is_dir():
        return None
    directory = Path(value)
    started = threading.Event()

    def run() -> None:
        try:
            read, close = open_reader()
        except Exception:  # a metric never stops metering
            started.set()
            log.exception("opening the metering lag reader failed; no lag metrics from this child")
            return
        try:
            sampler = LagSampler(read, counted_from=_starting_offset(read, directory), directory=directory)
            started.set()
            while True:
                try:
                    sampler.sample()
                except Exception:  # a metric never stops metering; the next sample tries again
                    log.exception("measuring the metering lag failed")
                if stop.wait(SAMPLE_S):
                    return
        finally:
            started.set()
            close()

    thread = threading.Thread(target=run, name="metering-metrics", daemon=True)
    thread.start()
    started.wait(START_WAIT_S)
    return thread


def _starting_offset(read: Callable[[], LagReading], directory: Path) -> int | None:
    try:
        applied: int | None = read().applied_offset
    except Exception:  # counted from the first sample instead
        log.exception("reading the applied offset at the metering child's start failed")
        applied = None
    return counted_from(read_counted(directory), applied)


# -- the gateway's side --------------------------------------------------------------------------------------
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
"""(sample name, sorted labels) of one value in a multiprocess file."""


@dataclass(frozen=True, slots=True)
class ChildFile:
    path: Path
    kind: str
    """What the file holds: ``counter``, ``gauge_mostrecent``, ``histogram`` ... (its name before the pid)."""
    pid: int
    mtime: float


def child_file(path: Path, mtime: float) -> ChildFile | None:
    """A multiprocess file named ``<kind>_<pid>.db`` (None for any other name)."""
    kind, _, pid = path.name.removesuffix(".db").rpartition("_")
    if not path.name.endswith(".db") or not kind or not pid.isdigit() or len(pid) > 10:
        return None
    return ChildFile(path, kind, int(pid), mtime)


def newest_per_kind(files: list[ChildFile], cap: int) -> list[ChildFile]:
    """At most ``cap`` files of each kind, the most recently written first."""
    kept: list[ChildFile] = []
    per_kind: dict[str, int] = {}
    for f in sorted(files, key=lambda f: (f.mtime, f.pid), reverse=True):
        if per_kind.get(f.kind, 0) < cap:
            per_kind[f.kind] = per_kind.get(f.kind, 0) + 1
            kept.append(f)
    return kept


class ChildFilesCollector(Collector):
    """Merges the children's multiprocess files into the gateway's exposition.

    At each collection, the counter files of processes that are gone are folded into :attr:`folded` (kept for
    the gateway's lifetime) and deleted, and their gauge files deleted; what is left, the live processes' files,
    is read (at most :data:`MAX_CHILD_FILES` of a kind) and the folded counts added to it."""

    def __init__(self, directory: Path, max_files: int = MAX_CHILD_FILES) -> None:
        self.directory = directory
        self.max_files = max_files
        self.folded: dict[str, tuple[str, dict[SampleKey, float]]] = {}
        """Counters of processes that are gone: metric name -> (help, value per sample)."""
        self._lock = threading.Lock()  # two scrapes at once must not fold one file twice

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        with self._lock:
            live = self.tidy()
            merged: list[Metric] = []
            if live:
                merged = list(MultiProcessCollector.merge([str(f.path) for f in live], accumulate=True))  # type: ignore[no-untyped-call]
            return iter(self._with_folded(merged))

    def tidy(self) -> list[ChildFile]:
        """Fold and delete the files of dead processes; the files left to read, newest first per kind."""
        files: list[ChildFile] = []
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if not entry.is_file(follow_symlinks=False):
                        continue  # the children write plain files only
                    found = child_file(Path(entry.path), entry.stat(follow_symlinks=False).st_mtime)
                    if found is not None:
                        files.append(found)
        left: list[ChildFile] = []
        for f in files:
            if pid_alive(f.pid):
                left.append(f)
            elif f.kind == "counter":
                if not self._fold(f.path):
                    left.append(f)  # could not delete it: read as it is, never folded twice
            elif f.kind.startswith("gauge"):
                with contextlib.suppress(OSError):
                    f.path.unlink()
            else:
                left.append(f)  # a kind the children do not write: read, within the cap
        return newest_per_kind(left, self.max_files)

    def _fold(self, path: Path) -> bool:
        """Add a dead process's counters to :attr:`folded` once its file is deleted; False if it could not be."""
        try:
            metrics = list(MultiProcessCollector.merge([str(path)], accumulate=True))  # type: ignore[no-untyped-call]
        except FileNotFoundError:
            return True  # gone already: nothing left to fold
        try:
            path.unlink(missing_ok=True)
        except OSError:
            log.warning("cannot delete %s: its counts are read from it at each scrape", path)
            return False
        for metric in metrics:
            values = self.folded.setdefault(metric.name, (metric.documentation, {}))[1]
            for s in metric.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                values[key] = values.get(key, 0.0) + s.value
        return True

    def _with_folded(self, merged: list[Metric]) -> list[Metric]:
        remaining = {name: dict(values) for name, (_, values) in self.folded.items()}
        for metric in merged:
            extra = remaining.pop(metric.name, None) if metric.type == "counter" else None
            if not extra:
                continue
            samples = []
            for s in metric.samples:
                samples.append(s._replace(value=s.value + extra.pop((s.name, tuple(sorted(s.labels.items()))), 0.0)))
            samples.extend(Sample(name, dict(labels), value) for (name, labels), value in extra.items())
            metric.samples = samples
        for name, values in remaining.items():
            metric = Metric(name, self.folded[name][0], "counter")
            for (sample, labels), value in values.items():
                metric.add_sample(sample, dict(labels), value)
            merged.append(metric)
        return merged
