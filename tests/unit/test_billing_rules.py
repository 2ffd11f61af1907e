"""Pure billing rules: periods, exact sums, rounding once per line, the revenue split, invariants."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, Inexact
from fractions import Fraction

import pytest

import modelmarket.billing
from modelmarket.billing import Invoice, InvoiceLine, Period, parse_period
from modelmarket.billing.aggregate import UsageRow, aggregate_usage
from modelmarket.billing.documents import build_invoices, build_statements, check_share, split_gross
from modelmarket.core.errors import InvalidInput, InvariantViolated
from modelmarket.core.money import EXACT
from modelmarket.metering.units import UnitKind

JAN = Period(2026, 1)
IMAGE, TOKENS, AUDIO, REQUEST = UnitKind.IMAGE, UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE, UnitKind.REQUEST


def _row(model: str, quantity_base: int, price: str, currency: str = "USD", unit: UnitKind = IMAGE) -> UsageRow:
    """One rated event: ``quantity_base`` base units at ``price`` per IU (amount = numerator / divisor)."""
    numerator = EXACT.multiply(Decimal(quantity_base), Decimal(price))
    return UsageRow(currency, model, unit, Decimal(price), quantity_base, numerator)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2026-01", Period(2026, 1)), ("2026-12", Period(2026, 12)), ("0001-01", Period(1, 1))],
)
def test_parse_period_accepts_yyyy_mm(text: str, expected: Period) -> None:
    assert parse_period(text) == expected
    assert parse_period(text).label == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-13", "month 13 is not between 01 and 12"),
        ("2026-00", "month 00 is not between 01 and 12"),
        ("26-01", "write it as YYYY-MM"),
        ("2026-1", "write it as YYYY-MM"),
        ("2026-01-15", "write it as YYYY-MM"),
        (" 2026-01", "write it as YYYY-MM"),
        ("2026/01", "write it as YYYY-MM"),
        ("", "write it as YYYY-MM"),
        ("0000-05", "year 0000"),
        ("\uff12\uff10\uff12\uff16-01", "write it as YYYY-MM"),  # fullwidth digits are not accepted
    ],
)
def test_parse_period_refuses_anything_else(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_period(text)


def test_period_days() -> None:
    assert (JAN.first_day, JAN.last_day) == (date(2026, 1, 1), date(2026, 1, 31))
    assert Period(2028, 2).last_day == date(2028, 2, 29)
    assert Period(2026, 12).last_day == date(2026, 12, 31)
    assert Period.of(date(2026, 7, 9)) == Period(2026, 7)
    assert str(Period(2026, 3)) == "2026-03"
    with pytest.raises(InvariantViolated):
        Period(2026, 13)


def test_aggregate_sums_exactly_and_orders_groups() -> None:
    rows = [
        _row("b", 100, "0.1", unit=TOKENS),  # 0.1 IU (100 tokens)
        _row("a", 100, "0.2", currency="EUR", unit=TOKENS),
        _row("b", 200, "0.1", unit=TOKENS),  # 0.2 IU
        _row("a", 1, "0.3", unit=REQUEST),
    ]
    groups = aggregate_usage(rows)
    assert [(g.currency, g.model_name, g.unit_kind) for g in groups] == [
        ("EUR", "a", "tokens_1k"),
        ("USD", "a", "request"),
        ("USD", "b", "tokens_1k"),
    ]
    b = groups[2]
    assert (b.events, b.quantity_base, b.unit_kind.iu(b.quantity_base), b.amount_exact, b.unit_price) == (
        2,
        300,
        Fraction(3, 10),  # 0.1 + 0.2 IU, exactly (as floats: 0.30000000000000004)
        Fraction(3, 100),
        Decimal("0.1"),
    )
    assert isinstance(b.amount_exact, Fraction)


def test_aggregate_keeps_sixtieths_exact() -> None:
    # audio is priced per minute and billed per second: 7 seconds at 0.01 per minute is 7/6000, no finite decimal
    (group,) = aggregate_usage([_row("speech", 1, "0.01", unit=AUDIO)] * 7)
    assert (group.events, group.quantity_base, group.amount_exact) == (7, 7, Fraction(7, 6000))
    assert group.unit_kind.iu(group.quantity_base) == Fraction(7, 60)


def test_aggregate_never_rounds_silently() -> None:
    # 30 significant digits would be rounded by the default 28-digit context; here they stay exact
    big = UsageRow("USD", "m", IMAGE, Decimal(1), 1, Decimal("1" * 20 + "." + "1" * 10))
    tiny = UsageRow("USD", "m", IMAGE, Decimal(1), 1, Decimal("0." + "0" * 9 + "1"))
    (group,) = aggregate_usage([big, tiny])
    assert group.amount_exact == Fraction(Decimal("1" * 20 + "." + "1" * 9 + "2"))
    too_long = UsageRow("USD", "m", IMAGE, Decimal(1), 1, Decimal("1E+300"))
    with pytest.raises(Inexact):
        aggregate_usage([too_long, tiny])


@pytest.mark.parametrize(
    ("precise", "currency", "rounded"),
    [
        ("0.125", "USD", "0.12"),
        ("0.135", "USD", "0.14"),
        ("0.145", "EUR", "0.14"),
        ("2.5", "JPY", "2"),
        ("3.5", "JPY", "4"),
        ("0.0005", "BHD", "0.000"),
        ("0.0015", "BHD", "0.002"),
    ],
)
def test_invoice_line_rounds_half_even_to_the_minor_unit(precise: str, currency: str, rounded: str) -> None:
    row = UsageRow(currency, "m", IMAGE, Decimal(precise), 1, Decimal(precise))
    (invoice,) = build_invoices("acct", JAN, aggregate_usage([row]))
    assert invoice.lines[0].amount == Decimal(rounded)
    assert str(invoice.lines[0].amount) == rounded  # the currency's exponent, not just the value


def test_invoice_total_is_the_sum_of_rounded_lines() -> None:
    rows = [_row("a", 1, "0.125"), _row("b", 1, "0.125"), _row("c", 1, "0.125")]
    (invoice,) = build_invoices("acct", JAN, aggregate_usage(rows))
    assert invoice.total == Decimal("0.36")  # 3 x 0.12, not round(0.375) = 0.38
    assert invoice.total_precise == Decimal("0.375")


def test_invoice_refuses_a_wrong_total_or_an_eventless_line() -> None:
    line = InvoiceLine("m", IMAGE, 1, 1, Decimal("0.125"), Fraction("0.125"), Decimal("0.12"))
    assert Invoice("acct", JAN, "USD", (line,), Decimal("0.12")).total == Decimal("0.12")
    with pytest.raises(InvariantViolated, match="total"):
        Invoice("acct", JAN, "USD", (line,), Decimal("0.13"))
    empty = InvoiceLine("m", IMAGE, 0, 0, None, Fraction(0), Decimal("0.00"))
    with pytest.raises(InvariantViolated, match="no usage events"):
        Invoice("acct", JAN, "USD", (empty,), Decimal("0.00"))
    twice = InvoiceLine("m", IMAGE, 1, 1, None, Fraction("0.125"), Decimal("0.13"))
    with pytest.raises(InvariantViolated, match="rounded once"):
        Invoice("acct", JAN, "USD", (twice,), Decimal("0.13"))


@pytest.mark.parametrize("share", ["0", "0.8", "0.85", "0.333", "1"])
def test_split_gross_always_adds_up(share: str) -> None:
    for cents in range(0, 2000, 7):
        precise = Decimal(cents) / Decimal(1000) + Decimal("0.0005")
        gross, provider, platform = split_gross(precise, "USD", Decimal(share))
        assert provider + platform == gross
        assert gross == precise.quantize(Decimal("0.01"), rounding="ROUND_HALF_EVEN")
        assert Decimal(0) <= provider <= gross
        assert provider == (precise * Decimal(share)).quantize(Decimal("0.01"), rounding="ROUND_HALF_EVEN")


def test_statement_lines_and_totals() -> None:
    # a: 162 seconds (2.7 minutes) at 0.05 per minute = 0.135; b: one image at 0.0625
    rows = [_row("a", 162, "0.05", unit=AUDIO), _row("b", 1, "0.0625"), _row("a", 1, "1", currency="EUR")]
    eur, usd = build_statements("prov", JAN, aggregate_usage(rows), Decimal("0.80"))
    assert (eur.currency, eur.gross, eur.provider_amount, eur.platform_fee) == (
        "EUR",
        Decimal("1.00"),
        Decimal("0.80"),
        Decimal("0.20"),
    )
    assert [(li.gross, li.provider_amount, li.platform_fee) for li in usd.lines] == [
        (Decimal("0.14"), Decimal("0.11"), Decimal("0.03")),  # 0.135 ; 0.108
        (Decimal("0.06"), Decimal("0.05"), Decimal("0.01")),  # 0.0625 ; 0.05
    ]
    assert [(li.quantity_base, li.quantity_iu, li.gross_exact) for li in usd.lines] == [
        (162, Fraction(27, 10), Fraction("0.135")),
        (1, Fraction(1), Fraction("0.0625")),
    ]
    assert usd.to_json()["provider_share"] == "0.80"


@pytest.mark.parametrize("share", [Decimal("-0.1"), Decimal("1.01"), Decimal("NaN"), 0.8])
def test_share_must_be_a_decimal_fraction(share: object) -> None:
    with pytest.raises(InvalidInput, match="provider share"):
        check_share(share)  # type: ignore[arg-type]


def test_no_usage_no_documents() -> None:
    assert build_invoices("acct", JAN, []) == []
    assert build_statements("prov", JAN, [], Decimal("0.8")) == []


def test_public_names() -> None:
    assert sorted(modelmarket.billing.__all__) == [
        "BillingService",
        "Invoice",
        "InvoiceLine",
        "Period",
        "Statement",
        "StatementLine",
        "parse_period",
        "render_invoice_text",
        "render_statement_text",
    ]
