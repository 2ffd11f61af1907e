"""What metering needs: the event log it reads (and the gateway appends to), and the usage tables it writes."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from modelmarket.core.uow import Lock
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind


class EventLogFull(Exception):
    """The append queue is at its bound: the caller must answer 503 and must not serve the response."""


class EventLogUnavailable(EventLogFull):
    """The event bus could not be reached within the append's bounded wait (a NATS server restarting): like a
    full log, the caller answers 503 with Retry-After and does not serve the response (hence the subclass)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    offset: int
    event_id: str
    payload: bytes


class AlreadyLogged(Exception):
    """An idempotent event id was already in the log (another process served the same Idempotency-Key first):
    this call's answer must not be served; the one kept in the log is."""


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """An answer kept beside its usage event (same commit) for a retry that carries the same Idempotency-Key."""

    event_id: str
    request_sha256: str
    content_type: bytes
    header_length: bytes | None
    body: bytes
    kept_at_s: float
    """Unix time when it was committed; it is replayed for a bounded time after that."""


@dataclass(frozen=True, slots=True)
class KeyLookup:
    """What the log knows of an event id derived from an Idempotency-Key."""

    billed: bool
    kept: KeptAnswer | None


class EventLog(Protocol):
    """An append-only log read by offset. Narrow on purpose: a JetStream or Kafka adapter is one module."""

    def append_many(self, events: Sequence[tuple[str, bytes]], kept: Sequence[KeptAnswer] = ()) -> set[str]:
        """Durably append (event id, payload) pairs, and the answers kept beside them, in one step; an id already
        in the log is not added twice. Returns the ids of kept answers whose event was already there."""
        ...

    def read(self, after_offset: int, limit: int) -> list[LogRecord]:
        """Up to ``limit`` records with offset greater than ``after_offset``, in offset order. The caller's stored
        offset is the truth: a log that tracks a reader's position (a durable consumer) follows it."""
        ...

    def ack(self, upto_offset: int) -> None:
        """The reader committed everything up to ``upto_offset`` (called after its transaction): a broker may
        forget its delivery state up to there. The log itself is kept (rebuild replays it). Embedded: nothing."""
        ...

    def lookup(self, event_id: str) -> KeyLookup:
        """Whether ``event_id`` is in the log, and its kept answer while it is kept."""
        ...

    def last_offset(self) -> int: ...

    def close(self) -> None: ...


DailyKey = tuple[str, str, str, UnitKind, str]
"""(account_id, model_name, day, unit_kind, currency) of a per-day usage row."""


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One account's exact usage of one model on one UTC day: amount = amount_numerator / unit_kind.divisor."""

    account_id: str
    model_name: str
    day: str
    unit_kind: UnitKind
    currency: str
    events: int
    quantity_base: int
    amount_numerator: Decimal

    @property
    def key(self) -> DailyKey:
        return (self.account_id, self.model_name, self.day, self.unit_kind, self.currency)


@dataclass(frozen=True, slots=True)
class Reject:
    """A log record that is not a valid usage event: kept, with why, instead of blocking the log."""

    log_offset: int
    event_id: str
    error: str
    payload: str
    """The record as text, cut to its first ``consumer.REJECT_PAYLOAD_MAX`` bytes (its size said when cut)."""
    rejected_at: str
    partition: int = 0


@dataclass(frozen=True, slots=True)
class CallStats:
    """The served calls of one model in a time range (dynamic pricing reads demand and latency from these)."""

    model_name: str
    calls: int
    latency_ms_p50: Decimal | None
    """The median latency (nearest rank: the ceil(calls/2)-th smallest); None unless asked for, or no calls."""


@dataclass(frozen=True, slots=True)
class ModelActivity:
    """One model's served calls over some UTC days, as the catalogue shows them (``registry.search.Measured``)."""

    model_name: str
    calls: int
    """Calls on those days (from the per-day rows)."""
    latency_ms_p50: Decimal | None
    """Nearest-rank percentiles (the ceil(n*p/100)-th smallest) of the latencies of the model's latest calls on
    those days (at most a bounded sample of them); None when there were none."""
    latency_ms_p95: Decimal | None


class UsageRepository(Protocol):
    def offset(self, consumer: str) -> int:
        """The last log offset ``consumer`` applied (0 before the first)."""
        ...

    def save_offset(self, consumer: str, offset: int) -> None: ...

    def halted(self, consumer: str) -> str | None:
        """Why ``consumer`` was halted, or None while it may run."""
        ...

    def set_halted(self, consumer: str, reason: str | None) -> None: ...

    def known_event_ids(self, event_ids: Sequence[str]) -> set[str]: ...

    def add_events(self, events: Sequence[tuple[int, UsageEvent]]) -> None:
        """Events with the log offset each was read at. Not called when a projector records the events with what
        it derives from them (billing's rating does: ``LedgerRepository.add_rated``)."""
        ...

    def daily(self, keys: Collection[DailyKey]) -> dict[DailyKey, DailyUsage]:
        """The stored per-day rows of ``keys`` (a key with none is left out)."""
        ...

    def put_daily(self, rows: Sequence[DailyUsage], existing: Collection[DailyKey]) -> None:
        """Update the rows whose key is in ``existing`` (as ``daily`` found them); insert the others."""
        ...

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        """Insert the rejects whose offsets are not already set aside."""
        ...

    def daily_usage(self, account_id: str, since: str | None, until: str | None) -> list[DailyUsage]: ...

    def call_stats(self, since: str, until: str, latency_of: Collection[str] = ()) -> list[CallStats]:
        """Calls per model with ``since <= occurred_at < until`` (ISO 8601 UTC text, compared as stored), one row
        per model that had any, by model name; the p50 latency only for the models in ``latency_of``. Bounded
        in memory: one row per model, never the events themselves."""
        ...

    def daily_usage_all(self) -> list[DailyUsage]:
        """Every per-day row, in key order (for a digest of the derived state)."""
        ...

    def clear_derived(self, consumer: str) -> None:
        """Delete the usage events, per-day rows and rejects, and move ``consumer`` back to offset 0."""
        ...

    def model_activity(
        self, model_names: Collection[str], since_day: str, until_day: str, latency_sample_max: int
    ) -> list[ModelActivity]:
        """Per model of ``model_names`` with calls on the UTC days ``since_day``..``until_day`` (``YYYY-MM-DD``,
        both included), by model name: the number of calls (summed from the per-day rows) and the p50 and p95
        latency of its latest ``latency_sample_max`` calls on those days. Bounded: a query per batch of names for
        the counts, and per model one read of at most ``latency_sample_max`` events along the (model_name,
        occurred_at) index; never a scan of every event."""
        ...


class MeteringUnitOfWork(Protocol):
    @property
    def usage(self) -> UsageRepository: ...

    def lock(self, lock: Lock, key: str = "", *, shared: bool = False) -> None:
        """Also hold ``lock`` (keyed ``key``, or unkeyed and ``shared`` with other shared holders but not with
        ``write(lock)``) until the transaction ends: how metering partitions run in parallel."""
        ...
