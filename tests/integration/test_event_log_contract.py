"""One contract for every event log (the embedded SQLite log and NATS JetStream), and the partitions over both."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from modelmarket.adapters.bus.jetstream import JetStreamBus, JetStreamEventLog
from modelmarket.adapters.bus.opening import LogConfig
from modelmarket.adapters.bus.sqlite_log import SqliteEventLog
from modelmarket.metering.partitions import PartitionCountChanged, partition_of
from modelmarket.metering.ports import EventLog, KeptAnswer

Opener = Callable[[], EventLog]


@pytest.fixture(params=["embedded", "jetstream"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[EventLog] = []
    if request.param == "embedded":

        def make() -> EventLog:
            log = SqliteEventLog(tmp_path / "events.db", answer_ttl_s=60)
            opened.append(log)
            return log

    else:
        server = request.getfixturevalue("nats_server")
        namespace = request.getfixturevalue("bus_namespace")

        def make() -> EventLog:
            log = JetStreamEventLog(JetStreamBus(server.url, namespace, 1, answer_ttl_s=60), 0, "metering")
            opened.append(log)
            return log

    yield make
    for log in opened:
        log.close()


def _kept(event_id: str, body: bytes) -> KeptAnswer:
    return KeptAnswer(event_id, "ab" * 32, b"application/json", b"12", body, time.time())


def test_append_dedup_kept_lookup_read_ack_and_reopen(open_log: Opener) -> None:
    log = open_log()
    assert log.last_offset() == 0 and log.read(0, 10) == []
    assert log.append_many([("e1", b"one"), ("e2", b"two")], [_kept("e2", b"answer")]) == set()
    assert log.append_many([("e1", b"one"), ("e3", b"three")]) == set()  # e1 is not added twice
    assert log.append_many([("e2", b"two")], [_kept("e2", b"other answer")]) == {"e2"}  # already logged
    records = log.read(0, 10)
    assert [(r.event_id, r.payload) for r in records] == [("e1", b"one"), ("e2", b"two"), ("e3", b"three")]
    first, second, third = (r.offset for r in records)
    assert 0 < first < second < third == log.last_offset()  # increasing (the embedded log may skip numbers)
    assert [r.event_id for r in log.read(first, 1)] == ["e2"]  # from an offset, with a limit
    assert [r.event_id for r in log.read(second, 10)] == ["e3"]
    log.ack(third)
    assert log.read(third, 10) == []
    found = log.lookup("e2")
    assert (
        found.billed and found.kept is not None and found.kept.body == b"answer" and found.kept.header_length == b"12"
    )
    assert log.lookup("e1").billed and log.lookup("e1").kept is None
    assert not log.lookup("nope").billed
    log.close()
    again = open_log()  # reopened: everything is still there, and reading from an older offset works
    assert [r.event_id for r in again.read(0, 10)] == ["e1", "e2", "e3"]
    assert again.last_offset() == third and again.lookup("e2").kept is not None


def test_jetstream_survives_a_server_restart_without_losing_or_doubling(nats_server: Any, bus_namespace: str) -> None:
    log = JetStreamEventLog(JetStreamBus(nats_server.url, bus_namespace, 1), 0, "metering")
    try:
        log.append_many([(f"r{i}", b"x") for i in range(5)])
        assert [r.offset for r in log.read(0, 3)] == [1, 2, 3]  # delivered, not acked: the store's offset rules
        nats_server.restart(kill=True)
        log.append_many([(f"r{i}", b"x") for i in range(3, 8)])  # reconnects by itself; r3, r4 deduplicated
        assert [r.event_id for r in log.read(3, 100)] == ["r3", "r4", "r5", "r6", "r7"]
        assert log.last_offset() == 8
    finally:
        log.close()


def test_jetstream_readers_in_two_processes_follow_the_stored_offset(nats_server: Any, bus_namespace: str) -> None:
    """The gateway's catch-up and the metering child read through one durable consumer: whoever reads next
    starts from the offset the store holds, wherever the other left the consumer."""
    a = JetStreamEventLog(JetStreamBus(nats_server.url, bus_namespace, 1), 0, "metering")
    b = JetStreamEventLog(JetStreamBus(nats_server.url, bus_namespace, 1), 0, "metering")
    try:
        a.append_many([(f"r{i}", b"x") for i in range(1, 6)])
        assert [r.event_id for r in a.read(0, 2)] == ["r1", "r2"]
        assert [r.event_id for r in b.read(2, 2)] == ["r3", "r4"]  # b's transaction then rolls back: offset 2
        assert [r.event_id for r in a.read(2, 10)] == ["r3", "r4", "r5"]  # a expected 3: the consumer was at 5
        a.ack(5)
        assert b.read(5, 10) == []
    finally:
        a.close()
        b.close()


def test_a_jetstream_append_during_an_outage_fails_clearly_within_its_bound(
    nats_server: Any, bus_namespace: str
) -> None:
    from modelmarket.metering.ports import EventLogUnavailable

    bus = JetStreamBus(nats_server.url, bus_namespace, 1, append_timeout_s=1.0)
    log = JetStreamEventLog(bus, 0, None)
    try:
        nats_server.stop(kill=True)
        started = time.monotonic()
        with pytest.raises(EventLogUnavailable, match="did not acknowledge"):
            log.append_many([("lost", b"x")])
        assert time.monotonic() - started < 10  # bounded (a correctness bound, not a speed measurement)
    finally:
        nats_server.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            log.append_many([("after", b"y")])
            break
        except EventLogUnavailable:
            assert time.monotonic() < deadline
    assert [r.event_id for r in log.read(0, 10)] == ["after"]  # the failed append was not logged
    log.close()


# -- partitions ---------------------------------------------------------------------------------------------------


def test_partition_of_is_stable_and_spreads_accounts() -> None:
    assert partition_of("acc_1", 1) == 0
    assert partition_of("acc_1", 3) == partition_of("acc_1", 3)
    spread = {partition_of(f"acc_{i}", 3) for i in range(30)}
    assert spread == {0, 1, 2}
    assert partition_of("acc_x", 4) == int.from_bytes(__import__("hashlib").sha256(b"acc_x").digest()[:8], "big") % 4


def _config(tmp_path: Path, partitions: int, bus_url: str | None = None, namespace: str = "mm") -> LogConfig:
    return LogConfig(bus_url, namespace, partitions, tmp_path / "events.db", "normal", 60.0)


def test_a_changed_partition_count_is_refused_once_events_exist_embedded(tmp_path: Path) -> None:
    _config(tmp_path, 2).open_log(0).close()  # no event yet: the count may still change
    log = _config(tmp_path, 3).open_log(2)
    log.append_many([("e1", b"x")])  # an event in partition 2 only
    log.close()
    with pytest.raises(PartitionCountChanged, match="MODELMARKET_BUS_PARTITIONS=3"):
        _config(tmp_path, 2).open_log(0)
    _config(tmp_path, 3).open_log(1).close()  # the recorded count opens as before


def test_a_changed_partition_count_is_refused_once_events_exist_jetstream(nats_server: Any, bus_namespace: str) -> None:
    JetStreamBus(nats_server.url, bus_namespace, 2).close()  # no event yet: the count may still change
    log = JetStreamEventLog(JetStreamBus(nats_server.url, bus_namespace, 3), 2, None)
    log.append_many([("e1", b"x")])
    log.close()
    with pytest.raises(PartitionCountChanged, match="created with 3"):
        JetStreamBus(nats_server.url, bus_namespace, 2)
    JetStreamBus(nats_server.url, bus_namespace, 3).close()


def test_one_accounts_events_keep_their_order_in_one_partition(tmp_path: Path) -> None:
    import asyncio

    from modelmarket.metering.events import UsageEvent  # noqa: F401 - the payload shape the writer routes by

    config = _config(tmp_path, 3)
    writer = config.writer(batch_max=64, queue_max=1000)

    async def run() -> None:
        writer.start()
        try:
            futures = []
            for i in range(30):
                account = f"acc_{i % 5}"
                payload = f'{{"subject": "{account}", "n": {i}}}'.encode()
                futures.append(writer.append(f"ev{i}", payload))
            await asyncio.gather(*futures)
        finally:
            writer.stop()

    asyncio.run(run())
    seen: dict[str, list[int]] = {}
    for p in range(3):
        log = config.open_log(p)
        for record in log.read(0, 100):
            import json

            doc = json.loads(record.payload)
            assert partition_of(doc["subject"], 3) == p
            seen.setdefault(doc["subject"], []).append(doc["n"])
        log.close()
    assert sorted(seen) == [f"acc_{i}" for i in range(5)]
    for account, ns in seen.items():
        assert ns == sorted(ns) and len(ns) == 6, account
    _ = Decimal  # keep the import list honest for readers: amounts are exact elsewhere


@pytest.mark.parametrize("bus", ["embedded", "jetstream"])
def test_a_second_gateway_serving_the_same_idempotent_call_gets_the_logged_answer(
    bus: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import asyncio

    from modelmarket.metering.ports import AlreadyLogged

    url = namespace = None
    if bus == "jetstream":
        url, namespace = request.getfixturevalue("nats_server").url, request.getfixturevalue("bus_namespace")
    config = _config(tmp_path, 2, url, namespace or "mm")
    payload = b'{"subject": "acc_7"}'

    async def run() -> None:
        first, second = config.writer(16, 16), config.writer(16, 16)  # two gateways
        first.start()
        second.start()
        try:
            await first.append("idem_1", payload, _kept("idem_1", b"first answer"))
            with pytest.raises(AlreadyLogged):
                await second.append("idem_1", payload, _kept("idem_1", b"second answer"))
            found = second.lookup("idem_1")
            assert found.billed and found.kept is not None and found.kept.body == b"first answer"
        finally:
            first.stop()
            second.stop()

    asyncio.run(run())
    log = config.open_log(partition_of("acc_7", 2), None)
    assert [r.event_id for r in log.read(0, 10)] == ["idem_1"]  # billed once, in the account's partition
    log.close()
