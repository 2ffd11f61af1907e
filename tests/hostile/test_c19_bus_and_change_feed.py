"""19. The scale-out surfaces, from someone who can publish on the NATS bus (a leaked bus credential, a compromised
neighbour on a shared server): records forged on the usage subjects are rejected and kept small, bill nothing, and
do not stop metering; an event put in another account's partition is refused; a message too big for a usage stream
is refused by the server; a flood of change announcements costs a replica a few cheap checks, not one per message.

A forged record that is a well-formed usage event of a real account *is* billed: the bus is trusted like the
store (docs/scale-out.md, "Security"). These tests show what the platform bounds on its side of that line.

The S3 side (an object replaced under the cache) is in tests/integration/test_blob_store_contract.py
(``test_a_damaged_object_is_refused_and_never_cached``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js.errors import APIError

from modelmarket.adapters.bus.changes import NatsChangeFeed, changes_subject
from modelmarket.adapters.bus.jetstream import EVENT_RECORD_MAX_BYTES
from modelmarket.adapters.store import SqlStore
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.gateway.invalidation import Invalidator
from modelmarket.metering.consumer import REJECT_PAYLOAD_MAX
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.partitions import partition_of
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

PARTITIONS = 2
NOW = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def platform(store: SqlStore, tmp_path: Path, nats_server: Any, bus_namespace: str) -> Iterator[Platform]:
    settings = Settings(
        home=tmp_path / "home", bus_url=nats_server.url, bus_namespace=bus_namespace, bus_partitions=PARTITIONS
    )
    plat = bootstrap(settings, store=store, clock=lambda: NOW, runtimes=PluginRuntimes())
    try:
        yield plat
    finally:
        plat.close()


def _account_in(partition: int) -> str:
    return next(a for a in (f"acc_{i}" for i in range(100)) if partition_of(a, PARTITIONS) == partition)


def _event(event_id: str, account: str, quantity: int = 3) -> UsageEvent:
    return UsageEvent(
        id=event_id,
        source="gateway-1",
        account_id=account,
        time=datetime(2026, 11, 3, 10, tzinfo=UTC),
        model="digits",
        version="1.0.0",
        provider_account_id="acc_p",
        unit_kind=UnitKind.REQUEST,
        quantity=quantity,
        unit_price=Decimal("0.0010"),
        currency="USD",
        latency_ms=Decimal("2.5"),
    )


async def _publish(url: str, items: list[tuple[str, bytes]]) -> list[str]:
    """Publish raw (subject, payload) messages as an intruder would, with JetStream acks; the errors, in order."""
    nc = await nats.connect(url)
    errors = []
    try:
        js = nc.jetstream()
        for subject, payload in items:
            try:
                await js.publish(subject, payload, timeout=5)
                errors.append("")
            except APIError as exc:
                errors.append(str(exc))
    finally:
        await nc.close()
    return errors


def _rows(plat: Platform, query: str) -> list[Any]:
    with plat.store.read() as uow:
        return list(uow.conn.exec_driver_sql(query).all())


def test_forged_records_on_the_usage_subjects_bill_nothing_and_are_kept_small(
    platform: Platform, nats_server: Any, bus_namespace: str
) -> None:
    ns = bus_namespace
    a0, a1 = _account_in(0), _account_in(1)
    good = [_event("req_good0", a0), _event("req_good1", a1)]
    platform.metering.open_partition(0).close()  # the streams exist (a gateway or consumer made them)
    negative = orjson.loads(_event("req_neg", a1).encode())
    negative["data"]["quantity"] = -500
    misplaced = _event("req_misplaced", a1, quantity=1000)  # a1's events belong in partition 1
    errors = asyncio.run(
        _publish(
            nats_server.url,
            [
                (f"{ns}.usage.p0.junk", b"\xff\x00 not json"),  # offset 1 of p0
                (f"{ns}.usage.p1.junk", b"{}" + b" " * (EVENT_RECORD_MAX_BYTES - 200)),  # offset 1 of p1, ~64 KiB
                (f"{ns}.usage.p1.req_neg", orjson.dumps(negative)),
                (f"{ns}.usage.p0.req_misplaced", misplaced.encode()),
                (f"{ns}.usage.p0.huge", b"x" * (EVENT_RECORD_MAX_BYTES + 1)),  # over the stream's bound
            ],
        )
    )
    assert errors[:4] == ["", "", "", ""]
    assert "maximum" in errors[4].lower() or "size" in errors[4].lower(), errors[4]  # the server refused it
    platform.metering.append([(e.account_id, e.id, e.encode()) for e in good])
    platform.metering.catch_up()
    assert platform.metering.halted() is None
    billed = _rows(platform, "SELECT event_id, quantity_base FROM usage_events ORDER BY event_id")
    assert billed == [("req_good0", 3), ("req_good1", 3)]  # the forged ones bill nothing
    rejects = _rows(
        platform, "SELECT log_partition, log_offset, error, LENGTH(payload) FROM metering_rejects ORDER BY 1, 2"
    )
    # Both partitions' junk sits at offset 1: each is kept (the key is partition and offset).
    assert [(p, o) for p, o, _, _ in rejects] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    errors_by_place = {(p, o): e for p, o, e, _ in rejects}
    assert "belong in partition 1" in errors_by_place[(0, 2)]
    assert "negative" in errors_by_place[(1, 2)]
    assert all(size <= REJECT_PAYLOAD_MAX + 40 for *_, size in rejects)  # 64 KiB of junk kept as 8 KiB
    # A NUL byte (PostgreSQL's text refuses it, which once stalled metering on that record) is kept escaped.
    (junk,) = _rows(platform, "SELECT payload FROM metering_rejects WHERE log_partition = 0 AND log_offset = 1")
    assert junk[0] == "\\xff\\x00 not json"
    assert platform.ledger.verify().ok


def test_a_flood_of_change_announcements_costs_a_few_checks(nats_server: Any, bus_namespace: str) -> None:
    """20,000 empty messages on ``{ns}.changes``: the replica's checks never overlap and coalesce, so it makes a
    few of them (one cheap query each, nothing reloaded while the audit chain did not move), and a real change
    made during the flood still takes effect."""
    reads: list[int] = []
    actions: list[str] = []
    reloaded: list[str] = []
    lock = threading.Lock()

    def read_changes(after_seq: int, limit: int) -> list[tuple[int, str]]:
        time.sleep(0.005)  # a store round trip
        with lock:
            reads.append(after_seq)
            return [(seq, a) for seq, a in enumerate(actions, start=1) if seq > after_seq][:limit]

    def head() -> int:
        with lock:
            return len(actions)

    async def reload_routing() -> None:
        reloaded.append("routing")

    feed = NatsChangeFeed(nats_server.url, changes_subject(bus_namespace))
    flood = 20_000

    async def scenario() -> None:
        inv = Invalidator(read_changes, head, {"routing": reload_routing}, poll_s=3600, feed=feed)
        inv.seen(0)
        inv.start()
        try:
            await asyncio.sleep(0.5)  # subscribed
            nc = await nats.connect(nats_server.url)
            try:
                for i in range(flood):
                    await nc.publish(changes_subject(bus_namespace), b"x" * 100)
                    if i == flood // 2:
                        with lock:
                            actions.append("route.changed")
                await nc.flush()
            finally:
                await nc.close()
            deadline = time.monotonic() + 20
            while not reloaded and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # let the checks the flood queued finish
        finally:
            await inv.stop()

    try:
        asyncio.run(scenario())
    finally:
        feed.close()
    print(f"[change feed] {flood} messages made {len(reads)} checks, reloads {reloaded}")
    assert reloaded == ["routing"]  # the change made during the flood, once
    assert 1 <= len(reads) < flood // 20  # coalesced: a check runs at most every store round trip
