"""The metering consumer: reads usage events from the log, dedups by event id, aggregates per account,
model and day. The consumer's offset lives in the store and moves in the same transaction as the rows it
writes, and each event id is a primary key, so re-reading the log (at-least-once) never counts twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact, Rounded
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from modelmarket.adapters.bus import LogRecord, SqliteEventLog
from modelmarket.adapters.store import Store
from modelmarket.adapters.store import schema as t
from modelmarket.core.errors import ensure
from modelmarket.metering.events import UsageEvent

CONSUMER_NAME = "metering"
log = logging.getLogger(__name__)


def _offset(conn: Connection) -> int:
    value = conn.execute(
        select(t.consumer_offsets.c.log_offset).where(t.consumer_offsets.c.consumer == CONSUMER_NAME)
    ).scalar()
    return int(value or 0)


def _save_offset(conn: Connection, offset: int, had_row: bool) -> None:
    c = t.consumer_offsets.c
    if had_row:
        conn.execute(update(t.consumer_offsets).where(c.consumer == CONSUMER_NAME).values(log_offset=offset))
    else:
        conn.execute(insert(t.consumer_offsets).values(consumer=CONSUMER_NAME, log_offset=offset))


def _event_row(record: LogRecord, event: UsageEvent) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "account_id": event.account_id,
        "model_name": event.model,
        "version": event.version,
        "provider_account_id": event.provider_account_id,
        "unit_kind": event.unit_kind,
        "quantity_base": event.quantity,
        "quantity_iu": event.quantity_iu,
        "unit_price": event.unit_price,
        "amount": event.amount_numerator,
        "amount_divisor": event.amount_divisor,
        "currency": event.currency,
        "occurred_at": event.time.isoformat(),
        "day": event.time.astimezone(UTC).date().isoformat(),
        "latency_ms": event.latency_ms,
        "log_offset": record.offset,
    }


_EXACT = Context(prec=200, traps=[Inexact, Rounded])


def _decode(records: Sequence[LogRecord]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Rows by event id, and rejects: records that are not valid usage events are set aside, never dropped."""
    rows: dict[str, dict[str, Any]] = {}
    rejects: list[dict[str, Any]] = []
    for record in records:
        try:
            event = UsageEvent.decode(record.payload)
            row = _event_row(record, event)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            log.error("log record %d (%s) is not a usage event: %r", record.offset, record.event_id, exc)
            rejects.append(
                {
                    "log_offset": record.offset,
                    "event_id": record.event_id[:64],
                    "error": repr(exc)[:2000],
                    "payload": record.payload.decode("utf-8", "replace"),
                    "rejected_at": datetime.now(UTC).isoformat(),
                }
            )
            continue
        rows.setdefault(event.id, row)
    return rows, rejects


def _new_rows(conn: Connection, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        return []
    ids = list(rows)
    seen: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        seen.update(
            conn.execute(select(t.usage_events.c.event_id).where(t.usage_events.c.event_id.in_(chunk))).scalars()
        )
    return [row for event_id, row in rows.items() if event_id not in seen]


def _aggregate(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add the rows to the per-day totals, exactly: amounts as numerator sums over the unit's divisor."""
    totals: dict[tuple[str, str, str, str, str, int], list[Any]] = {}
    for r in rows:
        key = (r["account_id"], r["model_name"], r["day"], r["unit_kind"], r["currency"], r["amount_divisor"])
        acc = totals.setdefault(key, [0, Decimal(0), Decimal(0), 0])
        acc[0] += 1
        acc[1] = _EXACT.add(acc[1], r["quantity_iu"])
        acc[2] = _EXACT.add(acc[2], r["amount"])
        acc[3] += r["quantity_base"]
    d = t.usage_daily.c
    for (account, model, day, unit, currency, divisor), (events, iu, amount, base) in totals.items():
        where = (
            d.account_id == account,
            d.model_name == model,
            d.day == day,
            d.unit_kind == unit,
            d.currency == currency,
        )
        current = conn.execute(
            select(d.events, d.quantity_iu, d.amount, d.amount_divisor, d.quantity_base).where(*where)
        ).first()
        if current is None:
            conn.execute(
                insert(t.usage_daily).values(
                    account_id=account,
                    model_name=model,
                    day=day,
                    unit_kind=unit,
                    currency=currency,
                    events=events,
                    quantity_iu=iu,
                    amount=amount,
                    amount_divisor=divisor,
                    quantity_base=base,
                )
            )
            continue
        ensure(current.amount_divisor == divisor, f"usage_daily divisor changed for {model} {unit} on {day}")
        conn.execute(
            update(t.usage_daily)
            .where(*where)
            .values(
                events=current.events + events,
                quantity_iu=_EXACT.add(current.quantity_iu, iu),
                amount=_EXACT.add(current.amount, amount),
                quantity_base=current.quantity_base + base,
            )
        )


def _reject(conn: Connection, rejects: list[dict[str, Any]]) -> None:
    offsets = [r["log_offset"] for r in rejects]
    known = set(
        conn.execute(
            select(t.metering_rejects.c.log_offset).where(t.metering_rejects.c.log_offset.in_(offsets))
        ).scalars()
    )
    fresh = [r for r in rejects if r["log_offset"] not in known]
    if fresh:
        conn.execute(insert(t.metering_rejects), fresh)


def consume_batch(store: Store, event_log: SqliteEventLog, limit: int = 5000) -> int:
    """Apply the next batch of events from the log. Returns how many log records were read."""
    with store.write() as conn:
        if conn.dialect.name == "postgresql":
            # One consumer at a time (the gateway's child, /api/usage, the CLI); SQLite's BEGIN IMMEDIATE already
            # serializes writers. Held until commit, so a second consumer reads the offset this one moves.
            conn.execute(text("SELECT pg_advisory_xact_lock(7042002)"))
        had_row = (
            conn.execute(
                select(t.consumer_offsets.c.consumer).where(t.consumer_offsets.c.consumer == CONSUMER_NAME)
            ).first()
            is not None
        )
        offset = _offset(conn)
        records = event_log.read(offset, limit)
        if not records:
            return 0
        decoded, rejects = _decode(records)
        if rejects:
            _reject(conn, rejects)
        rows = _new_rows(conn, decoded)
        if rows:
            conn.execute(insert(t.usage_events), rows)
            _aggregate(conn, rows)
        _save_offset(conn, records[-1].offset, had_row)
    return len(records)


def catch_up(store: Store, event_log: SqliteEventLog) -> int:
    """Drain the log up to its current end (used by the CLI before it reports usage)."""
    total = 0
    while n := consume_batch(store, event_log):
        total += n
    return total


def follow(
    store: Store, event_log: SqliteEventLog, poll_s: float, stop: threading.Event, batch_max: int = 5000
) -> None:
    """Keep usage current until ``stop`` is set; then apply what is left in the log and return.

    Sleeps ``poll_s`` after every batch that was not full, so under steady load the consumer works in batches of
    about ``poll_s`` worth of events instead of spinning on a handful at a time.
    """
    while not stop.is_set():
        try:
            n = consume_batch(store, event_log, batch_max)
        except Exception:  # keep metering alive; the offset did not move, so nothing is lost
            log.exception("metering consumer failed; retrying")
            n = 0
        if n:
            event_log.checkpoint()  # off the request path: the gateway's writer does not checkpoint
        if n < batch_max:
            stop.wait(poll_s)
    catch_up(store, event_log)
