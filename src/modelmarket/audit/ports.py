"""What the audit chain needs from storage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

from modelmarket.audit.records import AuditRecord


class StoredAuditRecord(NamedTuple):
    """A record as stored: ``payload_json`` is text, parsed (and checked) by the chain, not by the adapter."""

    seq: int
    occurred_at: str
    actor: str
    action: str
    subject: str
    payload_json: str
    prev_hash: str
    hash: str


class AuditRepository(Protocol):
    def last(self) -> tuple[int, str] | None:
        """The (seq, hash) of the newest record, or None. Takes the append lock until the transaction ends, so
        concurrent appenders take turns (call it as the last step of a write transaction)."""
        ...

    def insert(self, record: AuditRecord, payload_json: str) -> None: ...

    def scan(self, batch_rows: int) -> Iterator[StoredAuditRecord]:
        """Every record in seq order, fetched ``batch_rows`` at a time (the table is never loaded whole)."""
        ...

    def page(self, after_seq: int, limit: int) -> list[StoredAuditRecord]: ...

    def newest(self) -> StoredAuditRecord | None: ...


class AuditUnitOfWork(Protocol):
    @property
    def audit(self) -> AuditRepository: ...
