"""The metering consumer (event log -> usage tables, once per event id) and the group-commit writer."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from modelmarket.adapters.bus import EventLogFull, GroupCommitWriter, SqliteEventLog
from modelmarket.adapters.store import SqlStore
from modelmarket.adapters.store import schema as t
from modelmarket.core.errors import MeteringHalted
from modelmarket.core.uow import Lock
from modelmarket.metering import MeteringService, UsageService
from modelmarket.metering.consumer import CONSUMER_NAME
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.metering.usage import UsageSummary, summarize

CONSUMER = "acc_consumer"
NOW = datetime(2024, 3, 5, 8, 0, tzinfo=UTC)
_ids = itertools.count(1)


def event(
    *,
    model: str = "digits",
    unit_kind: UnitKind = UnitKind.IMAGE,
    quantity: int = 1,
    price: str = "0.0010",
    currency: str = "USD",
    account: str = CONSUMER,
    when: datetime = datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
    event_id: str | None = None,
) -> UsageEvent:
    """A usage event of ``quantity`` base units (images, tokens, seconds) at ``price`` per IU."""
    return UsageEvent(
        id=event_id or f"req_{next(_ids):06d}",
        source="gateway-1",
        account_id=account,
        time=when,
        model=model,
        version="1.0.0",
        provider_account_id="acc_provider",
        unit_kind=unit_kind,
        quantity=quantity,
        unit_price=Decimal(price),
        currency=currency,
        latency_ms=Decimal("4.2"),
    )


@pytest.fixture()
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "log" / "events.db"


@pytest.fixture()
def event_log(log_path: Path) -> Iterator[SqliteEventLog]:
    log = SqliteEventLog(log_path)
    yield log
    log.close()


@pytest.fixture()
def metering(store: SqlStore, log_path: Path, event_log: SqliteEventLog) -> MeteringService:
    """The consumer over the test's log (``catch_up`` opens and closes its own reader of the same file)."""
    return MeteringService(store, lambda: SqliteEventLog(log_path), clock=lambda: NOW, poll_s=0.01)


def append(event_log: SqliteEventLog, *events: UsageEvent) -> None:
    event_log.append_many([(e.id, e.encode()) for e in events])


def usage_summary(store: SqlStore, account: str, since: str | None = None, until: str | None = None) -> UsageSummary:
    """What the consumer wrote, read as it stands (no catch-up first, unlike ``UsageService``)."""
    with store.read() as uow:
        return summarize(account, uow.usage.daily_usage(account, since, until), since, until)


def summary_totals(store: SqlStore, account: str = CONSUMER) -> tuple[int, Fraction, dict[str, Fraction]]:
    summary = usage_summary(store, account)
    return summary.total_events, summary.total_iu, summary.totals_by_currency()


def daily_rows(store: SqlStore) -> list[tuple[Any, ...]]:
    d = t.usage_daily.c
    with store.read() as uow:
        rows = uow.conn.execute(
            select(d.account_id, d.model_name, d.day, d.events, d.quantity_base, d.amount_numerator).order_by(
                d.account_id, d.model_name, d.day
            )
        )
        return [tuple(r) for r in rows]


def reset_offset(store: SqlStore) -> None:
    with store.write(Lock.METERING) as uow:
        uow.usage.save_offset(CONSUMER_NAME, 0)


def mixed_events() -> list[UsageEvent]:
    tokens, seconds = UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE
    return [
        event(quantity=3, price="0.0010"),  # 3 images: 0.0030
        event(quantity=1, price="0.0010"),  # 0.0010
        event(model="sentiment", unit_kind=tokens, quantity=4, price="0.0200"),  # 0.004 IU: 0.00008
        event(model="sentiment", unit_kind=tokens, quantity=1235, price="0.0200"),  # 1.235 IU: 0.0247
        event(model="speech-to-text", unit_kind=seconds, quantity=3, price="0.0060"),  # 0.05 IU: 0.0003
        event(account="acc_someone_else", quantity=100),  # not this account's usage
    ]


