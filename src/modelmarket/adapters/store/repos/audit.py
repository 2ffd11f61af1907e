"""``AuditRepository`` on SQL. Inserting a record also grows the audit tree by its leaf and signs a checkpoint
(``audit.trees.record_appended``), in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection, insert, select, text

from modelmarket.adapters.store.repos.proofs import SqlProofRepository
from modelmarket.adapters.store.schema import audit_log
from modelmarket.audit.ports import CheckpointSigner, StoredAuditRecord
from modelmarket.audit.records import AuditRecord
from modelmarket.audit.trees import record_appended

_COLUMNS = (
    audit_log.c.seq,
    audit_log.c.occurred_at,
    audit_log.c.actor,
    audit_log.c.action,
    audit_log.c.subject,
    audit_log.c.payload_json,
    audit_log.c.prev_hash,
    audit_log.c.hash,
)


class SqlAuditRepository:
    def __init__(
        self, conn: Connection, proofs: SqlProofRepository | None = None, signer: CheckpointSigner | None = None
    ) -> None:
        self.conn = conn
        self.proofs = proofs if proofs is not None else SqlProofRepository(conn)
        self.signer = signer
        self.appended = False
        """Whether this transaction inserted a record (the store announces the change after it commits)."""

    def last(self) -> tuple[int, str] | None:
        if self.conn.dialect.name == "postgresql":
            # Appenders take turns until commit; readers (SHARE ROW EXCLUSIVE lets them) are not blocked. On
            # SQLite the write transaction (BEGIN IMMEDIATE) already serializes appenders.
            self.conn.execute(text("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE"))
        row = self.conn.execute(
            select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
        ).first()
        return None if row is None else (int(row.seq), str(row.hash))

    def insert(self, record: AuditRecord, payload_json: str) -> None:
        self.conn.execute(
            insert(audit_log).values(
                seq=record.seq,
                occurred_at=record.occurred_at,
                actor=record.actor,
                action=record.action,
                subject=record.subject,
                payload_json=payload_json,
                prev_hash=record.prev_hash,
                hash=record.hash,
            )
        )
        record_appended(self.proofs, record, self.signer)
        self.appended = True

    def scan(self, batch_rows: int) -> Iterator[StoredAuditRecord]:
        stmt = select(*_COLUMNS).order_by(audit_log.c.seq).execution_options(yield_per=batch_rows)
        with self.conn.execute(stmt) as result:
            for row in result:
                yield StoredAuditRecord._make(row)

    def page(self, after_seq: int, limit: int) -> list[StoredAuditRecord]:
        stmt = select(*_COLUMNS).where(audit_log.c.seq > after_seq).order_by(audit_log.c.seq).limit(limit)
        return [StoredAuditRecord._make(row) for row in self.conn.execute(stmt)]

    def newest(self) -> StoredAuditRecord | None:
        row = self.conn.execute(select(*_COLUMNS).order_by(audit_log.c.seq.desc()).limit(1)).first()
        return None if row is None else StoredAuditRecord._make(row)
