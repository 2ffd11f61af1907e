"""Invoices and provider statements read from the rated usage events in the store.

The ``usage_events`` table is the only source: one row per rated event, its precise ``amount`` stamped by the
metering consumer. Rows are streamed and summed exactly in Python (decimals are stored as text, so the
database never rounds them); the rounding rules live in ``billing.documents``.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from sqlalchemy import ColumnElement, Connection, select

from modelmarket.adapters.store.schema import usage_events
from modelmarket.billing.aggregate import UsageRow, aggregate_usage
from modelmarket.billing.documents import Invoice, Statement, build_invoices, build_statements, check_share
from modelmarket.billing.period import Period

USAGE_BATCH_ROWS = 2000
"""Usage rows fetched per round trip while building a document (events are streamed, never loaded whole)."""


def build_invoice(conn: Connection, account_id: str, period: Period) -> list[Invoice]:
    """The consumer's invoices for ``period``: one per currency used, ordered by currency."""
    rows = _usage_rows(conn, usage_events.c.account_id == account_id, period)
    return build_invoices(account_id, period, aggregate_usage(rows))


def build_provider_statement(
    conn: Connection, provider_account_id: str, period: Period, provider_share: Decimal
) -> list[Statement]:
    """The provider's statements for ``period``: one per currency earned, ordered by currency."""
    share = check_share(provider_share)
    rows = _usage_rows(conn, usage_events.c.provider_account_id == provider_account_id, period)
    return build_statements(provider_account_id, period, aggregate_usage(rows), share)


def _usage_rows(conn: Connection, owner: ColumnElement[bool], period: Period) -> Iterator[UsageRow]:
    stmt = (
        select(
            usage_events.c.currency,
            usage_events.c.model_name,
            usage_events.c.unit_kind,
            usage_events.c.quantity_iu,
            usage_events.c.unit_price,
            usage_events.c.amount,
            usage_events.c.amount_divisor,
            usage_events.c.quantity_base,
        )
        .where(
            owner,
            usage_events.c.day >= period.first_day.isoformat(),
            usage_events.c.day <= period.last_day.isoformat(),
        )
        .execution_options(yield_per=USAGE_BATCH_ROWS)
    )
    with conn.execute(stmt) as result:
        for row in result:
            yield UsageRow._make(row)
