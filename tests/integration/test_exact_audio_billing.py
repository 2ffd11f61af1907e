"""Audio is priced per minute and billed per second: 1/60 has no exact decimal, yet invoices round exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from modelmarket.adapters.bus import SqliteEventLog
from modelmarket.adapters.store import Store
from modelmarket.billing import build_invoice, build_provider_statement, parse_period
from modelmarket.metering.consumer import catch_up
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import iu_from_units
from modelmarket.metering.usage import usage_summary


def _second(i: int, price: str) -> UsageEvent:
    return UsageEvent(
        id=f"req_{i:05d}",
        source="gateway-1",
        account_id="acc_c",
        time=datetime(2026, 11, 3, 10, tzinfo=UTC),
        model="speech-to-text",
        version="1.0.0",
        provider_account_id="acc_p",
        unit_kind="audio_minute",
        quantity=1,
        quantity_iu=iu_from_units("audio_minute", 1),
        unit_price=Decimal(price),
        currency="USD",
        latency_ms=Decimal("3.1"),
    )


def _meter_seconds(store: Store, tmp_path: Path, calls: int, price: str) -> None:
    log = SqliteEventLog(tmp_path / "events.db")
    log.append_many([(e.id, e.encode()) for e in (_second(i, price) for i in range(calls))])
    catch_up(store, log)
    log.close()


def test_a_half_cent_tie_built_from_sixtieths_rounds_half_even(store: Store, tmp_path: Path) -> None:
    # 150 one-second calls at 0.0100 per minute cost exactly 0.025: half-to-even gives 0.02. Summing 28-digit
    # per-second amounts (0.0001666...67 each) would land just above the tie and bill 0.03.
    _meter_seconds(store, tmp_path, 150, "0.0100")
    with store.read() as conn:
        [invoice] = build_invoice(conn, "acc_c", parse_period("2026-11"))
        [statement] = build_provider_statement(conn, "acc_p", parse_period("2026-11"), Decimal("0.80"))
        usage = usage_summary(conn, "acc_c").to_json()
    assert usage["total_amount"] == "0.025" and usage["total_iu"] == "2.5"  # the same exact figure as the invoice
    [line] = invoice.lines
    assert line.events == 150
    assert line.amount_precise == Decimal("0.025")
    assert line.amount == invoice.total == Decimal("0.02")
    assert (statement.gross, statement.provider_amount, statement.platform_fee) == (
        Decimal("0.02"),
        Decimal("0.02"),  # 0.8 x 0.025 = 0.020 exactly
        Decimal("0.00"),
    )


def test_sixty_one_second_calls_are_exactly_one_minute(store: Store, tmp_path: Path) -> None:
    _meter_seconds(store, tmp_path, 60, "0.0060")
    with store.read() as conn:
        [invoice] = build_invoice(conn, "acc_c", parse_period("2026-11"))
        seconds = conn.exec_driver_sql("SELECT SUM(quantity_base) FROM usage_events").scalar()
    assert int(seconds) == 60
    assert invoice.lines[0].amount_precise == Decimal("0.006")
    assert invoice.total == Decimal("0.01")  # 0.006 rounds to 0.01
