"""The audit chain in the store: append inside the caller's write transaction, verify, list.

Callers put the audit record and the state change it describes in one write transaction, so both commit or
neither does. Payloads must never contain secrets (API keys, tokens, passwords): the log is readable by
operators and exported as is; record what changed and who did it, not the credential used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, insert, select, text

from modelmarket.adapters.store.schema import audit_log
from modelmarket.audit.records import (
    GENESIS_HASH,
    AuditRecord,
    VerifyResult,
    canonical_json,
    check_link,
    format_timestamp,
    normalize_payload,
    seal,
)
from modelmarket.core.errors import InvalidInput, InvariantViolated, ensure

VERIFY_BATCH_ROWS = 1000
"""Rows fetched per round trip while verifying; the table is streamed, never loaded whole."""

LIST_LIMIT_MAX = 1000
"""Most records one ``list_records`` call returns."""

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


class _RecordRow(NamedTuple):
    seq: int
    occurred_at: str
    actor: str
    action: str
    subject: str
    payload_json: str
    prev_hash: str
    hash: str


def append(
    conn: Connection,
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> AuditRecord:
    """Append one record to the chain, inside the caller's write transaction.

    On PostgreSQL the table is locked (SHARE ROW EXCLUSIVE, which readers pass) until the transaction ends, so
    concurrent appenders take turns; on SQLite the store's write transaction (BEGIN IMMEDIATE) already does.
    The lock is held until commit, so call this as the last step of the transaction; the transaction must be
    READ COMMITTED (the default) or this must be its first statement. ``payload`` holds JSON values and
    Decimals, and never secrets.
    """
    _check_lengths(actor=actor, action=action, subject=subject)
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE"))
    last = conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)).first()
    seq, prev_hash = (1, GENESIS_HASH) if last is None else (int(last.seq) + 1, str(last.hash))
    record = seal(
        seq=seq,
        occurred_at=format_timestamp(now),
        actor=actor,
        action=action,
        subject=subject,
        payload=normalize_payload(payload),
        prev_hash=prev_hash,
    )
    conn.execute(insert(audit_log).values(_to_row(record)))
    return record


def verify(conn: Connection, *, batch_rows: int = VERIFY_BATCH_ROWS) -> VerifyResult:
    """Walk the chain in seq order and report the first edited, dropped or reordered record.

    A chain cut short at its end still verifies: the chain alone cannot tell a missing tail from one never
    written, so compare the head against a checkpoint kept elsewhere for that.
    """
    ensure(batch_rows > 0, "batch_rows must be positive")
    expected_seq, prev_hash = 1, GENESIS_HASH
    stmt = select(*_COLUMNS).order_by(audit_log.c.seq).execution_options(yield_per=batch_rows)
    with conn.execute(stmt) as result:
        for row in result:
            outcome = _check_row(_RecordRow._make(row), expected_seq, prev_hash)
            if isinstance(outcome, str):
                broken_seq = min(int(row.seq), expected_seq)
                return VerifyResult(ok=False, records=expected_seq - 1, first_broken_seq=broken_seq, reason=outcome)
            expected_seq, prev_hash = expected_seq + 1, outcome.hash
    return VerifyResult(ok=True, records=expected_seq - 1, first_broken_seq=None, reason=None)


def list_records(conn: Connection, limit: int, after_seq: int = 0) -> list[AuditRecord]:
    """Up to ``limit`` records with seq greater than ``after_seq``, oldest first (page with the last seq)."""
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidInput(f"limit must be between 1 and {LIST_LIMIT_MAX}, got {limit}")
    if after_seq < 0:
        raise InvalidInput(f"after_seq must be 0 or more, got {after_seq}")
    stmt = select(*_COLUMNS).where(audit_log.c.seq > after_seq).order_by(audit_log.c.seq).limit(limit)
    return [_record_from_row(_RecordRow._make(row)) for row in conn.execute(stmt)]


def head(conn: Connection) -> AuditRecord | None:
    """The newest record, or None for an empty chain."""
    row = conn.execute(select(*_COLUMNS).order_by(audit_log.c.seq.desc()).limit(1)).first()
    return None if row is None else _record_from_row(_RecordRow._make(row))


def _check_lengths(**values: str) -> None:
    for name, value in values.items():
        limit = _column_length(name)
        ensure(0 < len(value) <= limit, f"audit {name} must be 1-{limit} characters, got {len(value)}")


def _column_length(name: str) -> int:
    length = getattr(audit_log.c[name].type, "length", None)
    if not isinstance(length, int):
        raise InvariantViolated(f"audit_log.{name} has no length")
    return length


def _to_row(record: AuditRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "occurred_at": record.occurred_at,
        "actor": record.actor,
        "action": record.action,
        "subject": record.subject,
        "payload_json": canonical_json(dict(record.payload)),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def _record_from_row(row: _RecordRow) -> AuditRecord:
    return AuditRecord(
        seq=int(row.seq),
        occurred_at=row.occurred_at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        payload=json.loads(row.payload_json),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def _check_row(row: _RecordRow, expected_seq: int, prev_hash: str) -> AuditRecord | str:
    """The record when it continues the chain, else why it does not."""
    try:
        record = _record_from_row(row)
    except ValueError:  # payload_json is not JSON at all
        record = None
    if record is None or not isinstance(record.payload, dict):
        return (
            f"record seq {row.seq} (action {row.action!r}, subject {row.subject!r}): "
            "payload is not a JSON object (the record was edited)"
        )
    reason = check_link(record, expected_seq, prev_hash)
    return record if reason is None else reason
