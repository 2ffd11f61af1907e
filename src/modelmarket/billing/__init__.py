"""Billing: plans and prices, usage rated under them into a double-entry ledger, invoices with a lifecycle for
consumers, statements and payouts for providers."""

from modelmarket.billing.ledger import LedgerService, ProviderStatement
from modelmarket.billing.lifecycle import InvoiceDoc, InvoiceService
from modelmarket.billing.period import Period, parse_period
from modelmarket.billing.pricing import PriceService
from modelmarket.billing.rating import Rater
from modelmarket.billing.render import render_invoice_text, render_statement_text
from modelmarket.billing.subscriptions import PlanService

__all__ = [
    "InvoiceDoc",
    "InvoiceService",
    "LedgerService",
    "Period",
    "PlanService",
    "PriceService",
    "ProviderStatement",
    "Rater",
    "parse_period",
    "render_invoice_text",
    "render_statement_text",
]
