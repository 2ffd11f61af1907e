"""Invoices (``InvoiceService``) and provider statements (``LedgerService``) from usage events that reach them only
through the event log and the metering consumer's rating, on SQLite and PostgreSQL.

The consumers have no plan (payg) and the models are not published here, so every event is rated at the price
stamped on it: these tests are about the exact arithmetic (one rounding per line, half to even, in the currency's
minor unit; provider + platform = gross), not about plans, which tests/integration/test_economy.py covers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from itertools import count
from pathlib import Path

import pytest

from engines import append_to_log
from modelmarket.adapters.store import SqlStore
from modelmarket.billing import (
    InvoiceDoc,
    Period,
    ProviderStatement,
    parse_period,
    render_invoice_text,
    render_statement_text,
)
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.core.errors import InvalidInput
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

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
    platform: Platform

    def insert(self, *events: UsageEvent) -> None:
        """Append the events to the log, as the gateway does: the services apply the log before they read."""
        append_to_log(self.platform, [(e.id, e.encode()) for e in events])

    def invoices(self, account: str = "acct-consumer", period: Period = JAN) -> list[InvoiceDoc]:
        return self.platform.invoices.invoices(account, period)

    def statements(self, provider: str = "acct-provider", period: Period = JAN) -> list[ProviderStatement]:
        return self.platform.ledger.statements(period, provider)


def _platform(store: SqlStore, home: Path, provider_share: str = "0.80") -> Platform:
    settings = Settings(home=home, provider_share=Decimal(provider_share))
    return bootstrap(settings, store=store, clock=lambda: NOW, runtimes=PluginRuntimes())


@pytest.fixture()
def billing(store: SqlStore, tmp_path: Path) -> Iterator[Billing]:
    yield Billing(_platform(store, tmp_path / "home"))


def _usage(doc: InvoiceDoc) -> list[tuple[str, str | None, int, Fraction, Fraction, Decimal]]:
    return [(li.type, li.model, li.events, li.quantity_iu, li.amount_exact, li.amount) for li in doc.lines]


def test_lines_round_once_half_even(billing: Billing) -> None:
    # sentiment: 0.0625 + 0.0625 = 0.125 -> 0.12 ; speech: 0.135 -> 0.14 (half to even both ways)
    billing.insert(
        _event(model="sentiment", unit_kind=TOKENS, iu="1.25", price="0.05"),
        _event(model="sentiment", unit_kind=TOKENS, iu="1.25", price="0.05"),
        _event(model="speech", unit_kind=AUDIO, iu="2.7", price="0.05"),
    )
    (invoice,) = billing.invoices()

    assert (invoice.currency, invoice.status, invoice.period) == ("USD", "draft", "2026-01")
    assert _usage(invoice) == [
        ("usage", "sentiment", 2, Fraction("2.5"), Fraction("0.125"), Decimal("0.12")),
        ("usage", "speech", 1, Fraction("2.7"), Fraction("0.135"), Decimal("0.14")),  # 162 seconds
    ]
    assert [li.unit_kind for li in invoice.lines] == ["tokens_1k", "audio_minute"]
    assert invoice.total == Decimal("0.26")
    assert sum(li.amount_exact for li in invoice.lines) == Fraction("0.260")
    assert invoice.events == 3


def test_rounding_is_per_line_not_per_event(billing: Billing) -> None:
    # three events of 0.004 each: per-event rounding would give 0.00, per-line gives 0.01 (0.012)
    billing.insert(*(_event(iu="1", price="0.004") for _ in range(3)))
    (invoice,) = billing.invoices()
    assert invoice.lines[0].amount_exact == Fraction("0.012")
    assert invoice.lines[0].amount == invoice.total == Decimal("0.01")


def test_mixed_unit_prices_make_one_line(billing: Billing) -> None:
    billing.insert(_event(price="0.05"), _event(price="0.06"), _event(price="0.050"))
    (invoice,) = billing.invoices()
    (line,) = invoice.lines
    assert (line.events, line.quantity_iu, line.amount_exact, line.amount) == (
        3,
        Fraction(3),
        Fraction("0.16"),
        Decimal("0.16"),
    )


def test_one_invoice_per_currency_in_its_minor_unit(billing: Billing) -> None:
    billing.insert(
        _event(currency="USD", price="0.10"),
        _event(currency="EUR", price="0.20"),
        _event(currency="EUR", price="0.20", model="sentiment", unit_kind=TOKENS),
        _event(currency="JPY", iu="3", price="2.5"),  # 7.5 -> 8 yen (no minor unit, half even)
        _event(currency="KWD", iu="3", price="0.4115"),  # 1.2345 -> 1.234 dinar (three places, half even)
    )
    invoices = billing.invoices()

    assert [(inv.currency, str(inv.total), len(inv.lines)) for inv in invoices] == [
        ("EUR", "0.40", 2),
        ("JPY", "8", 1),
        ("KWD", "1.234", 1),
        ("USD", "0.10", 1),
    ]
    assert [li.model for li in invoices[0].lines] == ["digits", "sentiment"]
    assert len({inv.id for inv in invoices}) == 4  # one invoice per (account, period, currency)
    (jpy,) = billing.statements()[1:2]
    assert (jpy.currency, str(jpy.gross), str(jpy.provider_amount), str(jpy.platform_fee)) == ("JPY", "8", "6", "2")


def test_period_boundaries(billing: Billing) -> None:
    billing.insert(
        _event(day="2025-12-31", price="1"),
        _event(day="2026-01-01", price="0.01"),
        _event(day="2026-01-31", price="0.02"),
        _event(day="2026-02-01", price="10"),
    )
    (invoice,) = billing.invoices()
    (february,) = billing.invoices(period=Period(2026, 2))
    (december,) = billing.invoices(period=parse_period("2025-12"))
    assert (invoice.events, invoice.total) == (2, Decimal("0.03"))
    assert (february.events, february.total) == (1, Decimal("10.00"))
    assert (december.events, december.total) == (1, Decimal("1.00"))
    assert [s.events for s in billing.statements()] == [2]


def test_only_the_accounts_own_events(billing: Billing) -> None:
    billing.insert(_event(account="acct-consumer"), _event(account="acct-other", price="9"))
    (invoice,) = billing.invoices()
    assert billing.invoices("acct-nobody") == []
    assert billing.statements("acct-nobody") == []
    assert billing.invoices("acct-consumer", Period(2025, 12)) == []  # an empty period: no invoice
    assert invoice.total == Decimal("0.05")


def test_documents_include_calls_appended_a_moment_ago(billing: Billing) -> None:
    billing.insert(_event(price="0.05"))
    assert billing.invoices()[0].total == Decimal("0.05")
    billing.insert(_event(price="0.07"))  # not yet metered: the services apply the log before they read
    assert billing.invoices()[0].total == Decimal("0.12")
    assert billing.statements()[0].gross == Decimal("0.12")


def test_invoice_json_has_decimal_strings(billing: Billing) -> None:
    billing.insert(
        _event(unit_kind=TOKENS, iu="1.5", price="0.0333"),
        _event(model="speech", unit_kind=AUDIO, iu="7/60", price="0.0100"),  # 7 seconds: 7/6000, no finite decimal
    )
    (invoice,) = billing.invoices()
    document = json.loads(json.dumps(invoice.to_json()))
    assert (document["period"], document["currency"], document["status"]) == ("2026-01", "USD", "draft")
    assert (document["total"], document["events"]) == ("0.05", 2)
    assert document["lines"][0] == {
        "type": "usage",
        "description": "digits: usage",
        "model": "digits",
        "unit_kind": "tokens_1k",
        "events": 1,
        "quantity_iu": "1.5",
        "amount_exact": "0.04995",
        "amount": "0.05",
    }
    speech = document["lines"][1]
    assert (speech["unit_kind"], speech["quantity_iu"]) == ("audio_minute", "7/60")
    assert (speech["amount_exact"], speech["amount"]) == ("7/6000", "0.00")


def _half_even(value: Fraction) -> Decimal:
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.01"), ROUND_HALF_EVEN)


def test_provider_statement_share_sums_exactly_to_gross(billing: Billing) -> None:
    prices = ["0.0137", "0.0291", "0.0333", "0.0049", "0.1111"]
    events = [
        _event(model=f"m{i % 3}", iu=str(q), price=prices[(i * q) % len(prices)], account=f"c{i % 4}")
        for i, q in enumerate(range(1, 40))
    ]
    events.append(_event(model="m0", currency="EUR", iu="7", price="0.0125"))
    events.append(_event(provider="acct-someone-else", price="5"))
    billing.insert(*events)

    statements = billing.statements()

    assert [s.currency for s in statements] == ["EUR", "USD"]
    usd = statements[1]
    for line in usd.lines:  # the gross of each line is its events' exact sum, rounded once (worked out here)
        exact = sum(
            (Fraction(e.quantity) * Fraction(e.unit_price) for e in events[:39] if e.model == line["model"]),
            Fraction(0),
        )
        assert Decimal(line["gross"]) == _half_even(exact)
        assert Decimal(line["provider_amount"]) == _half_even(exact * Fraction(4, 5))
        assert Decimal(line["provider_amount"]) + Decimal(line["platform_fee"]) == Decimal(line["gross"])
    for statement in statements:
        assert statement.provider_amount + statement.platform_fee == statement.gross
    assert usd.events == 39
    assert sum(line["events"] for line in usd.lines) == 39
    eur_line = statements[0].lines[0]  # 7 x 0.0125 = 0.0875 -> gross 0.09, provider 0.07 (0.0700), fee 0.02
    assert (eur_line["gross"], eur_line["provider_amount"], eur_line["platform_fee"]) == ("0.09", "0.07", "0.02")
    assert [s.provider_account_id for s in billing.platform.ledger.statements(JAN)] == [
        "acct-provider",
        "acct-provider",
        "acct-someone-else",
    ]


def test_statement_rounds_the_provider_share_from_the_precise_gross(billing: Billing) -> None:
    # gross precise 0.135 -> 0.14; provider 0.135 x 0.8 = 0.108 -> 0.11; platform 0.03
    billing.insert(_event(unit_kind=AUDIO, iu="2.7", price="0.05"))
    (statement,) = billing.statements()
    (line,) = statement.lines
    assert (line["gross"], line["provider_amount"], line["platform_fee"]) == ("0.14", "0.11", "0.03")
    document = statement.to_json()
    assert (document["gross"], document["provider_amount"], document["platform_fee"]) == ("0.14", "0.11", "0.03")
    assert billing.platform.ledger.verify().ok


def test_a_share_outside_0_to_1_is_refused(store: SqlStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        _platform(store, tmp_path / "home", provider_share="1.2")


def test_text_renderings_are_aligned_and_name_the_currency(billing: Billing) -> None:
    billing.insert(
        _event(model="sentiment", unit_kind=TOKENS, iu="1.25", price="0.05"),
        _event(model="speech-to-text", unit_kind=AUDIO, iu="2.7", price="0.05"),
        _event(model="speech-to-text", unit_kind=AUDIO, iu="100", price="0.06"),
    )
    (invoice,) = billing.invoices()
    (statement,) = billing.statements()

    text = render_invoice_text(invoice, "acme")
    assert text.splitlines()[0] == f"Invoice {invoice.id} for acme, period 2026-01, currency USD: draft"
    table = text.splitlines()[2:]
    assert len({len(row) for row in table}) == 1  # right-aligned last column: every row ends at one edge
    assert table[0].endswith("Amount (USD)")
    assert table[-1].startswith("Total (USD)") and table[-1].split()[-2:] == ["3", "6.20"]

    text = render_statement_text(statement, "Digits Inc.")
    assert text.splitlines()[0] == "Provider statement for Digits Inc., period 2026-01, currency USD"
    table = text.splitlines()[2:]
    assert "Provider (USD)" in table[0]
    assert len({len(row) for row in table}) == 1
    assert table[-1].split()[-3:] == ["6.20", "4.96", "1.24"]
