"""The metering consumer: reads usage events from the log, dedups by event id, aggregates per account, model
and day. The consumer's offset moves in the same transaction as the rows it writes, and each event id is a
unique key, so re-reading the log (at-least-once) never counts twice.

An invariant that does not hold (the log ends before the offset already applied, offsets that go backwards)
halts the consumer: it records why, stops, and leaves the log as it is for an operator; it never skips ahead.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date
from decimal import Decimal
from typing import Any, Protocol

from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvariantViolated, MeteringHalted, ensure
from modelmarket.core.money import EXACT
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.partitions import SHARED_LOCK_KEY, consumer_name, lock_key, partition_of
from modelmarket.metering.ports import (
    DailyKey,
    DailyUsage,
    EventLog,
    LogRecord,
    MeteringUnitOfWork,
    Reject,
    UsageRepository,
)
from modelmarket.metering.units import UnitKind

CONSUMER_NAME = "metering"
BATCH_MAX_RECORDS = 5000
"""Log records applied in one transaction."""
ID_LOOKUP_BATCH = 5000
"""Event ids checked per query for duplicates (bounded IN lists)."""
REJECT_TEXT_MAX = 2000
REJECT_PAYLOAD_MAX = 8192
"""Bytes of a rejected record kept in ``metering_rejects``."""
RETRY_BACKOFF_MAX_S = 5.0
log = logging.getLogger(__name__)


def _decode(
    records: Sequence[LogRecord], now: str, partition: int = 0, partitions: int = 1
) -> tuple[dict[str, tuple[int, UsageEvent]], list[Reject]]:
    """Events by id (first occurrence wins), and rejects: records that are not valid usage events (kept with
    their first ``REJECT_PAYLOAD_MAX`` characters: whoever can write to the log cannot fill the store), and, with
    several partitions, events of an account that belongs to another partition (its events must be applied by
    one consumer, in order)."""
    events: dict[str, tuple[int, UsageEvent]] = {}
    rejects: list[Reject] = []
    home: dict[str, int] = {}
    for record in records:
        try:
            event = UsageEvent.decode(record.payload)
            if partitions > 1:
                owner = home.get(event.account_id)
                if owner is None:
                    owner = home[event.account_id] = partition_of(event.account_id, partitions)
                if owner != partition:
                    raise ValueError(f"account {event.account_id}'s events belong in partition {owner}")
        except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError) as exc:
            log.error("log record %d (%s) is not a usage event: %r", record.offset, record.event_id, exc)
            payload = _text(record.payload[:REJECT_PAYLOAD_MAX])
            if len(record.payload) > REJECT_PAYLOAD_MAX:
                payload += f"... [cut: {len(record.payload)} bytes]"
            error = repr(exc)[:REJECT_TEXT_MAX]
            event_id = _text(record.event_id.encode("utf-8", "surrogateescape"))[:64]
            rejects.append(Reject(record.offset, event_id, error, payload, now, partition))
            continue
        events.setdefault(event.id, (record.offset, event))
    return events, rejects


def _text(raw: bytes) -> str:
    """Bytes of any kind as text every store keeps: undecodable bytes and NUL (which PostgreSQL's text refuses)
    written as escapes."""
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _new_events(repo: UsageRepository, events: dict[str, tuple[int, UsageEvent]]) -> list[tuple[int, UsageEvent]]:
    ids = list(events)
    seen: set[str] = set()
    for i in range(0, len(ids), ID_LOOKUP_BATCH):
        seen |= repo.known_event_ids(ids[i : i + ID_LOOKUP_BATCH])
    return [pair for event_id, pair in events.items() if event_id not in seen]


def _aggregate(repo: UsageRepository, events: Sequence[tuple[int, UsageEvent]]) -> None:
    """Add the events to the per-day totals, exactly: amounts as numerator sums over the unit's divisor.

    Quantities are summed per price first (one multiplication per price, not per event); exact arithmetic makes
    that the same Decimal, value and exponent, as summing each event's quantity x price. Prices are told apart by
    identity (decoding shares one Decimal per price text), since 0.0010 == 0.001 but their products' exponents
    differ."""
    by_price: dict[tuple[str, str, str, UnitKind, str, int], list[Any]] = {}
    days: dict[date, str] = {}
    for _, e in events:
        day = e.time.astimezone(UTC).date()
        text = days.get(day)
        if text is None:
            text = days[day] = day.isoformat()
        priced = (e.account_id, e.model, text, e.unit_kind, e.currency, id(e.unit_price))
        acc = by_price.get(priced)
        if acc is None:
            by_price[priced] = [1, e.quantity, e.unit_price]
        else:
            acc[0] += 1
            acc[1] += e.quantity
    totals: dict[DailyKey, list[Any]] = {}
    for (account_id, model, day_text, unit, currency, _), (count, quantity, price) in by_price.items():
        key = (account_id, model, day_text, unit, currency)
        numerator = EXACT.multiply(Decimal(quantity), price)
        acc = totals.get(key)
        if acc is None:
            totals[key] = [count, quantity, numerator]
        else:
            acc[0] += count
            acc[1] += quantity
            acc[2] = EXACT.add(acc[2], numerator)
    stored = repo.daily(list(totals))
    rows = []
    for key, (count, quantity, numerator) in totals.items():
        current = stored.get(key)
        if current is not None:
            count += current.events
            quantity += current.quantity_base
            numerator = EXACT.add(current.amount_numerator, numerator)
        rows.append(DailyUsage(*key, count, quantity, numerator))
    repo.put_daily(rows, stored.keys())


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one batch. A batch keeps some 20 objects per event alive until
    it ends (decoded events, rated rows, row tuples), so the collector would run every few hundred events and
    traverse them, and every object of the process, again and again: 10-30% of the batch's time, measured
    (benchmarks/rating_throughput.py). Nothing is lost: reference counting still frees everything acyclic at
    once, and the collector, resumed at the end of the batch, finds any cycle later. Resumed only if it was
    running (another thread, or the embedding program, may have paused it for its own reasons)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_log(records: Sequence[LogRecord], offset: int) -> None:
    previous = offset
    for record in records:
        ensure(record.offset > previous, f"log offsets go backwards at {record.offset} (after {previous})")
        previous = record.offset


class Projector(Protocol):
    """Something derived from each new event in the consumer's transaction (billing's rating): it sees an event
    exactly once, and its rows commit with the offset or not at all."""

    records_events: bool
    """True: ``apply`` also records the events, each with what it derived from it (one row per event, written
    once), so the consumer does not (``UsageRepository.add_events``). At most one projector does."""

    def apply(self, uow: Any, events: Sequence[tuple[int, UsageEvent]]) -> None: ...

    def clear(self, uow: Any) -> None:
        """Forget everything derived, before a rebuild applies the log again from its start."""
        ...

    # Optional: ``shared = True`` on a projector whose rows every partition writes (the usage tree, one sequence
    # of leaves): with several partitions it is applied under ``Lock.METERING`` keyed ``SHARED_LOCK_KEY``, taken
    # at that point of the batch and held to its commit. Projectors writing only rows keyed by account (rating)
    # need none: an account's events are all in one partition. Such a projector may also have
    # ``replay_order(uow)``: (account, offset) of its rows in their order, which a rebuild over several partitions
    # replays them in (``MeteringService._replay_runs``).


class MeteringService:
    """Applies the event log to the usage tables. One consumer per partition at a time (``Lock.METERING`` keyed
    by partition), so partitions are applied in parallel; an account's events are all in one partition, and what
    rating writes is keyed by account (counters, rated events, its transactions, per-day rows).

    With one partition (the default) ``open_log()`` is called without arguments, as before partitions existed;
    with more, ``open_log(partition)``. A halt is one for every partition (``CONSUMER_NAME``'s)."""

    def __init__(
        self,
        uow: UnitOfWorkFactory[MeteringUnitOfWork],
        open_log: Callable[[], EventLog],
        clock: Clock,
        poll_s: float = 0.1,
        batch_max: int = BATCH_MAX_RECORDS,
        projectors: Sequence[Projector] = (),
        partitions: int = 1,
    ) -> None:
        self.uow = uow
        self.projectors = tuple(projectors)
        recorders = [p for p in self.projectors if p.records_events]
        ensure(len(recorders) <= 1, "at most one projector records the events")
        self._events_recorded_by_projector = bool(recorders)
        self.open_log = open_log
        self.clock = clock
        self.poll_s = poll_s
        self.batch_max = batch_max
        self.partitions = partitions
        self.log_config: Any = None
        """What the log was opened from (``bootstrap`` sets it; the gateway makes its writer from it)."""

    @contextmanager
    def _partition_write(self, partition: int) -> Iterator[Any]:
        """A partition's write transaction. One partition: ``Lock.METERING``, as always. Several: that lock
        shared (partitions run in parallel; a ``write(Lock.METERING)`` elsewhere, a plan change, an invoice's
        finalization or a rebuild, still waits for them all and stops them all) and the partition's own key."""
        if self.partitions == 1:
            with self.uow.write(Lock.METERING) as uow:
                yield uow
            return
        with self.uow.write() as uow:
            uow.lock(Lock.METERING, shared=True)
            uow.lock(Lock.METERING, lock_key(partition))
            yield uow

    def open_partition(self, partition: int) -> EventLog:
        return self.open_log() if self.partitions == 1 else self.open_log(partition)  # type: ignore[call-arg]

    def append(self, records: Sequence[tuple[str, str, bytes]]) -> list[int]:
        """Append (account id, log id, encoded event) records, each to its account's partition, one ``append_many``
        per partition (tools, tests and benchmarks; the gateway appends through its writer). Returns how many
        records went to each partition."""
        by_partition: list[list[tuple[str, bytes]]] = [[] for _ in range(self.partitions)]
        for account_id, log_id, payload in records:
            by_partition[partition_of(account_id, self.partitions)].append((log_id, payload))
        for partition, batch in enumerate(by_partition):
            if batch:
                event_log = self.open_partition(partition)
                try:
                    event_log.append_many(batch)
                finally:
                    event_log.close()
        return [len(batch) for batch in by_partition]

    def consume_batch(self, event_log: EventLog, limit: int | None = None, partition: int = 0) -> int:
        """Apply the next batch of events from the log (partition ``partition`` of it). Returns how many log
        records were read. Once the transaction committed, the log is told (``ack``)."""
        with self._partition_write(partition) as uow:
            halted = uow.usage.halted(CONSUMER_NAME)
            if halted is not None:
                raise MeteringHalted(halted)
            n = self._apply(uow, event_log, limit or self.batch_max, partition=partition)
            offset = uow.usage.offset(consumer_name(CONSUMER_NAME, partition)) if n else 0
        if n:
            event_log.ack(offset)
        return n

    def _apply(self, uow: Any, event_log: EventLog, limit: int, upto: int | None = None, partition: int = 0) -> int:
        with _cyclic_gc_paused():
            return self._apply_batch(uow, event_log, limit, upto, partition)

    def _apply_batch(
        self, uow: Any, event_log: EventLog, limit: int, upto: int | None = None, partition: int = 0
    ) -> int:
        """Apply the next records after the partition consumer's offset; with ``upto``, only those at or before
        it."""
        repo = uow.usage
        name = consumer_name(CONSUMER_NAME, partition)
        offset = repo.offset(name)
        records = event_log.read(offset, limit)
        if upto is not None and records and records[-1].offset > upto:
            records = [r for r in records if r.offset <= upto]
            if not records:
                return 0
        if not records:
            end = event_log.last_offset()
            ensure(
                end >= offset,
                f"the event log ends at offset {end} but metering already applied up to {offset}: "
                "the log was replaced or truncated",
            )
            return 0
        _check_log(records, offset)
        events, rejects = _decode(records, self.clock().astimezone(UTC).isoformat(), partition, self.partitions)
        if rejects:
            repo.add_rejects(rejects)
        fresh = _new_events(repo, events)
        if fresh:
            if not self._events_recorded_by_projector:
                repo.add_events(fresh)
            _aggregate(repo, fresh)
            shared_held = self.partitions == 1  # one consumer: its own lock excludes every other
            for projector in self.projectors:
                if not shared_held and getattr(projector, "shared", False):
                    uow.lock(Lock.METERING, SHARED_LOCK_KEY)
                    shared_held = True
                projector.apply(uow, fresh)
        repo.save_offset(name, records[-1].offset)
        return len(records)

    def rebuild(
        self,
        before: Callable[[Any], None] | None = None,
        after: Callable[[Any, int], None] | None = None,
    ) -> int:
        """Recompute everything derived from the log (usage, and what the projectors derive) from offset 0, in
        one write transaction under ``Lock.METERING``: it all changes or nothing does. Returns how many log
        records were applied again.

        The transaction first applies the log to its end, and notes that offset; ``before(uow)`` then sees
        everything derived up to it; everything derived is cleared and the log applied again *up to that offset
        only*, and ``after(uow, records)`` sees the result, still in the transaction. So ``before`` and
        ``after`` see the same events even when more are appended meanwhile: those are applied by the next
        batch, as usual. A halted consumer raises ``MeteringHalted``; a broken invariant halts it."""
        logs = [self.open_partition(p) for p in range(self.partitions)]
        try:
            try:
                with self.uow.write(Lock.METERING) as uow:
                    halted = uow.usage.halted(CONSUMER_NAME)
                    if halted is not None:
                        raise MeteringHalted(halted)
                    upto = {}
                    for p, event_log in enumerate(logs):
                        while self._apply(uow, event_log, self.batch_max, partition=p) > 0:
                            pass
                        upto[p] = uow.usage.offset(consumer_name(CONSUMER_NAME, p))
                    if before is not None:
                        before(uow)
                    runs = self._replay_runs(uow)
                    uow.usage.clear_derived(CONSUMER_NAME)
                    for p in range(1, self.partitions):
                        uow.usage.save_offset(consumer_name(CONSUMER_NAME, p), 0)
                    for projector in self.projectors:
                        projector.clear(uow)
                    total = 0
                    for p, run_end in runs:  # first the partitions' records in the order the shared rows had them
                        while (n := self._apply(uow, logs[p], self.batch_max, min(run_end, upto[p]), p)) > 0:
                            total += n
                    for p, event_log in enumerate(logs):
                        while (n := self._apply(uow, event_log, self.batch_max, upto[p], p)) > 0:
                            total += n
                        applied = uow.usage.offset(consumer_name(CONSUMER_NAME, p))
                        ensure(applied == upto[p], f"a rebuild applied partition {p} up to {applied}, not {upto[p]}")
                    if after is not None:
                        after(uow, total)
                    return total
            except InvariantViolated as exc:
                self._halt(str(exc))
                raise MeteringHalted(str(exc)) from exc
        finally:
            for event_log in logs:
                event_log.close()

    def _replay_runs(self, uow: Any) -> list[tuple[int, int]]:
        """With several partitions, the order a rebuild applies them in: runs of (partition, last offset) in the
        order a shared projector's rows (the usage tree's leaves) had them. Partitions were applied interleaved,
        batch by batch, so replaying one partition after another would grow the tree's leaves in another order,
        and its root would differ from its signed checkpoints. One partition, or no shared projector: none."""
        if self.partitions == 1:
            return []
        order = next((p.replay_order for p in self.projectors if hasattr(p, "replay_order")), None)
        if order is None:
            return []
        runs: list[tuple[int, int]] = []
        for account_id, offset in order(uow):
            p = partition_of(account_id, self.partitions)
            if runs and runs[-1][0] == p:
                runs[-1] = (p, max(runs[-1][1], offset))
            else:
                runs.append((p, offset))
        return runs

    def catch_up(self, max_records: int | None = None) -> int:
        """Apply what is in the log now, up to ``max_records`` (None: all) per partition. Halts on a broken
        invariant."""
        return sum(self._catch_up_partition(p, max_records) for p in range(self.partitions))

    def _catch_up_partition(self, partition: int, max_records: int | None) -> int:
        event_log = self.open_partition(partition)
        try:
            with self.uow.read() as uow:  # nothing new: answer without taking the write lock
                if (
                    uow.usage.halted(CONSUMER_NAME) is None
                    and uow.usage.offset(consumer_name(CONSUMER_NAME, partition)) == event_log.last_offset()
                ):
                    return 0
            total = 0
            while max_records is None or total < max_records:
                limit = self.batch_max if max_records is None else min(self.batch_max, max_records - total)
                n = self._guarded(event_log, limit, partition)
                if n == 0:
                    break
                total += n
            return total
        finally:
            event_log.close()

    def _guarded(self, event_log: EventLog, limit: int, partition: int = 0) -> int:
        try:
            return self.consume_batch(event_log, limit, partition)
        except InvariantViolated as exc:
            self._halt(str(exc))
            raise MeteringHalted(str(exc)) from exc

    def _halt(self, reason: str) -> None:
        log.error("metering halted: %s", reason)
        with self.uow.write(Lock.METERING) as uow:
            uow.usage.set_halted(CONSUMER_NAME, f"{self.clock().astimezone(UTC).isoformat()}: {reason}")

    def halted(self) -> str | None:
        with self.uow.read() as uow:
            return uow.usage.halted(CONSUMER_NAME)

    def resume(self) -> None:
        """Clear a halt after an operator has dealt with its cause."""
        with self.uow.write(Lock.METERING) as uow:
            uow.usage.set_halted(CONSUMER_NAME, None)

    def follow(self, stop: threading.Event) -> None:
        """Keep usage current until ``stop`` is set; then apply what is left in the log and return.

        Sleeps ``poll_s`` after every batch that was not full, so under steady load the consumer works in
        batches of about ``poll_s`` worth of events. A transient failure (the store is down, the bus is
        restarting) is retried with a bounded backoff; a broken invariant raises ``MeteringHalted``. With several
        partitions, each is followed by its own thread (a halt in one stops them all).
        """
        if self.partitions == 1:
            self._follow_partition(stop, 0)
            return
        halts: list[MeteringHalted] = []
        inner = threading.Event()

        def run(partition: int) -> None:
            try:
                self._follow_partition(inner, partition, final_catch_up=False)
            except MeteringHalted as exc:
                halts.append(exc)
                inner.set()

        threads = [threading.Thread(target=run, args=(p,), name=f"metering-p{p}") for p in range(self.partitions)]
        for thread in threads:
            thread.start()
        while not inner.is_set() and not stop.wait(0.2):
            pass
        inner.set()
        for thread in threads:
            thread.join()
        if halts:
            raise halts[0]
        self.catch_up()

    def _follow_partition(self, stop: threading.Event, partition: int, final_catch_up: bool = True) -> None:
        event_log = self.open_partition(partition)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    n = self._guarded(event_log, self.batch_max, partition)
                    failures = 0
                except MeteringHalted:
                    raise
                except Exception:  # the offset did not move, so nothing is lost; try again shortly
                    failures += 1
                    log.exception("metering consumer failed (%d in a row); retrying", failures)
                    stop.wait(min(self.poll_s * 2**failures, RETRY_BACKOFF_MAX_S))
                    continue
                if n < self.batch_max:
                    stop.wait(self.poll_s)
        finally:
            event_log.close()
        if final_catch_up:
            self.catch_up()
