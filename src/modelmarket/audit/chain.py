"""The audit chain: append inside the caller's unit of work, verify, list. No storage code here.

Callers put the audit record and the state change it describes in one write transaction, so both commit or
neither does. Payloads must never contain secrets (API keys, tokens, passwords): the log is readable by
operators and exported as is; record what changed and who did it, not the credential used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from modelmarket.audit.ports import AuditRepository, StoredAuditRecord
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
from modelmarket.core.errors import InvalidInput, ensure

VERIFY_BATCH_ROWS = 1000
"""Rows fetched per round trip while verifying; the table is streamed, never loaded whole."""

LIST_LIMIT_MAX = 1000
"""Most records one ``list_records`` call returns."""

FIELD_LENGTHS = {"actor": 200, "action": 100, "subject": 500}
"""Longest actor, action and subject (the store's columns are this wide)."""


def append(
    repo: AuditRepository,
    *,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> AuditRecord:
    """Append one record to the chain, inside the caller's write transaction.

    The repository holds the append lock from reading the head until commit, so call this as the last step of
    the transaction. ``payload`` holds JSON values and Decimals, and never secrets.
    """
    for name, value in (("actor", actor), ("action", action), ("subject", subject)):
        limit = FIELD_LENGTHS[name]
        ensure(0 < len(value) <= limit, f"audit {name} must be 1-{limit} characters, got {len(value)}")
    last = repo.last()
    seq, prev_hash = (1, GENESIS_HASH) if last is None else (last[0] + 1, last[1])
    record = seal(
        seq=seq,
        occurred_at=format_timestamp(now),
        actor=actor,
        action=action,
        subject=subject,
        payload=normalize_payload(payload),
        prev_hash=prev_hash,
    )
    repo.insert(record, canonical_json(dict(record.payload)))
    return record


def verify(repo: AuditRepository, *, batch_rows: int = VERIFY_BATCH_ROWS) -> VerifyResult:
    """Walk the chain in seq order and report the first edited, dropped or reordered record.

    A chain cut short at its end still verifies: the chain alone cannot tell a missing tail from one never
    written. The audit tree's signed checkpoints do (``audit.tree_verify``, run with this by ``audit verify``).
    """
    ensure(batch_rows > 0, "batch_rows must be positive")
    expected_seq, prev_hash = 1, GENESIS_HASH
    for stored in repo.scan(batch_rows):
        outcome = _check_row(stored, expected_seq, prev_hash)
        if isinstance(outcome, str):
            broken_seq = min(stored.seq, expected_seq)
            return VerifyResult(ok=False, records=expected_seq - 1, first_broken_seq=broken_seq, reason=outcome)
        expected_seq, prev_hash = expected_seq + 1, outcome.hash
    return VerifyResult(ok=True, records=expected_seq - 1, first_broken_seq=None, reason=None)


def list_records(repo: AuditRepository, limit: int, after_seq: int = 0) -> list[AuditRecord]:
    """Up to ``limit`` records with seq greater than ``after_seq``, oldest first (page with the last seq)."""
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidInput(f"limit must be between 1 and {LIST_LIMIT_MAX}, got {limit}")
    if after_seq < 0:
        raise InvalidInput(f"after_seq must be 0 or more, got {after_seq}")
    return [record_from_stored(stored) for stored in repo.page(after_seq, limit)]


def head(repo: AuditRepository) -> AuditRecord | None:
    """The newest record, or None for an empty chain."""
    stored = repo.newest()
    return None if stored is None else record_from_stored(stored)


def record_from_stored(stored: StoredAuditRecord) -> AuditRecord:
    """A record as read back, its payload parsed (ValueError when it is not JSON)."""
    return AuditRecord(
        seq=int(stored.seq),
        occurred_at=stored.occurred_at,
        actor=stored.actor,
        action=stored.action,
        subject=stored.subject,
        payload=json.loads(stored.payload_json),
        prev_hash=stored.prev_hash,
        hash=stored.hash,
    )


def _check_row(stored: StoredAuditRecord, expected_seq: int, prev_hash: str) -> AuditRecord | str:
    """The record when it continues the chain, else why it does not."""
    edited = (
        f"record seq {stored.seq} (action {stored.action!r}, subject {stored.subject!r}): "
        "payload is not a JSON object the chain can hash (the record was edited)"
    )
    try:
        record = record_from_stored(stored)
        if not isinstance(record.payload, dict):
            return edited
        reason = check_link(record, expected_seq, prev_hash)
    except (ValueError, TypeError, RecursionError):  # not JSON, or JSON that was never sealed (a float, 2**64)
        return edited
    return record if reason is None else reason
