"""Reading the audit chain through a unit of work (what the CLI, the API and the dashboard call)."""

from __future__ import annotations

from modelmarket.audit import chain
from modelmarket.audit.ports import AuditUnitOfWork
from modelmarket.audit.records import AuditRecord, VerifyResult
from modelmarket.core.uow import UnitOfWorkFactory


class AuditService:
    def __init__(self, uow: UnitOfWorkFactory[AuditUnitOfWork]) -> None:
        self.uow = uow

    def verify(self, batch_rows: int = chain.VERIFY_BATCH_ROWS) -> VerifyResult:
        with self.uow.read() as uow:
            return chain.verify(uow.audit, batch_rows=batch_rows)

    def list(self, limit: int, after_seq: int = 0) -> list[AuditRecord]:
        with self.uow.read() as uow:
            return chain.list_records(uow.audit, limit, after_seq)

    def head(self) -> AuditRecord | None:
        with self.uow.read() as uow:
            return chain.head(uow.audit)