def test_catch_up_aggregates_usage_exactly(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, *mixed_events())
    assert metering.catch_up() == 6

    events, iu, amounts = summary_totals(store)
    assert events == 5
    assert iu == Fraction("5.289")  # 3 + 1 + 0.004 + 1.235 + 0.05
    assert amounts == {"USD": Fraction("0.02908")}  # 0.0030 + 0.0010 + 0.00008 + 0.0247 + 0.0003
    assert isinstance(amounts["USD"], Fraction)

    by_model = {m.model: m for m in usage_summary(store, CONSUMER).models}
    assert sorted(by_model) == ["digits", "sentiment", "speech-to-text"]
    assert (by_model["digits"].events, by_model["digits"].quantity_base, by_model["digits"].iu_exact) == (2, 4, 4)
    assert by_model["sentiment"].amount_exact == Fraction("0.02478")
    assert (by_model["sentiment"].unit_kind, by_model["sentiment"].quantity_base) == ("tokens_1k", 1239)
    assert by_model["speech-to-text"].to_json()["quantity"] == 3
    assert summary_totals(store, "acc_someone_else")[:2] == (1, Fraction(100))


def test_catch_up_again_adds_nothing(store: SqlStore, event_log: SqliteEventLog, metering: MeteringService) -> None:
    append(event_log, *mixed_events())
    metering.catch_up()
    before = (summary_totals(store), daily_rows(store))
    assert metering.catch_up() == 0
    assert metering.consume_batch(event_log) == 0
    assert (summary_totals(store), daily_rows(store)) == before


def test_new_events_after_catch_up_are_added(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, event(quantity=2))
    metering.catch_up()
    append(event_log, event(quantity=5), event(quantity=1))
    assert metering.catch_up() == 2
    assert summary_totals(store) == (3, Fraction(8), {"USD": Fraction("0.0080")})


def test_small_batches_reach_the_same_totals(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, *mixed_events())
    batches = 0
    while metering.consume_batch(event_log, limit=2):
        batches += 1
    assert batches == 3
    assert summary_totals(store) == (5, Fraction("5.289"), {"USD": Fraction("0.02908")})


def test_catch_up_stops_at_max_records_and_resumes_from_its_offset(store: SqlStore, event_log: SqliteEventLog) -> None:
    metering = MeteringService(store, lambda: SqliteEventLog(event_log.path), clock=lambda: NOW, batch_max=2)
    append(event_log, *mixed_events())
    assert metering.catch_up(max_records=3) == 3
    assert summary_totals(store)[0] == 3
    with store.read() as uow:
        assert uow.usage.offset(CONSUMER_NAME) == 3
    assert metering.catch_up() == 3
    assert summary_totals(store) == (5, Fraction("5.289"), {"USD": Fraction("0.02908")})


def test_the_same_event_id_counts_once(store: SqlStore, event_log: SqliteEventLog, metering: MeteringService) -> None:
    first = event(quantity=3, event_id="req_dup")
    append(event_log, first, event(quantity=1))
    append(event_log, first)  # a retried append of the same event
    append(event_log, event(quantity=999, event_id="req_dup"))  # same id, other payload: still the first one
    metering.catch_up()
    assert summary_totals(store) == (2, Fraction(4), {"USD": Fraction("0.0040")})


def test_rereading_the_log_from_the_start_counts_each_event_once(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, *mixed_events())
    metering.catch_up()
    before = (summary_totals(store), daily_rows(store))

    with store.read() as uow:
        assert uow.usage.offset(CONSUMER_NAME) == event_log.last_offset()
    reset_offset(store)
    append(event_log, event(quantity=10))  # one genuinely new event mixed into the replay

    assert metering.catch_up() == 7  # every record is read again...
    events, iu, amounts = summary_totals(store)
    assert events == before[0][0] + 1  # ...but only the new one counts
    assert iu == before[0][1] + 10
    assert amounts == {"USD": before[0][2]["USD"] + Fraction("0.0100")}
    with store.read() as uow:
        stored = uow.conn.execute(select(t.usage_events.c.event_id)).scalars().all()
    assert len(stored) == len(set(stored)) == 7


