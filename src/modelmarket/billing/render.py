"""Plain-text invoices and statements for the terminal: aligned columns, currency named, totals line."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

from modelmarket.billing.documents import Invoice, Statement, decimal_text

_GAP = "  "
DISPLAY_PLACES = 6


def approx_text(value: Decimal | Fraction, places: int = DISPLAY_PLACES) -> str:
    """A quantity for people: exact when it fits ``places`` decimals, else rounded to them and marked ``~``."""
    exact = Fraction(value)
    shown = Decimal(round(exact * 10**places)).scaleb(-places)
    if Fraction(shown) == exact:
        return decimal_text(shown.normalize() if shown != 0 else Decimal(0))
    return "~" + decimal_text(shown.normalize() if shown != 0 else shown)


def render_invoice_text(invoice: Invoice, account_name: str) -> str:
    cur = invoice.currency
    header = ["Model", "Unit", "Events", "Quantity (IU)", f"Unit price ({cur})", f"Amount ({cur})"]
    body = [
        [
            line.model_name,
            line.unit_kind.value,
            str(line.events),
            approx_text(line.quantity_iu),
            "mixed" if line.unit_price is None else decimal_text(line.unit_price),
            decimal_text(line.amount),
        ]
        for line in invoice.lines
    ]
    footer = [f"Total ({cur})", "", str(invoice.events), "", "", decimal_text(invoice.total)]
    title = f"Invoice for {account_name}, period {invoice.period.label}, currency {cur}"
    table = _table(header, body, footer, right=[False, False, True, True, True, True])
    return "\n".join([title, "", *table]) + "\n"


def render_statement_text(statement: Statement, provider_name: str) -> str:
    cur = statement.currency
    share = _percent(statement.provider_share)
    header = [
        "Model",
        "Unit",
        "Events",
        "Quantity (IU)",
        f"Gross ({cur})",
        f"Provider {share}",
        "Platform fee",
    ]
    body = [
        [
            line.model_name,
            line.unit_kind.value,
            str(line.events),
            approx_text(line.quantity_iu),
            decimal_text(line.gross),
            decimal_text(line.provider_amount),
            decimal_text(line.platform_fee),
        ]
        for line in statement.lines
    ]
    footer = [
        f"Total ({cur})",
        "",
        str(statement.events),
        "",
        decimal_text(statement.gross),
        decimal_text(statement.provider_amount),
        decimal_text(statement.platform_fee),
    ]
    title = f"Provider statement for {provider_name}, period {statement.period.label}, currency {cur}"
    table = _table(header, body, footer, right=[False, False, True, True, True, True, True])
    return "\n".join([title, "", *table]) + "\n"


def _percent(share: Decimal) -> str:
    return f"{decimal_text((share * 100).normalize())}%"


def _table(
    header: Sequence[str], body: Sequence[Sequence[str]], footer: Sequence[str], right: Sequence[bool]
) -> list[str]:
    rows = [header, *body, footer]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = (cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right, strict=True))
        return _GAP.join(cells).rstrip()

    rule = _GAP.join("-" * w for w in widths)
    return [fmt(header), rule, *(fmt(row) for row in body), rule, fmt(footer)]
