"""Pure billing rules: periods, exact sums, rounding once per line, the revenue split, invariants.

Invoice lines come from ``billing.lifecycle.build_lines`` and provider statements from
``billing.ledger.build_statements``, both over rated events; no storage is involved.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, Inexact
from fractions import Fraction

import pytest

from modelmarket.billing import InvoiceDoc, Period, ProviderStatement, Rater, parse_period
from modelmarket.billing.ledger import build_statements, split
from modelmarket.billing.lifecycle import Line, build_lines, invoice_id
from modelmarket.billing.ports import RatedEvent
from modelmarket.core.errors import InvalidInput, InvariantViolated
from modelmarket.core.money import sum_exact
from modelmarket.metering.units import UnitKind

JAN = Period(2026, 1)
IMAGE, TOKENS, AUDIO, REQUEST = UnitKind.IMAGE, UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE, UnitKind.REQUEST
SHARE = Fraction(4, 5)
_offsets = iter(range(1, 1_000_000))


def _rated(
    model: str,
    quantity_base: int,
    price: str,
    currency: str = "USD",
    unit: UnitKind = IMAGE,
    *,
    amount: Fraction | None = None,
    provider: str = "prov",
) -> RatedEvent:
    """One event rated at the list price: ``quantity_base`` base units at ``price`` per IU (or ``amount``)."""
    n = next(_offsets)
    exact = Fraction(quantity_base) * Fraction(Decimal(price)) / unit.divisor if amount is None else amount
    return RatedEvent(
        event_id=f"evt-{n}",
        log_offset=n,
        account_id="acct",
        provider_account_id=provider,
        model_name=model,
        unit_kind=unit,
        currency=currency,
        period=JAN.label,
        origin_period=JAN.label,
        kind="usage",
        plan_name="payg",
        plan_version=0,
        quantity_base=quantity_base,
        granted_base=0,
        amount=exact,
        provider_amount=exact * SHARE,
        txn_id="tx_usage_1",
    )


def _lines(rows: list[RatedEvent], currency: str = "USD") -> list[Line]:
    return build_lines(rows, {}, [], JAN, currency)


def _invoice(rows: list[RatedEvent], currency: str = "USD") -> InvoiceDoc:
    lines = tuple(_lines(rows, currency))
    doc_id = invoice_id("acct", JAN.label, currency)
    return InvoiceDoc(
        doc_id, "acct", JAN.label, currency, "draft", lines, "2026-02-01T00:00:00+00:00", events=len(rows)
    )


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


def test_lines_sum_exactly_one_per_model_and_unit_in_one_currency() -> None:
    rows = [
        _rated("b", 100, "0.1", unit=TOKENS),  # 0.1 IU (100 tokens)
        _rated("a", 100, "0.2", currency="EUR", unit=TOKENS),
        _rated("b", 200, "0.1", unit=TOKENS),  # 0.2 IU
        _rated("a", 1, "0.3", unit=REQUEST),
    ]
    usd = _lines(rows)
    assert [(li.type, li.model, li.unit_kind) for li in usd] == [("usage", "a", "request"), ("usage", "b", "tokens_1k")]
    b = usd[1]
    assert (b.events, b.quantity_iu, b.amount_exact, b.amount) == (
        2,
        Fraction(3, 10),  # 0.1 + 0.2 IU, exactly (as floats: 0.30000000000000004)
        Fraction(3, 100),
        Decimal("0.03"),
    )
    assert isinstance(b.amount_exact, Fraction) and isinstance(b.quantity_iu, Fraction)
    (eur,) = _lines(rows, "EUR")
    assert (eur.model, eur.events, eur.amount) == ("a", 1, Decimal("0.02"))


def test_lines_keep_sixtieths_exact() -> None:
    # audio is priced per minute and billed per second: 7 seconds at 0.01 per minute is 7/6000, no finite decimal
    (line,) = _lines([_rated("speech", 1, "0.01", unit=AUDIO) for _ in range(7)])
    assert (line.events, line.quantity_iu, line.amount_exact) == (7, Fraction(7, 60), Fraction(7, 6000))
    assert line.amount == Decimal("0.00")


def test_amounts_are_never_rounded_silently() -> None:
    # 30 significant digits would be rounded by the default 28-digit context; a line keeps them exact
    big = _rated("m", 1, "1", amount=Fraction(Decimal("1" * 20 + "." + "1" * 10)))
    tiny = _rated("m", 1, "1", amount=Fraction(Decimal("0." + "0" * 9 + "1")))
    (line,) = _lines([big, tiny])
    assert line.amount_exact == Fraction(Decimal("1" * 20 + "." + "1" * 9 + "2"))
    # a decimal sum that would need more than the exact context's digits raises instead of rounding
    with pytest.raises(Inexact):
        sum_exact([Decimal("1E+150"), Decimal("1E-60")])  # 211 digits


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
        ("1.2345", "KWD", "1.234"),
        ("1.2355", "KWD", "1.236"),
    ],
)
def test_invoice_line_rounds_half_even_to_the_minor_unit(precise: str, currency: str, rounded: str) -> None:
    doc = _invoice([_rated("m", 1, precise, currency)], currency)
    assert doc.lines[0].amount == Decimal(rounded)
    assert str(doc.lines[0].amount) == rounded  # the currency's exponent, not just the value
    assert doc.to_json()["total"] == rounded


def test_invoice_total_is_the_sum_of_rounded_lines() -> None:
    doc = _invoice([_rated("a", 1, "0.125"), _rated("b", 1, "0.125"), _rated("c", 1, "0.125")])
    assert doc.total == Decimal("0.36")  # 3 x 0.12, not round(0.375) = 0.38
    assert sum(li.amount_exact for li in doc.lines) == Fraction("0.375")
    assert doc.events == 3


def test_invoice_refuses_a_line_rounded_twice_an_eventless_usage_line_or_an_unknown_status() -> None:
    line = Line("usage", "m: usage", "m", "image", 1, Fraction(1), Fraction("0.125"), Decimal("0.12"))
    ok = InvoiceDoc("inv_1", "acct", "2026-01", "USD", "draft", (line,), "t")
    assert ok.total == Decimal("0.12")
    twice = Line("usage", "m: usage", "m", "image", 1, Fraction(1), Fraction("0.125"), Decimal("0.13"))
    with pytest.raises(InvariantViolated, match="rounded once"):
        InvoiceDoc("inv_1", "acct", "2026-01", "USD", "draft", (twice,), "t")
    empty = Line("usage", "m: usage", "m", "image", 0, Fraction(0), Fraction(0), Decimal("0.00"))
    with pytest.raises(InvariantViolated, match="no usage events"):
        InvoiceDoc("inv_1", "acct", "2026-01", "USD", "draft", (empty,), "t")
    fee = Line("fee", "plan pro v1 fee", None, None, 0, Fraction(0), Fraction(20), Decimal("20.00"))
    assert InvoiceDoc("inv_1", "acct", "2026-01", "USD", "draft", (fee,), "t").total == Decimal("20.00")
    with pytest.raises(InvariantViolated, match="status"):
        InvoiceDoc("inv_1", "acct", "2026-01", "USD", "paid", (line,), "t")


@pytest.mark.parametrize("share", ["0", "0.8", "0.85", "0.333", "1"])
def test_split_always_adds_up(share: str) -> None:
    for cents in range(0, 2000, 7):
        precise = Decimal(cents) / Decimal(1000) + Decimal("0.0005")
        exact = Fraction(precise)
        gross, provider, platform = split(exact, exact * Fraction(Decimal(share)), "USD")
        assert provider + platform == gross
        assert gross == precise.quantize(Decimal("0.01"), rounding="ROUND_HALF_EVEN")
        assert Decimal(0) <= provider <= gross
        assert provider == (precise * Decimal(share)).quantize(Decimal("0.01"), rounding="ROUND_HALF_EVEN")


def test_statement_lines_and_totals() -> None:
    # a: 162 seconds (2.7 minutes) at 0.05 per minute = 0.135; b: one image at 0.0625
    rows = [_rated("a", 162, "0.05", unit=AUDIO), _rated("b", 1, "0.0625"), _rated("a", 1, "1", currency="EUR")]
    eur, usd = build_statements(rows)
    assert (eur.currency, eur.gross, eur.provider_amount, eur.platform_fee) == (
        "EUR",
        Decimal("1.00"),
        Decimal("0.80"),
        Decimal("0.20"),
    )
    assert [(li["gross"], li["provider_amount"], li["platform_fee"]) for li in usd.lines] == [
        ("0.14", "0.11", "0.03"),  # 0.135 ; 0.108
        ("0.06", "0.05", "0.01"),  # 0.0625 ; 0.05
    ]
    assert [(li["model"], li["unit_kind"], li["quantity_base"]) for li in usd.lines] == [
        ("a", "audio_minute", 162),
        ("b", "image", 1),
    ]
    assert (usd.events, usd.gross, usd.provider_amount, usd.platform_fee) == (
        2,
        Decimal("0.20"),
        Decimal("0.16"),
        Decimal("0.04"),
    )
    assert usd.to_json()["gross"] == "0.20"


def test_statements_one_per_provider_and_currency() -> None:
    rows = [
        _rated("m", 1, "1", provider="p2"),
        _rated("m", 1, "2", provider="p1"),
        _rated("m", 1, "3", "EUR", provider="p1"),
    ]
    assert [(s.provider_account_id, s.currency, s.gross) for s in build_statements(rows)] == [
        ("p1", "EUR", Decimal("3.00")),
        ("p1", "USD", Decimal("2.00")),
        ("p2", "USD", Decimal("1.00")),
    ]


def test_statement_refuses_lines_that_do_not_add_up() -> None:
    line = {"model": "m", "unit_kind": "image", "events": 1, "quantity_base": 1}
    good = {**line, "gross": "0.14", "provider_amount": "0.11", "platform_fee": "0.03"}
    st = ProviderStatement("p", "2026-01", "USD", 1, Decimal("0.14"), Decimal("0.11"), Decimal("0.03"), (good,))
    assert st.gross == Decimal("0.14")
    bad = {**line, "gross": "0.14", "provider_amount": "0.11", "platform_fee": "0.04"}
    with pytest.raises(InvariantViolated, match="provider \\+ platform fee != gross"):
        ProviderStatement("p", "2026-01", "USD", 1, Decimal("0.14"), Decimal("0.11"), Decimal("0.03"), (bad,))
    with pytest.raises(InvariantViolated, match="gross != sum"):
        ProviderStatement("p", "2026-01", "USD", 1, Decimal("0.15"), Decimal("0.11"), Decimal("0.04"), (good,))


@pytest.mark.parametrize("share", [Decimal("-0.1"), Decimal("1.01"), Decimal("NaN"), 0.8])
def test_share_must_be_a_decimal_fraction(share: object) -> None:
    with pytest.raises(InvalidInput, match="provider share"):
        Rater(share, lambda: None)  # type: ignore[arg-type]


def test_no_usage_no_lines_no_statements() -> None:
    assert _lines([]) == []
    assert build_statements([]) == []
