"""Billing: invoices for consumers and statements for providers, built from rated usage events."""

from modelmarket.billing.documents import Invoice, InvoiceLine, Statement, StatementLine
from modelmarket.billing.invoices import build_invoice, build_provider_statement
from modelmarket.billing.period import Period, parse_period
from modelmarket.billing.render import render_invoice_text, render_statement_text

__all__ = [
    "Invoice",
    "InvoiceLine",
    "Period",
    "Statement",
    "StatementLine",
    "build_invoice",
    "build_provider_statement",
    "parse_period",
    "render_invoice_text",
    "render_statement_text",
]
