"""A printable invoice as one self-contained HTML page: inline style, no scripts, no external assets.

Every piece of text that comes from data (account names, descriptions, the void reason) is HTML-escaped. The
amounts are the invoice's own rounded lines and their sum, so the page and ``invoices show`` always agree.
"""

from __future__ import annotations

from html import escape

from modelmarket.billing.lifecycle import InvoiceDoc
from modelmarket.billing.render import approx_text, token_line_text
from modelmarket.core.money import decimal_text

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111; margin: 2.5em; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
.meta { color: #444; margin: 0 0 1.5em; }
.meta td { padding: .1em 1.2em .1em 0; }
table.lines { border-collapse: collapse; width: 100%; }
table.lines th, table.lines td { border-bottom: 1px solid #ccc; padding: .4em .6em; text-align: left; }
table.lines th { background: #f3f3f3; }
table.lines .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.lines tfoot td { font-weight: bold; border-top: 2px solid #111; border-bottom: none; }
.status { display: inline-block; padding: .1em .6em; border: 1px solid #888; border-radius: .3em; }
.status-void { color: #a00; border-color: #a00; }
.credit { margin-top: 1.5em; padding: .8em 1em; border: 1px solid #a00; }
.empty { color: #666; font-style: italic; }
table.lines tr.tokens td { color: #444; border-bottom-style: dotted; }
table.lines tr.tokens td:nth-child(2) { padding-left: 2em; }
@media print { body { margin: 1cm; } table.lines th { background: none; } }
"""


def render_invoice_html(invoice: InvoiceDoc, account_name: str) -> str:
    """The invoice as a complete HTML document (UTF-8), ready to open in a browser and print."""
    cur = escape(invoice.currency)
    title = f"Invoice {invoice.id}"
    meta = [
        ("Account", account_name),
        ("Period", invoice.period),
        ("Currency", invoice.currency),
        ("Updated", invoice.updated_at),
    ]
    if invoice.finalized_at:
        meta.append(("Finalized", invoice.finalized_at))
    if invoice.voided_at:
        meta.append(("Voided", invoice.voided_at))
    meta_rows = "\n".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in meta)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p>Status: <span class="status status-{escape(invoice.status)}">{escape(invoice.status)}</span></p>',
        f'<table class="meta">\n{meta_rows}\n</table>',
        _lines_table(invoice, cur),
    ]
    if invoice.status == "draft":
        parts.append('<p class="empty">Draft: recomputed from usage until it is finalized.</p>')
    if invoice.status == "void":
        credit = decimal_text(-invoice.total)
        parts.append(
            '<div class="credit"><strong>Credit note</strong>: '
            f"{escape(credit)} {cur} reverses this invoice.<br>"
            f"Reason: {escape(invoice.void_reason or '')}</div>"
        )
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _lines_table(invoice: InvoiceDoc, cur: str) -> str:
    head = (
        "<thead><tr><th>Type</th><th>Description</th>"
        f'<th class="num">Quantity (IU)</th><th class="num">Amount ({cur})</th></tr></thead>'
    )
    rows = []
    for line in invoice.lines:
        rows.append(
            "<tr>"
            f"<td>{escape(line.type)}</td>"
            f"<td>{escape(line.description)}</td>"
            f'<td class="num">{escape(approx_text(line.quantity_iu)) if line.model else ""}</td>'
            f'<td class="num">{escape(decimal_text(line.amount))}</td>'
            "</tr>"
        )
        rows.extend(
            f'<tr class="tokens tokens-{escape(part.direction)}">'
            "<td></td>"
            f"<td>{escape(token_line_text(part))}</td>"
            f'<td class="num">{escape(approx_text(part.quantity_iu))}</td>'
            f'<td class="num">{escape(decimal_text(part.amount))}</td>'
            "</tr>"
            for part in line.tokens
        )
    if not rows:
        rows = ['<tr><td colspan="4" class="empty">no charges in this period</td></tr>']
    foot = (
        f'<tfoot><tr><td colspan="3">Total ({cur})</td>'
        f'<td class="num">{escape(decimal_text(invoice.total))}</td></tr></tfoot>'
    )
    body = "\n".join(rows)
    return f'<table class="lines">\n{head}\n<tbody>\n{body}\n</tbody>\n{foot}\n</table>'
