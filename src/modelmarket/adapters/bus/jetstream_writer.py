"""The gateway's appender on JetStream: the appends of one loop iteration are published together.

As ``LoopGroupCommitWriter`` does for SQLite: an append joins the pending batch and one flush is scheduled with
``call_soon``; the flush groups the batch by partition and hands it to the bus's loop, where each group is
published pipelined (every publish sent, then every ack awaited). Batches are not serialized behind each other:
the bound is on events in flight (``queue_max``), beyond which appends fail with ``EventLogFull`` (503).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any

from modelmarket.adapters.bus.jetstream import REQUEST_TIMEOUT_S, JetStreamBus
from modelmarket.adapters.bus.partitioned import partition_of_payload
from modelmarket.adapters.bus.sqlite_log import _duplicate, _events_of, _settle
from modelmarket.metering.ports import EventLogFull, KeptAnswer, KeyLookup

_Item = tuple[str | None, Any, "asyncio.Future[None]", KeptAnswer | None]


class JetStreamWriter:
    def __init__(self, open_bus: Callable[[], JetStreamBus], batch_max: int, queue_max: int) -> None:
        self._open_bus = open_bus
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._pending: list[_Item] = []
        self._in_flight = 0
        self._scheduled = False
        self.bus: JetStreamBus | None = None
        self.commits = 0
        self.appended = 0

    def start(self) -> None:
        self.bus = self._open_bus()  # connects and checks the streams now: a wrong URL fails at startup

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.close()
            self.bus = None

    def lookup(self, event_id: str) -> KeyLookup:
        """Blocking direct gets on each partition (only calls with an Idempotency-Key pay it)."""
        bus = self._started()
        found = KeyLookup(False, None)
        for p in range(bus.partitions):
            found = bus.run(bus.lookup(p, event_id), REQUEST_TIMEOUT_S * 2)
            if found.billed:
                return found
        return found

    def append(self, event_id: str, payload: bytes, kept: KeptAnswer | None = None) -> asyncio.Future[None]:
        return self._add((event_id, payload, kept))

    def append_all(self, events: Sequence[tuple[str, bytes]]) -> asyncio.Future[None]:
        """Several events of one call (a pipeline's steps): one partition, published together."""
        return self._add((None, list(events), None))

    def _started(self) -> JetStreamBus:
        if self.bus is None:
            raise RuntimeError("JetStreamWriter used before start()")
        return self.bus

    def _add(self, item: tuple[str | None, Any, KeptAnswer | None]) -> asyncio.Future[None]:
        self._started()
        if len(self._pending) + self._in_flight >= self._queue_max:
            raise EventLogFull("usage event log is at its queue bound; try again shortly")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((item[0], item[1], fut, item[2]))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        bus = self._started()
        while self._pending:
            batch, self._pending = self._pending[: self._batch_max], self._pending[self._batch_max :]
            groups: dict[int, list[_Item]] = {}
            for item in batch:
                events = _events_of(item[0], item[1])
                part = partition_of_payload(events[0][1], bus.partitions) if events else 0
                groups.setdefault(part, []).append(item)
            for part, items in groups.items():
                self._in_flight += len(items)
                events = [e for i in items for e in _events_of(i[0], i[1])]
                kept = [i[3] for i in items if i[3] is not None]
                done: asyncio.Future[set[str]] = asyncio.wrap_future(bus.submit(bus.append_many(part, events, kept)))
                done.add_done_callback(functools.partial(self._settle, items=items, events=len(events)))

    def _settle(self, done: asyncio.Future[set[str]], *, items: list[_Item], events: int) -> None:
        self._in_flight -= len(items)
        error = done.exception()
        duplicates = set() if error is not None else done.result()
        if error is None:
            self.commits += 1
            self.appended += events
        outcomes = []
        for event_id, payload, fut, _ in items:
            logged = [e for e, _ in _events_of(event_id, payload) if e in duplicates]
            outcomes.append((fut, _duplicate(logged[0]) if logged else error))
        _settle(outcomes)