def test_usage_is_aggregated_per_day(store: SqlStore, event_log: SqliteEventLog, metering: MeteringService) -> None:
    append(
        event_log,
        event(quantity=1, when=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
        event(quantity=2, when=datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
        event(quantity=4, when=datetime(2024, 3, 1, 18, 30, tzinfo=UTC)),
        event(quantity=8, when=datetime(2024, 3, 3, 9, 0, tzinfo=UTC), currency="EUR", price="0.0020"),
    )
    metering.catch_up()
    assert daily_rows(store) == [
        (CONSUMER, "digits", "2024-02-29", 1, 1, Decimal("0.0010")),
        (CONSUMER, "digits", "2024-03-01", 2, 6, Decimal("0.0060")),
        (CONSUMER, "digits", "2024-03-03", 1, 8, Decimal("0.0160")),
    ]
    march = usage_summary(store, CONSUMER, since="2024-03-01", until="2024-03-02")
    leap_day = usage_summary(store, CONSUMER, until="2024-02-29")
    assert (march.total_events, march.total_iu) == (2, Fraction(6))
    assert march.totals_by_currency() == {"USD": Fraction("0.0060")}
    assert (leap_day.total_events, leap_day.total_iu) == (1, Fraction(1))
    _, _, by_currency = summary_totals(store)
    assert by_currency == {"USD": Fraction("0.0070"), "EUR": Fraction("0.0160")}


def test_day_is_the_utc_day_whatever_the_offset(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    east = timezone(timedelta(hours=2))
    append(event_log, event(quantity=1, when=datetime(2024, 3, 1, 1, 0, tzinfo=east)))
    metering.catch_up()
    assert [row[2] for row in daily_rows(store)] == ["2024-02-29"]


def test_audio_usage_is_exact_in_base_units(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, *(event(unit_kind=UnitKind.AUDIO_MINUTE, quantity=1, price="0.0060") for _ in range(3)))
    metering.catch_up()
    _, iu, amounts = summary_totals(store)
    assert iu == Fraction("0.05")  # 3 seconds / 60, exactly: summed in seconds, not in rounded sixtieths
    assert amounts == {"USD": Fraction("0.0003")}
    with store.read() as uow:
        stored = uow.conn.execute(select(t.usage_events.c.quantity_base, t.usage_events.c.amount_numerator)).all()
    assert [(int(q), a) for q, a in stored] == [(1, Decimal("0.0060"))] * 3  # amount = numerator / 60


def test_one_second_of_audio_reads_as_an_exact_fraction(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, event(unit_kind=UnitKind.AUDIO_MINUTE, quantity=7, price="0.0100"))
    metering.catch_up()
    (model,) = usage_summary(store, CONSUMER).models
    assert (model.iu_exact, model.amount_exact) == (Fraction(7, 60), Fraction(7, 6000))
    assert (model.to_json()["iu"], model.to_json()["amount"]) == ("7/60", "7/6000")


def test_usage_service_catches_up_before_it_answers(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, *mixed_events())
    summary = UsageService(store, metering).summary(CONSUMER, since="2024-03-01", until="2024-03-31")
    assert (summary.total_events, summary.total_iu) == (5, Fraction("5.289"))
    assert summary.to_json()["total_amount"] == "0.02908"
    assert metering.catch_up() == 0  # the read applied the log


# -- halting ---------------------------------------------------------------------------------------------


def test_a_log_shorter_than_the_applied_offset_halts_the_consumer(
    store: SqlStore, event_log: SqliteEventLog, tmp_path: Path
) -> None:
    append(event_log, *mixed_events())
    MeteringService(store, lambda: SqliteEventLog(event_log.path), clock=lambda: NOW).catch_up()
    before = (summary_totals(store), daily_rows(store))

    replaced = tmp_path / "replaced" / "events.db"  # an empty log where the old one was: offset 0 < 6
    metering = MeteringService(store, lambda: SqliteEventLog(replaced), clock=lambda: NOW)
    with pytest.raises(MeteringHalted, match="replaced or truncated") as info:
        metering.catch_up()
    assert "metering already applied up to 6" in info.value.reason
    reason = metering.halted()
    assert reason is not None and "replaced or truncated" in reason

    # Halted stays halted: nothing is read or skipped until an operator resumes it.
    fresh = SqliteEventLog(replaced)
    try:
        append(fresh, event(quantity=50))
        with pytest.raises(MeteringHalted):
            metering.consume_batch(fresh)
    finally:
        fresh.close()
    with store.read() as uow:
        assert uow.usage.offset(CONSUMER_NAME) == 6
    assert (summary_totals(store), daily_rows(store)) == before
    with pytest.raises(MeteringHalted):  # no usage figures from a log that is known to be wrong
        UsageService(store, metering).summary(CONSUMER)

    metering.resume()
    assert metering.halted() is None
    with pytest.raises(MeteringHalted):  # the cause is still there: it halts again rather than skipping ahead
        metering.catch_up()
    assert (summary_totals(store), daily_rows(store)) == before


def test_resume_after_the_cause_is_fixed_carries_on(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService, tmp_path: Path
) -> None:
    append(event_log, event(quantity=2))
    metering.catch_up()
    elsewhere = MeteringService(store, lambda: SqliteEventLog(tmp_path / "empty.db"), clock=lambda: NOW)
    with pytest.raises(MeteringHalted):
        elsewhere.catch_up()
    with pytest.raises(MeteringHalted):  # the halt is the store's, so every consumer sees it
        metering.catch_up()
    metering.resume()
    append(event_log, event(quantity=3))
    assert metering.catch_up() == 1
    assert summary_totals(store)[:2] == (2, Fraction(5))


def test_follow_applies_what_is_left_when_stopped(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    stop = threading.Event()
    follower = threading.Thread(target=metering.follow, args=(stop,))
    follower.start()
    try:
        append(event_log, *mixed_events())
    finally:
        stop.set()
        follower.join(timeout=60)
    assert not follower.is_alive()
    assert summary_totals(store)[:2] == (5, Fraction("5.289"))


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


def test_a_record_that_is_not_a_usage_event_is_set_aside_not_blocking(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    append(event_log, event(quantity=2))
    event_log.append_many([("junk-1", b'{"type": "something.else"}')])
    append(event_log, event(quantity=3))
    metering.catch_up()
    assert summary_totals(store)[:2] == (2, Fraction(5))  # the events on both sides of the bad one are metered
    r = t.metering_rejects.c
    with store.read() as uow:
        rejects = uow.conn.execute(select(r.log_offset, r.event_id, r.error, r.payload, r.rejected_at)).all()
    assert [(x.log_offset, x.event_id) for x in rejects] == [(2, "junk-1")]
    assert "not a usage event" in rejects[0].error
    assert rejects[0].payload == '{"type": "something.else"}'
    assert rejects[0].rejected_at == NOW.isoformat()
    reset_offset(store)
    metering.catch_up()  # re-reading records the reject once
    with store.read() as uow:
        assert len(uow.conn.execute(select(t.metering_rejects)).all()) == 1
    assert summary_totals(store)[:2] == (2, Fraction(5))


def test_an_event_without_base_units_is_rejected(
    store: SqlStore, event_log: SqliteEventLog, metering: MeteringService
) -> None:
    # Events always carry their base units (``quantity``); one without them, or with an IU that is not a whole
    # number of base units, is not a usage event: it is set aside, never guessed from ``quantity_iu``.
    doc = json.loads(event(unit_kind=UnitKind.TOKENS_1K, quantity=1500, price="0.0200").encode())
    del doc["data"]["quantity"], doc["data"]["base_unit"]
    fractional = json.loads(event(quantity=1).encode())
    fractional["data"]["quantity"] = 1.5
    event_log.append_many([(d["id"], json.dumps(d).encode()) for d in (doc, fractional)])
    append(event_log, event(quantity=2))
    metering.catch_up()
    assert summary_totals(store) == (1, Fraction(2), {"USD": Fraction("0.0020")})
    with store.read() as uow:
        rejected = uow.conn.execute(select(t.metering_rejects.c.event_id).order_by(t.metering_rejects.c.log_offset))
        assert list(rejected.scalars()) == [doc["id"], fractional["id"]]
