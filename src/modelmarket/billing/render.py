"""Plain-text invoices and provider statements for the terminal: aligned columns, currency named, a total line.

The amounts shown are the documents' own rounded lines and their sums (``InvoiceDoc``, ``ProviderStatement``);
only quantities are shortened for people (``approx_text``), and marked when they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

from modelmarket.billing.ledger import ProviderStatement
from modelmarket.billing.lifecycle import InvoiceDoc
from modelmarket.billing.token_lines import TokenLine
from modelmarket.core.money import decimal_text
from modelmarket.metering.units import UnitKind

_GAP = "  "
DISPLAY_PLACES = 6


def approx_text(value: Decimal | Fraction, places: int = DISPLAY_PLACES) -> str:
    """A quantity for people: exact when it fits ``places`` decimals, else rounded to them and marked ``~``."""
    exact = Fraction(value)
    shown = Decimal(round(exact * 10**places)).scaleb(-places)
    if Fraction(shown) == exact:
        return decimal_text(shown.normalize() if shown != 0 else Decimal(0))
    return "~" + decimal_text(shown.normalize() if shown != 0 else shown)


def token_line_text(part: TokenLine) -> str:
    """How a line's input or output tokens are described: ``input tokens at 0.01 per 1k``, marked when a dynamic
    price factor applied to some of them (the amount is then not quantity x price)."""
    factor = " x price factor" if part.factored else ""
    return f"{part.direction} tokens at {decimal_text(part.price_per_iu)} per 1k{factor}"


def render_invoice_text(invoice: InvoiceDoc, account_name: str) -> str:
    """The invoice with its status, one row per line (plan fees, granted or included IU, usage, overage,
    adjustments, shortfall; under a line of input and output token prices, a row for each) and the total; then
    when it was finalized, or voided and its credit note."""
    cur = invoice.currency
    header = ["Type", "Description", "Unit", "Events", "Quantity (IU)", f"Amount ({cur})"]
    body: list[list[str]] = []
    for line in invoice.lines:
        body.append(
            [
                line.type,
                line.description,
                line.unit_kind or "",
                str(line.events) if line.model else "",
                approx_text(line.quantity_iu) if line.model else "",
                decimal_text(line.amount),
            ]
        )
        body.extend(
            [
                "",
                f"  {token_line_text(part)}",
                "",
                str(part.events),
                approx_text(part.quantity_iu),
                decimal_text(part.amount),
            ]
            for part in line.tokens
        )
    footer = [f"Total ({cur})", "", "", str(invoice.events), "", decimal_text(invoice.total)]
    title = f"Invoice {invoice.id} for {account_name}, period {invoice.period}, currency {cur}: {invoice.status}"
    out = [title, "", *_table(header, body, footer, right=[False, False, False, True, True, True])]
    if invoice.finalized_at:
        out.append(f"finalized at {invoice.finalized_at}")
    if invoice.status == "void":
        out.append(f"voided at {invoice.voided_at}: {invoice.void_reason}")
        out.append(f"credit note: {decimal_text(-invoice.total)} {cur}")
    return "\n".join(out) + "\n"


def render_statement_text(statement: ProviderStatement, provider_name: str) -> str:
    """The provider's statement: per model, gross revenue split into the provider's amount and the platform fee."""
    cur = statement.currency
    header = [
        "Model",
        "Unit",
        "Events",
        "Quantity (IU)",
        f"Gross ({cur})",
        f"Provider ({cur})",
        f"Platform fee ({cur})",
    ]
    body = [
        [
            line["model"],
            line["unit_kind"],
            str(line["events"]),
            approx_text(UnitKind(line["unit_kind"]).iu(line["quantity_base"])),
            line["gross"],
            line["provider_amount"],
            line["platform_fee"],
        ]
        for line in statement.lines
    ]
    totals = (statement.gross, statement.provider_amount, statement.platform_fee)
    footer = [f"Total ({cur})", "", str(statement.events), "", *(decimal_text(x) for x in totals)]
    title = f"Provider statement for {provider_name}, period {statement.period}, currency {cur}"
    table = _table(header, body, footer, right=[False, False, True, True, True, True, True])
    return "\n".join([title, "", *table]) + "\n"


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
