"""The metering consumer (event log -> usage tables, once per event id) and the group-commit writer."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from modelmarket.adapters.bus import EventLogFull, GroupCommitWriter, SqliteEventLog
from modelmarket.adapters.store import Store
from modelmarket.adapters.store import schema as t
from modelmarket.core.money import fraction_to_decimal
from modelmarket.metering.consumer import CONSUMER_NAME, catch_up, consume_batch
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UNIT_DIVISOR
from modelmarket.metering.usage import usage_summary

CONSUMER = "acc_consumer"
_ids = itertools.count(1)


def event(
    *,
    model: str = "digits",
    unit_kind: str = "image",
    iu: str = "1",
    price: str = "0.0010",
    currency: str = "USD",
    account: str = CONSUMER,
    when: datetime = datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
    event_id: str | None = None,
) -> UsageEvent:
    return UsageEvent(
        id=event_id or f"req_{next(_ids):06d}",
        source="gateway-1",
        account_id=account,
        time=when,
        model=model,
        version="1.0.0",
        provider_account_id="acc_provider",
        unit_kind=unit_kind,
        quantity=int((Decimal(iu) * UNIT_DIVISOR[unit_kind]).to_integral_value()),
        quantity_iu=Decimal(iu),
        unit_price=Decimal(price),
        currency=currency,
        latency_ms=Decimal("4.2"),
    )


@pytest.fixture()
def event_log(tmp_path: Path) -> Iterator[SqliteEventLog]:
    log = SqliteEventLog(tmp_path / "log" / "events.db")
    yield log
    log.close()


def append(event_log: SqliteEventLog, *events: UsageEvent) -> None:
    event_log.append_many([(e.id, e.encode()) for e in events])


def summary_totals(store: Store, account: str = CONSUMER) -> tuple[int, Decimal, dict[str, Decimal]]:
    with store.read() as conn:
        summary = usage_summary(conn, account)
    totals = {c: fraction_to_decimal(v) for c, v in summary.totals_by_currency().items()}
    return summary.total_events, fraction_to_decimal(summary.total_iu), totals


def daily_rows(store: Store) -> list[tuple[Any, ...]]:
    d = t.usage_daily.c
    with store.read() as conn:
        rows = conn.execute(
            select(d.account_id, d.model_name, d.day, d.events, d.quantity_iu, d.amount).order_by(
                d.account_id, d.model_name, d.day
            )
        )
        return [tuple(r) for r in rows]


def mixed_events() -> list[UsageEvent]:
    return [
        event(iu="3", price="0.0010"),  # 3 images: 0.0030
        event(iu="1", price="0.0010"),  # 0.0010
        event(model="sentiment", unit_kind="tokens_1k", iu="0.004", price="0.0200"),  # 0.00008
        event(model="sentiment", unit_kind="tokens_1k", iu="1.235", price="0.0200"),  # 0.0247
        event(model="speech-to-text", unit_kind="audio_minute", iu="0.05", price="0.0060"),  # 0.0003
        event(account="acc_someone_else", iu="100"),  # not this account's usage
    ]


def test_catch_up_aggregates_usage_exactly(store: Store, event_log: SqliteEventLog) -> None:
    append(event_log, *mixed_events())
    assert catch_up(store, event_log) == 6

    events, iu, amounts = summary_totals(store)
    assert events == 5
    assert iu == Decimal("5.289")  # 3 + 1 + 0.004 + 1.235 + 0.05
    assert amounts == {"USD": Decimal("0.02908")}  # 0.0030 + 0.0010 + 0.00008 + 0.0247 + 0.0003
    assert isinstance(amounts["USD"], Decimal)

    with store.read() as conn:
        by_model = {m.model: m for m in usage_summary(conn, CONSUMER).models}
    assert sorted(by_model) == ["digits", "sentiment", "speech-to-text"]
    assert (by_model["digits"].events, by_model["digits"].quantity_iu) == (2, Decimal(4))
    assert by_model["sentiment"].amount == Decimal("0.02478")
    assert by_model["sentiment"].unit_kind == "tokens_1k"
    assert summary_totals(store, "acc_someone_else")[:2] == (1, Decimal(100))


def test_catch_up_again_adds_nothing(store: Store, event_log: SqliteEventLog) -> None:
    append(event_log, *mixed_events())
    catch_up(store, event_log)
    before = (summary_totals(store), daily_rows(store))
    assert catch_up(store, event_log) == 0
    assert consume_batch(store, event_log) == 0
    assert (summary_totals(store), daily_rows(store)) == before


def test_new_events_after_catch_up_are_added(store: Store, event_log: SqliteEventLog) -> None:
    append(event_log, event(iu="2"))
    catch_up(store, event_log)
    append(event_log, event(iu="5"), event(iu="1"))
    assert catch_up(store, event_log) == 2
    assert summary_totals(store) == (3, Decimal("8"), {"USD": Decimal("0.0080")})


def test_small_batches_reach_the_same_totals(store: Store, event_log: SqliteEventLog) -> None:
    append(event_log, *mixed_events())
    while consume_batch(store, event_log, limit=2):
        pass
    assert summary_totals(store) == (5, Decimal("5.289"), {"USD": Decimal("0.02908")})


def test_the_same_event_id_counts_once(store: Store, event_log: SqliteEventLog) -> None:
    first = event(iu="3", event_id="req_dup")
    append(event_log, first, event(iu="1"))
    append(event_log, first)  # a retried append of the same event
    append(event_log, event(iu="999", event_id="req_dup"))  # same id, other payload: still the first one
    catch_up(store, event_log)
    assert summary_totals(store) == (2, Decimal(4), {"USD": Decimal("0.0040")})


def test_rereading_the_log_from_the_start_counts_each_event_once(store: Store, event_log: SqliteEventLog) -> None:
    append(event_log, *mixed_events())
    catch_up(store, event_log)
    before = (summary_totals(store), daily_rows(store))

    offsets = t.consumer_offsets.c
    with store.write() as conn:
        assert (
            conn.execute(select(offsets.log_offset).where(offsets.consumer == CONSUMER_NAME)).scalar_one()
            == event_log.last_offset()
        )
        conn.execute(update(t.consumer_offsets).values(log_offset=0))
    append(event_log, event(iu="10"))  # one genuinely new event mixed into the replay

    assert catch_up(store, event_log) == 7  # every record is read again...
    events, iu, amounts = summary_totals(store)
    assert events == before[0][0] + 1  # ...but only the new one counts
    assert iu == before[0][1] + 10
    assert amounts == {"USD": before[0][2]["USD"] + Decimal("0.0100")}
    with store.read() as conn:
        stored = conn.execute(select(t.usage_events.c.event_id)).scalars().all()
    assert len(stored) == len(set(stored)) == 7


def test_usage_is_aggregated_per_day(store: Store, event_log: SqliteEventLog) -> None:
    append(
        event_log,
        event(iu="1", when=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
        event(iu="2", when=datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
        event(iu="4", when=datetime(2024, 3, 1, 18, 30, tzinfo=UTC)),
        event(iu="8", when=datetime(2024, 3, 3, 9, 0, tzinfo=UTC), currency="EUR", price="0.0020"),
    )
    catch_up(store, event_log)
    assert daily_rows(store) == [
        (CONSUMER, "digits", "2024-02-29", 1, Decimal(1), Decimal("0.0010")),
        (CONSUMER, "digits", "2024-03-01", 2, Decimal(6), Decimal("0.0060")),
        (CONSUMER, "digits", "2024-03-03", 1, Decimal(8), Decimal("0.0160")),
    ]
    with store.read() as conn:
        march = usage_summary(conn, CONSUMER, since="2024-03-01", until="2024-03-02")
        leap_day = usage_summary(conn, CONSUMER, until="2024-02-29")
    assert (march.total_events, march.total_iu) == (2, Decimal(6))
    assert march.totals_by_currency() == {"USD": Decimal("0.0060")}
    assert (leap_day.total_events, leap_day.total_iu) == (1, Decimal(1))
    _, _, by_currency = summary_totals(store)
    assert by_currency == {"USD": Decimal("0.0070"), "EUR": Decimal("0.0160")}


def test_day_is_the_utc_day_whatever_the_offset(store: Store, event_log: SqliteEventLog) -> None:
    east = timezone(timedelta(hours=2))
    append(event_log, event(iu="1", when=datetime(2024, 3, 1, 1, 0, tzinfo=east)))
    catch_up(store, event_log)
    assert [row[2] for row in daily_rows(store)] == ["2024-02-29"]


def test_audio_usage_is_exact_in_base_units(store: Store, event_log: SqliteEventLog) -> None:
    sixtieth = "0.01666666666666666666666666667"  # what one second looks like as a 28-digit IU
    append(event_log, *(event(unit_kind="audio_minute", iu=sixtieth, price="0.0060") for _ in range(3)))
    catch_up(store, event_log)
    _, iu, amounts = summary_totals(store)
    assert iu == Decimal("0.05")  # 3 seconds / 60, exactly: summed in seconds, not in rounded sixtieths
    assert amounts == {"USD": Decimal("0.0003")}


# -- group commit ----------------------------------------------------------------------------------------


def test_group_commit_writer_shares_commits_under_load(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = GroupCommitWriter(path, "normal", batch_max=512, queue_max=1000)
    events = [event() for _ in range(200)]

    async def serve_all() -> None:
        await asyncio.gather(*(writer.append(e.id, e.encode()) for e in events))

    writer.start()
    try:
        asyncio.run(asyncio.wait_for(serve_all(), timeout=30))
    finally:
        writer.stop()

    log = SqliteEventLog(path)
    try:
        records = log.read(0, 1000)
    finally:
        log.close()
    assert sorted(r.event_id for r in records) == sorted(e.id for e in events)
    payloads = {e.id: e.encode() for e in events}
    assert all(r.payload == payloads[r.event_id] for r in records)
    assert writer.appended == 200
    assert 1 <= writer.commits < 200


def test_group_commit_respects_batch_max(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    writer = GroupCommitWriter(path, "normal", batch_max=4, queue_max=100)
    events = [event() for _ in range(10)]

    async def queue_then_start() -> None:
        futures = [writer.append(e.id, e.encode()) for e in events]  # queued before the writer runs
        writer.start()
        await asyncio.wait_for(asyncio.gather(*futures), timeout=30)

    try:
        asyncio.run(queue_then_start())
    finally:
        writer.stop()
    assert writer.commits == 3  # 4 + 4 + 2
    log = SqliteEventLog(path)
    try:
        assert [r.event_id for r in log.read(0, 100)] == [e.id for e in events]  # in arrival order
    finally:
        log.close()


def test_group_commit_queue_is_bounded(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "events.db", "normal", batch_max=8, queue_max=2)

    async def overfill() -> None:
        first = [writer.append(f"req_{i}", b"{}") for i in range(2)]
        with pytest.raises(EventLogFull, match="queue bound"):
            writer.append("req_2", b"{}")
        for fut in first:
            fut.cancel()

    asyncio.run(overfill())
    assert writer.commits == 0


def test_a_record_that_is_not_a_usage_event_is_set_aside_not_blocking(store: Store, event_log: SqliteEventLog) -> None:
    append(event_log, event(iu="2"))
    event_log.append_many([("junk-1", b'{"type": "something.else"}')])
    append(event_log, event(iu="3"))
    catch_up(store, event_log)
    assert summary_totals(store)[:2] == (2, Decimal(5))  # the events on both sides of the bad one are metered
    with store.read() as conn:
        rejects = conn.execute(select(t.metering_rejects.c.event_id, t.metering_rejects.c.error)).all()
    assert [r.event_id for r in rejects] == ["junk-1"] and "not a usage event" in rejects[0].error
    with store.write() as conn:
        conn.execute(update(t.consumer_offsets).values(log_offset=0))
    catch_up(store, event_log)  # re-reading records the reject once
    with store.read() as conn:
        assert len(conn.execute(select(t.metering_rejects)).all()) == 1


def test_events_written_before_base_units_were_recorded_still_meter(store: Store, event_log: SqliteEventLog) -> None:
    doc = json.loads(event(unit_kind="tokens_1k", iu="1.5", price="0.0200").encode())
    del doc["data"]["quantity"], doc["data"]["base_unit"]
    event_log.append_many([(doc["id"], json.dumps(doc).encode())])
    catch_up(store, event_log)
    assert summary_totals(store) == (1, Decimal("1.5"), {"USD": Decimal("0.03")})
