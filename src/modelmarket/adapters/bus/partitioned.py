"""The gateway's appender over a partitioned embedded log: one group-committing writer per partition.

An event goes to its account's partition (``metering.partitions.partition_of``), so an account's events keep
their order; each partition keeps its own group commit. The account is read from the event's CloudEvents
``subject`` (the callers hand over encoded events), only when there is more than one partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import orjson

from modelmarket.metering.partitions import partition_of
from modelmarket.metering.ports import KeptAnswer, KeyLookup


class Appender(Protocol):
    """What the gateway's data plane calls (``LoopGroupCommitWriter``, ``GroupCommitWriter``, ``JetStreamWriter``)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def lookup(self, event_id: str) -> KeyLookup: ...

    def append(self, event_id: str, payload: bytes, kept: KeptAnswer | None = None) -> asyncio.Future[None]: ...

    def append_all(self, events: Sequence[tuple[str, bytes]]) -> asyncio.Future[None]: ...


def account_of(payload: bytes) -> str:
    """The account of an encoded usage event (its CloudEvents ``subject``); '' for a payload that is not one (it
    goes to partition 0, where the metering consumer sets it aside as a reject)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    subject = doc.get("subject") if isinstance(doc, dict) else None
    return subject if isinstance(subject, str) else ""


def partition_of_payload(payload: bytes, partitions: int) -> int:
    return 0 if partitions == 1 else partition_of(account_of(payload), partitions)


class PartitionedWriter:
    """One appender per partition behind the appender interface; ``writers[i]`` appends to partition i."""

    def __init__(self, writers: Sequence[Appender]) -> None:
        self.writers = list(writers)
        self.partitions = len(self.writers)

    def start(self) -> None:
        for writer in self.writers:
            writer.start()

    def stop(self) -> None:
        for writer in self.writers:
            writer.stop()

    @property
    def commits(self) -> int:
        return sum(int(getattr(w, "commits", 0)) for w in self.writers)

    @property
    def appended(self) -> int:
        return sum(int(getattr(w, "appended", 0)) for w in self.writers)

    def lookup(self, event_id: str) -> KeyLookup:
        """An Idempotency-Key's event id does not name its account: ask each partition (one indexed read each;
        only calls with the header pay it)."""
        found = KeyLookup(False, None)
        for writer in self.writers:
            found = writer.lookup(event_id)
            if found.billed:
                return found
        return found

    def append(self, event_id: str, payload: bytes, kept: KeptAnswer | None = None) -> asyncio.Future[None]:
        return self.writers[partition_of_payload(payload, self.partitions)].append(event_id, payload, kept)

    def append_all(self, events: Sequence[tuple[str, bytes]]) -> asyncio.Future[None]:
        """A pipeline call's steps, all or none: they are one caller's, so one partition, one transaction."""
        targets = {partition_of_payload(p, self.partitions) for _, p in events}
        if len(targets) > 1:
            raise ValueError("events appended together must belong to one account (one partition)")
        return self.writers[targets.pop() if targets else 0].append_all(events)
