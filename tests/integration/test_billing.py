"""Invoices and provider statements from usage events, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from itertools import count

import pytest
from sqlalchemy import insert

from modelmarket.adapters.store import Store
from modelmarket.adapters.store.schema import usage_events
from modelmarket.billing import (
    Period,
    build_invoice,
    build_provider_statement,
    parse_period,
    render_invoice_text,
    render_statement_text,
)
from modelmarket.core.errors import InvalidInput

JAN = Period(2026, 1)
_ids = count(1)


def _event(
    *,
    model: str = "digits",
    quantity: str = "1",
    price: str = "0.05",
    amount: str | None = None,
    currency: str = "USD",
    day: str = "2026-01-15",
    account: str = "acct-consumer",
    provider: str = "acct-provider",
    unit_kind: str = "image",
) -> dict[str, object]:
    n = next(_ids)
    precise = Decimal(quantity) * Decimal(price) if amount is None else Decimal(amount)
    return {
        "event_id": f"evt-{n:08d}",
        "account_id": account,
        "model_name": model,
        "version": "1.0.0",
        "provider_account_id": provider,
        "unit_kind": unit_kind,
        "quantity_iu": Decimal(quantity),
        "unit_price": Decimal(price),
        "amount": precise,
        "currency": currency,
        "occurred_at": f"{day}T12:00:00.000000+00:00",
        "day": day,
        "latency_ms": Decimal("3.5"),
        "log_offset": n,
    }


def _insert(store: Store, *events: dict[str, object]) -> None:
    with store.write() as conn:
        conn.execute(insert(usage_events), list(events))


def test_lines_round_once_half_even(store: Store) -> None:
    # sentiment: 0.0625 + 0.0625 = 0.125 -> 0.12 ; speech: 0.135 -> 0.14 (half to even both ways)
    _insert(
        store,
        _event(model="sentiment", unit_kind="1k_tokens", quantity="1.25", price="0.05"),
        _event(model="sentiment", unit_kind="1k_tokens", quantity="1.25", price="0.05"),
        _event(model="speech", unit_kind="audio_minute", quantity="2.7", price="0.05"),
    )
    with store.read() as conn:
        (invoice,) = build_invoice(conn, "acct-consumer", JAN)

    assert invoice.currency == "USD"
    assert [(li.model_name, li.events, li.amount_precise, li.amount) for li in invoice.lines] == [
        ("sentiment", 2, Decimal("0.125"), Decimal("0.12")),
        ("speech", 1, Decimal("0.135"), Decimal("0.14")),
    ]
    assert invoice.lines[0].quantity_iu == Decimal("2.50")
    assert invoice.total == Decimal("0.26")
    assert invoice.total_precise == Decimal("0.260")
    assert invoice.events == 3


def test_rounding_is_per_line_not_per_event(store: Store) -> None:
    # three events of 0.004 each: per-event rounding would give 0.00, per-line gives 0.01 (0.012)
    _insert(store, *(_event(quantity="1", price="0.004") for _ in range(3)))
    with store.read() as conn:
        (invoice,) = build_invoice(conn, "acct-consumer", JAN)
    assert invoice.lines[0].amount == Decimal("0.01")
    assert invoice.lines[0].unit_price == Decimal("0.004")


def test_mixed_unit_prices_leave_the_unit_price_empty(store: Store) -> None:
    _insert(store, _event(price="0.05"), _event(price="0.06"), _event(price="0.050"))
    with store.read() as conn:
        (invoice,) = build_invoice(conn, "acct-consumer", JAN)
    (line,) = invoice.lines
    assert line.unit_price is None
    assert (line.events, line.quantity_iu, line.amount) == (3, Decimal(3), Decimal("0.16"))


def test_one_invoice_per_currency(store: Store) -> None:
    _insert(
        store,
        _event(currency="USD", price="0.10"),
        _event(currency="EUR", price="0.20"),
        _event(currency="EUR", price="0.20", model="sentiment", unit_kind="1k_tokens"),
        _event(currency="JPY", quantity="3", price="2.5"),  # 7.5 -> 8 yen (no minor unit, half even)
    )
    with store.read() as conn:
        invoices = build_invoice(conn, "acct-consumer", JAN)

    assert [(inv.currency, inv.total, len(inv.lines)) for inv in invoices] == [
        ("EUR", Decimal("0.40"), 2),
        ("JPY", Decimal("8"), 1),
        ("USD", Decimal("0.10"), 1),
    ]
    assert [li.model_name for li in invoices[0].lines] == ["digits", "sentiment"]


def test_period_boundaries(store: Store) -> None:
    _insert(
        store,
        _event(day="2025-12-31", price="1"),
        _event(day="2026-01-01", price="0.01"),
        _event(day="2026-01-31", price="0.02"),
        _event(day="2026-02-01", price="10"),
    )
    with store.read() as conn:
        (invoice,) = build_invoice(conn, "acct-consumer", JAN)
        (february,) = build_invoice(conn, "acct-consumer", Period(2026, 2))
        (december,) = build_invoice(conn, "acct-consumer", parse_period("2025-12"))
    assert (invoice.events, invoice.total) == (2, Decimal("0.03"))
    assert (february.events, february.total) == (1, Decimal("10.00"))
    assert (december.events, december.total) == (1, Decimal("1.00"))


def test_only_the_accounts_own_events(store: Store) -> None:
    _insert(store, _event(account="acct-consumer"), _event(account="acct-other", price="9"))
    with store.read() as conn:
        (invoice,) = build_invoice(conn, "acct-consumer", JAN)
        assert build_invoice(conn, "acct-nobody", JAN) == []
    assert invoice.total == Decimal("0.05")


def test_invoice_json_has_decimal_strings(store: Store) -> None:
    _insert(store, _event(quantity="1.5", price="0.0333"))
    with store.read() as conn:
        (invoice,) = build_invoice(conn, "acct-consumer", JAN)
    document = json.loads(json.dumps(invoice.to_json()))
    assert document["period"] == "2026-01"
    assert document["total"] == "0.05"
    assert document["lines"][0] == {
        "model_name": "digits",
        "unit_kind": "image",
        "events": 1,
        "quantity_iu": "1.5",
        "unit_price": "0.0333",
        "amount_precise": "0.04995",
        "amount": "0.05",
    }


def test_provider_statement_share_sums_exactly_to_gross(store: Store) -> None:
    prices = ["0.0137", "0.0291", "0.0333", "0.0049", "0.1111"]
    events = [
        _event(model=f"m{i % 3}", quantity=str(q), price=prices[(i * q) % len(prices)], account=f"c{i % 4}")
        for i, q in enumerate(range(1, 40))
    ]
    events.append(_event(model="m0", currency="EUR", quantity="7", price="0.0125"))
    events.append(_event(provider="acct-someone-else", price="5"))
    _insert(store, *events)

    with store.read() as conn:
        statements = build_provider_statement(conn, "acct-provider", JAN, Decimal("0.80"))

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


def test_statement_rounds_the_provider_share_from_the_precise_gross(store: Store) -> None:
    # gross precise 0.135 -> 0.14; provider 0.135 x 0.8 = 0.108 -> 0.11; platform 0.03
    _insert(store, _event(quantity="2.7", price="0.05"))
    with store.read() as conn:
        (statement,) = build_provider_statement(conn, "acct-provider", JAN, Decimal("0.8"))
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


def test_statement_refuses_a_share_outside_0_to_1(store: Store) -> None:
    with store.read() as conn, pytest.raises(InvalidInput, match="between 0 and 1"):
        build_provider_statement(conn, "acct-provider", JAN, Decimal("1.2"))


def test_text_renderings_are_aligned_and_name_the_currency(store: Store) -> None:
    _insert(
        store,
        _event(model="sentiment", unit_kind="1k_tokens", quantity="1.25", price="0.05"),
        _event(model="speech-to-text", unit_kind="audio_minute", quantity="2.7", price="0.05"),
        _event(model="speech-to-text", unit_kind="audio_minute", quantity="100", price="0.06"),
    )
    with store.read() as conn:
        (invoice,) = build_invoice(conn, "acct-consumer", JAN)
        (statement,) = build_provider_statement(conn, "acct-provider", JAN, Decimal("0.80"))

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
