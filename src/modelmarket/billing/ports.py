"""What billing needs from storage: the rated usage events of one owner over a period, streamed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Literal, Protocol

from modelmarket.billing.aggregate import UsageRow

Owner = Literal["consumer", "provider"]


class BillingRepository(Protocol):
    def usage_rows(self, owner: Owner, account_id: str, first_day: date, last_day: date) -> Iterator[UsageRow]:
        """The rated events of ``account_id`` (as the consumer who called, or the provider who was paid) whose
        UTC day falls in ``first_day``..``last_day``; streamed in batches, never loaded whole."""
        ...


class BillingUnitOfWork(Protocol):
    @property
    def billing(self) -> BillingRepository: ...
