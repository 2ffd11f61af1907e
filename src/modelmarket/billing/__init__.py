"""Billing: invoices for consumers and statements for providers, built from rated usage events."""

from modelmarket.billing.documents import Invoice, InvoiceLine, Statement, StatementLine
from modelmarket.billing.invoices import BillingService
from modelmarket.billing.period import Period, parse_period
from modelmarket.billing.render import render_invoice_text, render_statement_text

__all__ = [
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
