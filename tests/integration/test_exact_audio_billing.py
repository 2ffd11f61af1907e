"""Audio is priced per minute and billed per second: 1/60 has no exact decimal, yet invoices round exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from engines import append_to_log
from modelmarket.adapters.store import SqlStore
from modelmarket.billing import parse_period
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

NOVEMBER = parse_period("2026-11")
DECEMBER_1ST = datetime(2026, 12, 1, tzinfo=UTC)


def _second(i: int, price: str) -> UsageEvent:
    return UsageEvent(
        id=f"req_{i:05d}",
        source="gateway-1",
        account_id="acc_c",
        time=datetime(2026, 11, 3, 10, tzinfo=UTC),
        model="speech-to-text",
        version="1.0.0",
        provider_account_id="acc_p",
        unit_kind=UnitKind.AUDIO_MINUTE,
        quantity=1,  # one second
        unit_price=Decimal(price),
        currency="USD",
        latency_ms=Decimal("3.1"),
    )


def _meter_seconds(store: SqlStore, tmp_path: Path, calls: int, price: str) -> Platform:
    """A platform whose event log holds ``calls`` one-second calls at ``price`` per minute, metered and rated."""
    settings = Settings(home=tmp_path / "home")
    platform = bootstrap(settings, store=store, clock=lambda: DECEMBER_1ST, runtimes=PluginRuntimes())
    append_to_log(platform, [(e.id, e.encode()) for e in (_second(i, price) for i in range(calls))])
    assert platform.metering.catch_up() == calls
    return platform


def test_a_half_cent_tie_built_from_sixtieths_rounds_half_even(store: SqlStore, tmp_path: Path) -> None:
    # 150 one-second calls at 0.0100 per minute cost exactly 0.025: half-to-even gives 0.02. Summing 28-digit
    # per-second amounts (0.0001666...67 each) would land just above the tie and bill 0.03.
    platform = _meter_seconds(store, tmp_path, 150, "0.0100")
    [invoice] = platform.invoices.invoices("acc_c", NOVEMBER)
    [statement] = platform.ledger.statements(NOVEMBER, "acc_p")
    usage = platform.usage.summary("acc_c").to_json()
    assert usage["total_amount"] == "0.025" and usage["total_iu"] == "2.5"  # the same exact figure as the invoice
    [line] = invoice.lines
    assert (line.type, line.events, invoice.events) == ("usage", 150, 150)
    assert line.quantity_iu == Fraction(5, 2)
    assert line.amount_exact == Fraction("0.025")
    assert line.to_json()["amount_exact"] == "0.025"
    assert line.amount == invoice.total == Decimal("0.02")
    assert (statement.gross, statement.provider_amount, statement.platform_fee) == (
        Decimal("0.02"),
        Decimal("0.02"),  # 0.8 x 0.025 = 0.020 exactly
        Decimal("0.00"),
    )


def test_sixty_one_second_calls_are_exactly_one_minute(store: SqlStore, tmp_path: Path) -> None:
    platform = _meter_seconds(store, tmp_path, 60, "0.0060")
    [invoice] = platform.invoices.invoices("acc_c", NOVEMBER)
    with store.read() as uow:
        seconds = uow.conn.exec_driver_sql("SELECT SUM(quantity_base) FROM usage_events").scalar()
        [day] = uow.usage.daily_usage("acc_c", None, None)
    assert int(seconds) == 60
    assert (day.events, day.quantity_base, day.amount_numerator) == (60, 60, Decimal("0.3600"))  # / 60 = 0.006
    assert invoice.lines[0].quantity_iu == Fraction(1)
    assert invoice.lines[0].amount_exact == Fraction("0.006")
    assert invoice.total == Decimal("0.01")  # 0.006 rounds to 0.01


def test_a_price_per_minute_that_seconds_do_not_divide_stays_exact_until_the_line(
    store: SqlStore, tmp_path: Path
) -> None:
    # 7 seconds at 0.0100 per minute: 7/6000 = 0.0011666..., no finite decimal. Usage shows the exact fraction,
    # the invoice rounds it once.
    platform = _meter_seconds(store, tmp_path, 7, "0.0100")
    usage = platform.usage.summary("acc_c").to_json()
    assert (usage["total_iu"], usage["total_amount"]) == ("7/60", "7/6000")
    [invoice] = platform.invoices.invoices("acc_c", NOVEMBER)
    assert invoice.lines[0].amount_exact == Fraction(7, 6000)
    assert invoice.total == Decimal("0.00")
    with store.read() as uow:  # the ledger holds the exact amount, not a rounded one
        txn_ids = {r.txn_id for r in uow.ledger.rated(account_id="acc_c")}
        [txn] = uow.ledger.txns(ids=sorted(txn_ids))
    assert txn.entries[0].amount == Fraction(7, 6000)
