"""Metering over a partitioned log (embedded and JetStream): every appended event is billed exactly once, each
partition by its own consumer, and a rebuild gives the same derived state."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from modelmarket.adapters.store import SqlStore
from modelmarket.billing.rating import receivable
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.metering.consumer import CONSUMER_NAME
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.partitions import consumer_name, partition_of
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

PARTITIONS = 3
ACCOUNTS = [f"acc_{i}" for i in range(7)]
NOW = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture(params=["embedded", "jetstream"])
def platform(request: pytest.FixtureRequest, store: SqlStore, tmp_path: Path) -> Iterator[Platform]:
    extra: dict[str, Any] = {}
    if request.param == "jetstream":
        extra["bus_url"] = request.getfixturevalue("nats_server").url
        extra["bus_namespace"] = request.getfixturevalue("bus_namespace")
    settings = Settings(home=tmp_path / "home", bus_partitions=PARTITIONS, **extra)
    plat = bootstrap(settings, store=store, clock=lambda: NOW, runtimes=PluginRuntimes())
    try:
        yield plat
    finally:
        plat.close()


def _event(i: int) -> UsageEvent:
    return UsageEvent(
        id=f"req_{i:05d}",
        source="gateway-1",
        account_id=ACCOUNTS[i % len(ACCOUNTS)],
        time=datetime(2026, 11, 3, 10, i % 60, tzinfo=UTC),
        model="digits",
        version="1.0.0",
        provider_account_id="acc_p",
        unit_kind=UnitKind.REQUEST,
        quantity=1 + i % 4,
        unit_price=Decimal("0.0010") + Decimal(i % 3) / 1000,
        currency="USD",
        latency_ms=Decimal("2.5"),
    )


def _append(plat: Platform, events: list[UsageEvent]) -> None:
    """Through the gateway's own appender (one writer per partition, or JetStream publishes per iteration)."""
    writer = plat.metering.log_config.writer(batch_max=64, queue_max=10_000)

    async def run() -> None:
        writer.start()
        try:
            await asyncio.gather(*(writer.append(e.id, e.encode()) for e in events))
        finally:
            writer.stop()

    asyncio.run(run())


def _expected(events: list[UsageEvent]) -> dict[str, Fraction]:
    owed: dict[str, Fraction] = {}
    for e in events:
        owed[e.account_id] = owed.get(e.account_id, Fraction(0)) + Fraction(e.quantity) * Fraction(e.unit_price)
    return owed


def _billed(plat: Platform) -> tuple[int, dict[str, Fraction]]:
    with plat.store.read() as uow:
        rows = int(uow.conn.exec_driver_sql("SELECT COUNT(*) FROM usage_events").scalar())
        owed = {a: sum((x.amount for x in uow.ledger.entries_of(receivable(a))), Fraction(0)) for a in ACCOUNTS}
    return rows, owed


def test_three_partitions_bill_exactly_what_was_appended(platform: Platform) -> None:
    events = [_event(i) for i in range(70)]
    _append(platform, events[:40])
    _append(platform, events[30:])  # ten again: the log and the consumer keep each once
    assert {partition_of(a, PARTITIONS) for a in ACCOUNTS} == {0, 1, 2}
    assert platform.metering.catch_up() >= 70
    rows, owed = _billed(platform)
    assert rows == 70
    assert owed == _expected(events)
    with platform.store.read() as uow:
        offsets = {p: uow.usage.offset(consumer_name(CONSUMER_NAME, p)) for p in range(PARTITIONS)}
    assert all(offsets[p] > 0 for p in range(PARTITIONS))  # each partition was applied by its own consumer
    assert platform.ledger.verify().ok
    assert all(r.ok for r in platform.audit.verify_trees()), [r.problems for r in platform.audit.verify_trees()]
    report = platform.ledger.rebuild()
    assert report.identical and report.events == 70
    assert _billed(platform) == (70, _expected(events))  # and the same bill after it
    assert all(r.ok for r in platform.audit.verify_trees())


def test_following_three_partitions_in_parallel(platform: Platform) -> None:
    stop = threading.Event()
    follower = threading.Thread(target=platform.metering.follow, args=(stop,))
    follower.start()
    try:
        events = [_event(i) for i in range(100, 160)]
        _append(platform, events)
        deadline = time.monotonic() + 30
        while _billed(platform)[0] < 60:
            assert time.monotonic() < deadline, "metering did not apply the events within 30 s"
            time.sleep(0.1)
    finally:
        stop.set()
        follower.join(timeout=60)
    assert not follower.is_alive()
    assert _billed(platform) == (60, _expected(events))


def test_partitions_lock_each_other_out_only_per_partition_and_metering_writes_wait_for_all(
    store: SqlStore, tmp_path: Path
) -> None:
    """PostgreSQL (SQLite serializes every writer anyway): two partitions' batches run at once; a
    ``write(Lock.METERING)`` (a plan change, an invoice's finalization, a rebuild) waits for every partition."""
    from modelmarket.core.uow import Lock

    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE serializes every writer: no parallel partitions to check")
    plat = bootstrap(Settings(home=tmp_path / "home", bus_partitions=PARTITIONS), store=store, clock=lambda: NOW)
    metering = plat.metering
    entered: dict[str, float] = {}

    def take(name: str, ctx: Any) -> None:
        with ctx as _:
            entered[name] = time.monotonic()

    with metering._partition_write(1):
        other = threading.Thread(target=take, args=("p2", metering._partition_write(2)))
        exclusive = threading.Thread(target=take, args=("all", store.write(Lock.METERING)))
        other.start()
        other.join(timeout=10)
        exclusive.start()
        time.sleep(0.5)
        assert "p2" in entered and "all" not in entered  # p2 ran beside p1; the exclusive one waits
        held_until = time.monotonic()
    exclusive.join(timeout=10)
    assert entered["all"] >= held_until
    plat.close()


def test_a_rebuild_regrows_the_usage_tree_in_the_order_partitions_were_interleaved(platform: Platform) -> None:
    """Partition consumers apply small batches in turn, as parallel followers do: the usage tree's leaves then mix
    the partitions. A rebuild must replay them in that order, or the regrown tree's root differs from its signed
    checkpoints and metering halts."""
    events = [_event(i) for i in range(200, 263)]
    _append(platform, events)
    logs = [platform.metering.open_partition(p) for p in range(PARTITIONS)]
    try:
        while sum(platform.metering.consume_batch(logs[p], limit=2, partition=p) for p in (2, 0, 1)):
            pass
    finally:
        for log in logs:
            log.close()
    with platform.store.read() as uow:
        order = [partition_of(facts.account_id, PARTITIONS) for _, facts in uow.proofs.usage_leaves(-1, 1000)]
    assert len(order) == 63 and order[:6] == [2, 2, 0, 0, 1, 1]  # interleaved, not one partition after another
    assert all(r.ok for r in platform.audit.verify_trees())
    report = platform.ledger.rebuild()
    assert report.identical and report.events == 63
    assert platform.metering.halted() is None
    assert _billed(platform) == (63, _expected(events))
    assert all(r.ok for r in platform.audit.verify_trees()), [r.problems for r in platform.audit.verify_trees()]
    with platform.store.read() as uow:
        again = [partition_of(facts.account_id, PARTITIONS) for _, facts in uow.proofs.usage_leaves(-1, 1000)]
    assert again == order
