"""Invoices and provider statements from usage events, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from itertools import count
from pathlib import Path

import pytest

from modelmarket.adapters.bus import SqliteEventLog
from modelmarket.adapters.store import SqlStore
from modelmarket.billing import (
    BillingService,
    Period,
    parse_period,
    render_invoice_text,
    render_statement_text,
)
from modelmarket.core.errors import InvalidInput
from modelmarket.metering import MeteringService
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind

JAN = Period(2026, 1)
NOW = datetime(2026, 2, 3, 9, 0, tzinfo=UTC)
IMAGE, TOKENS, AUDIO = UnitKind.IMAGE, UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE
_ids = count(1)


def _event(
    *,
    model: str = "digits",
    iu: str = "1",
    price: str = "0.05",
    currency: str = "USD",
    day: str = "2026-01-15",
    account: str = "acct-consumer",
    provider: str = "acct-provider",
    unit_kind: UnitKind = IMAGE,
) -> UsageEvent:
    """A served call of ``iu`` Inference Units (a whole number of the unit's base units) at ``price`` per IU."""
    base = Fraction(iu) * unit_kind.divisor
    assert base.denominator == 1, f"{iu} {unit_kind} is not a whole number of {unit_kind.base_unit}s"
    return UsageEvent(
        id=f"evt-{next(_ids):08d}",
        source="gateway-1",
        account_id=account,
        time=datetime.fromisoformat(f"{day}T12:00:00+00:00"),
        model=model,
        version="1.0.0",
        provider_account_id=provider,
        unit_kind=unit_kind,
        quantity=int(base),
        unit_price=Decimal(price),
        currency=currency,
        latency_ms=Decimal("3.5"),
    )


@dataclass
class Billing:
    store: SqlStore
    log: SqliteEventLog
    metering: MeteringService

    def insert(self, *events: UsageEvent) -> None:
        """Append the events to the log: the billing service applies the log before it reads."""
        self.log.append_many([(e.id, e.encode()) for e in events])

    def service(self, provider_share: str = "0.80") -> BillingService:
        return BillingService(self.store, self.metering, Decimal(provider_share))


@pytest.fixture()
def billing(store: SqlStore, tmp_path: Path) -> Iterator[Billing]:
    path = tmp_path / "events.db"
    log = SqliteEventLog(path)
    metering = MeteringService(store, lambda: SqliteEventLog(path), clock=lambda: NOW)
    yield Billing(store, log, metering)
    log.close()


def test_lines_round_once_half_even(billing: Billing) -> None:
    # sentiment: 0.0625 + 0.0625 = 0.125 -> 0.12 ; speech: 0.135 -> 0.14 (half to even both ways)
    billing.insert(
        _event(model="sentiment", unit_kind=TOKENS, iu="1.25", price="0.05"),
        _event(model="sentiment", unit_kind=TOKENS, iu="1.25", price="0.05"),
        _event(model="speech", unit_kind=AUDIO, iu="2.7", price="0.05"),
    )
    (invoice,) = billing.service().invoices("acct-consumer", JAN)

    assert invoice.currency == "USD"
    assert [(li.model_name, li.events, li.amount_precise, li.amount) for li in invoice.lines] == [
        ("sentiment", 2, Decimal("0.125"), Decimal("0.12")),
        ("speech", 1, Decimal("0.135"), Decimal("0.14")),
    ]
    assert (invoice.lines[0].quantity_base, invoice.lines[0].quantity_iu) == (2500, Fraction("2.50"))
    assert (invoice.lines[1].quantity_base, invoice.lines[1].quantity_iu) == (162, Fraction("2.7"))
    assert invoice.lines[1].amount_exact == Fraction("0.135")
    assert invoice.total == Decimal("0.26")
    assert invoice.total_precise == Decimal("0.260")
    assert invoice.events == 3


def test_rounding_is_per_line_not_per_event(billing: Billing) -> None:
    # three events of 0.004 each: per-event rounding would give 0.00, per-line gives 0.01 (0.012)
    billing.insert(*(_event(iu="1", price="0.004") for _ in range(3)))
    (invoice,) = billing.service().invoices("acct-consumer", JAN)
    assert invoice.lines[0].amount == Decimal("0.01")
    assert invoice.lines[0].unit_price == Decimal("0.004")


def test_mixed_unit_prices_leave_the_unit_price_empty(billing: Billing) -> None:
    billing.insert(_event(price="0.05"), _event(price="0.06"), _event(price="0.050"))
    (invoice,) = billing.service().invoices("acct-consumer", JAN)
    (line,) = invoice.lines
    assert line.unit_price is None
    assert (line.events, line.quantity_iu, line.amount) == (3, Fraction(3), Decimal("0.16"))


def test_one_invoice_per_currency(billing: Billing) -> None:
    billing.insert(
        _event(currency="USD", price="0.10"),
        _event(currency="EUR", price="0.20"),
        _event(currency="EUR", price="0.20", model="sentiment", unit_kind=TOKENS),
        _event(currency="JPY", iu="3", price="2.5"),  # 7.5 -> 8 yen (no minor unit, half even)
    )
    invoices = billing.service().invoices("acct-consumer", JAN)

    assert [(inv.currency, inv.total, len(inv.lines)) for inv in invoices] == [
        ("EUR", Decimal("0.40"), 2),
        ("JPY", Decimal("8"), 1),
        ("USD", Decimal("0.10"), 1),
    ]
    assert [li.model_name for li in invoices[0].lines] == ["digits", "sentiment"]


def test_period_boundaries(billing: Billing) -> None:
    billing.insert(
        _event(day="2025-12-31", price="1"),
        _event(day="2026-01-01", price="0.01"),
        _event(day="2026-01-31", price="0.02"),
        _event(day="2026-02-01", price="10"),
    )
    service = billing.service()
    (invoice,) = service.invoices("acct-consumer", JAN)
    (february,) = service.invoices("acct-consumer", Period(2026, 2))
    (december,) = service.invoices("acct-consumer", parse_period("2025-12"))
    assert (invoice.events, invoice.total) == (2, Decimal("0.03"))
    assert (february.events, february.total) == (1, Decimal("10.00"))
    assert (december.events, december.total) == (1, Decimal("1.00"))


def test_only_the_accounts_own_events(billing: Billing) -> None:
    billing.insert(_event(account="acct-consumer"), _event(account="acct-other", price="9"))
    service = billing.service()
    (invoice,) = service.invoices("acct-consumer", JAN)
    assert service.invoices("acct-nobody", JAN) == []
    assert invoice.total == Decimal("0.05")


def test_documents_include_calls_appended_a_moment_ago(billing: Billing) -> None:
    service = billing.service()
    billing.insert(_event(price="0.05"))
    assert service.invoices("acct-consumer", JAN)[0].total == Decimal("0.05")
    billing.insert(_event(price="0.07"))  # not yet metered: the service applies the log before it reads
    assert service.invoices("acct-consumer", JAN)[0].total == Decimal("0.12")
    assert service.statements("acct-provider", JAN)[0].gross == Decimal("0.12")


def test_invoice_json_has_decimal_strings(billing: Billing) -> None:
    billing.insert(
        _event(unit_kind=TOKENS, iu="1.5", price="0.0333"),
        _event(model="speech", unit_kind=AUDIO, iu="7/60", price="0.0100"),  # 7 seconds: 7/6000, no finite decimal
    )
    (invoice,) = billing.service().invoices("acct-consumer", JAN)
    document = json.loads(json.dumps(invoice.to_json()))
    assert document["period"] == "2026-01"
    assert document["total"] == "0.05"
    assert document["lines"][0] == {
        "model_name": "digits",
        "unit_kind": "tokens_1k",
        "events": 1,
        "quantity": 1500,
        "base_unit": "token",
        "quantity_iu": "1.5",
        "unit_price": "0.0333",
        "amount_exact": "0.04995",
        "amount_precise": "0.04995",
        "amount": "0.05",
    }
    speech = document["lines"][1]
    assert (speech["quantity"], speech["base_unit"], speech["quantity_iu"]) == (7, "second", "7/60")
    assert speech["amount_exact"] == "7/6000"
    assert speech["amount_precise"] == "0.0011666666666666666666666666666666666666666666666667"  # 50 digits
    assert speech["amount"] == "0.00"


def test_provider_statement_share_sums_exactly_to_gross(billing: Billing) -> None:
    prices = ["0.0137", "0.0291", "0.0333", "0.0049", "0.1111"]
    events = [
        _event(model=f"m{i % 3}", iu=str(q), price=prices[(i * q) % len(prices)], account=f"c{i % 4}")
        for i, q in enumerate(range(1, 40))
    ]
    events.append(_event(model="m0", currency="EUR", iu="7", price="0.0125"))
    events.append(_event(provider="acct-someone-else", price="5"))
    billing.insert(*events)

    statements = billing.service("0.80").statements("acct-provider", JAN)

    assert [s.currency for s in statements] == ["EUR", "USD"]
    for statement in statements:
        for line in statement.lines:
            assert line.provider_amount + line.platform_fee == line.gross
            assert line.gross == line.gross_precise.quantize(Decimal("0.01"), rounding="ROUND_HALF_EVEN")
        assert statement.provider_amount + statement.platform_fee == statement.gross
    usd = statements[1]
    assert usd.events == 39
    assert sum(line.events for line in usd.lines) == 39
    eur_line = statements[0].lines[0]  # 7 x 0.0125 = 0.0875 -> gross 0.09, provider 0.07 (0.0700), fee 0.02
    assert (eur_line.gross, eur_line.provider_amount, eur_line.platform_fee) == (
        Decimal("0.09"),
        Decimal("0.07"),
        Decimal("0.02"),
    )


def test_statement_rounds_the_provider_share_from_the_precise_gross(billing: Billing) -> None:
    # gross precise 0.135 -> 0.14; provider 0.135 x 0.8 = 0.108 -> 0.11; platform 0.03
    billing.insert(_event(unit_kind=AUDIO, iu="2.7", price="0.05"))
    (statement,) = billing.service("0.8").statements("acct-provider", JAN)
    (line,) = statement.lines
    assert (line.gross, line.provider_amount, line.platform_fee) == (
        Decimal("0.14"),
        Decimal("0.11"),
        Decimal("0.03"),
    )
    document = statement.to_json()
    assert (document["gross"], document["provider_amount"], document["platform_fee"]) == (
        "0.14",
        "0.11",
        "0.03",
    )


def test_statement_refuses_a_share_outside_0_to_1(billing: Billing) -> None:
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        billing.service("1.2")


def test_text_renderings_are_aligned_and_name_the_currency(billing: Billing) -> None:
    billing.insert(
        _event(model="sentiment", unit_kind=TOKENS, iu="1.25", price="0.05"),
        _event(model="speech-to-text", unit_kind=AUDIO, iu="2.7", price="0.05"),
        _event(model="speech-to-text", unit_kind=AUDIO, iu="100", price="0.06"),
    )
    service = billing.service("0.80")
    (invoice,) = service.invoices("acct-consumer", JAN)
    (statement,) = service.statements("acct-provider", JAN)

    text = render_invoice_text(invoice, "acme")
    assert "acme" in text and "2026-01" in text and "USD" in text
    table = text.splitlines()[2:]
    assert len({len(row) for row in table}) == 1  # right-aligned last column: every row ends at one edge
    assert table[-1].startswith("Total (USD)") and table[-1].endswith("6.20")
    assert "mixed" in text

    text = render_statement_text(statement, "Digits Inc.")
    table = text.splitlines()[2:]
    assert "Provider 80%" in table[0]
    assert len({len(row) for row in table}) == 1
    assert table[-1].split()[-3:] == ["6.20", "4.96", "1.24"]
