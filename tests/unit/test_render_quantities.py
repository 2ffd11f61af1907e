"""People see quantities with at most 6 decimals, marked when rounded; documents keep them exact."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from modelmarket.billing.ledger import build_statements
from modelmarket.billing.lifecycle import InvoiceDoc, build_lines
from modelmarket.billing.period import parse_period
from modelmarket.billing.ports import RatedEvent
from modelmarket.billing.render import approx_text, render_invoice_text, render_statement_text
from modelmarket.metering.units import UnitKind

NOVEMBER = parse_period("2026-11")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.05", "0.05"),
        ("12", "12"),
        ("0.0333333333333333333333333333", "~0.033333"),
        ("2.5000000001", "~2.5"),
        ("0.0000001", "~0.000000"),
        ("100.0000004", "~100"),
    ],
)
def test_approx_text(value: str, shown: str) -> None:
    assert approx_text(Decimal(value)) == shown
    assert approx_text(Fraction(value)) == shown  # exact fractions read the same as the decimals they equal


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (Fraction(1, 60), "~0.016667"),
        (Fraction(100, 60), "~1.666667"),
        (Fraction(60, 60), "1"),
        (Fraction(3, 60), "0.05"),
        (Fraction(1, 3_000_000), "~0.000000"),  # rounds to zero: marked, never shown as an exact 0
        (Fraction(0), "0"),
    ],
)
def test_approx_text_of_fractions(value: Fraction, shown: str) -> None:
    assert approx_text(value) == shown


def _second(n: int) -> RatedEvent:
    """One second of audio at 0.006 per minute: 0.006 / 60 = 0.0001, exactly."""
    amount = Fraction("0.006") / 60
    return RatedEvent(
        event_id=f"evt-{n}",
        log_offset=n,
        account_id="acct",
        provider_account_id="prov",
        model_name="speech",
        unit_kind=UnitKind.AUDIO_MINUTE,
        currency="USD",
        period=NOVEMBER.label,
        origin_period=NOVEMBER.label,
        kind="usage",
        plan_name="payg",
        plan_version=0,
        quantity_base=1,
        granted_base=0,
        amount=amount,
        provider_amount=amount * Fraction(4, 5),
        txn_id="tx_usage_1",
    )


def test_audio_quantities_are_exact_in_documents_and_short_on_screen() -> None:
    # 100 one-second events: IU is exactly 100/60 in the document, shown as ~1.666667 to a person.
    rows = [_second(n) for n in range(1, 101)]
    lines = tuple(build_lines(rows, {}, [], NOVEMBER, "USD"))
    invoice = InvoiceDoc(
        "inv_1", "acct", NOVEMBER.label, "USD", "draft", lines, "2026-12-01T00:00:00+00:00", events=100
    )
    [line] = invoice.lines
    assert line.events == 100
    assert line.quantity_iu == Fraction(100, 60)  # exact, not 50 (or 28) digits of 1.666...
    assert line.to_json()["quantity_iu"] == "5/3"
    assert line.amount_exact == Fraction("0.01")  # 100 x 0.006 / 60 = 0.01 exactly
    assert line.amount == Decimal("0.01")
    text = render_invoice_text(invoice, "acct")
    assert "~1.666667" in text and "0.01" in text
    [statement] = build_statements(rows)
    assert statement.lines[0]["quantity_base"] == 100
    text = render_statement_text(statement, "prov")
    assert "~1.666667" in text and "0.01" in text
