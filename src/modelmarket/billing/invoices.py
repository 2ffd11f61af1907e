"""Invoices and provider statements from the rated usage events (the only source), through a unit of work.

Rows are streamed and summed exactly; the rounding rules live in ``billing.documents``. Usage is brought up to
date first, so a document includes calls answered a moment ago.
"""

from __future__ import annotations

from decimal import Decimal

from modelmarket.billing.aggregate import aggregate_usage
from modelmarket.billing.documents import Invoice, Statement, build_invoices, build_statements, check_share
from modelmarket.billing.period import Period
from modelmarket.billing.ports import BillingUnitOfWork
from modelmarket.core.uow import UnitOfWorkFactory
from modelmarket.metering.consumer import MeteringService


class BillingService:
    def __init__(
        self, uow: UnitOfWorkFactory[BillingUnitOfWork], metering: MeteringService, provider_share: Decimal
    ) -> None:
        self.uow = uow
        self.metering = metering
        self.provider_share = check_share(provider_share)

    def invoices(self, account_id: str, period: Period) -> list[Invoice]:
        """The consumer's invoices for ``period``: one per currency used, ordered by currency."""
        self.metering.catch_up()
        with self.uow.read() as uow:
            rows = uow.billing.usage_rows("consumer", account_id, period.first_day, period.last_day)
            return build_invoices(account_id, period, aggregate_usage(rows))

    def statements(self, provider_account_id: str, period: Period) -> list[Statement]:
        """The provider's statements for ``period``: one per currency earned, ordered by currency."""
        self.metering.catch_up()
        with self.uow.read() as uow:
            rows = uow.billing.usage_rows("provider", provider_account_id, period.first_day, period.last_day)
            return build_statements(provider_account_id, period, aggregate_usage(rows), self.provider_share)
