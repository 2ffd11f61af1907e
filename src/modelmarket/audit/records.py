"""Audit records and their hashes: canonical JSON and SHA-256, no I/O.

A record's hash is the SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8, non-ASCII kept as is)
of ``{seq, occurred_at, actor, action, subject, payload, prev_hash}``. Each record names the hash of the one
before it (``prev_hash``; the first record names ``GENESIS_HASH``), so editing, dropping or reordering any
record breaks the chain from that point on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from modelmarket.core.errors import ensure

GENESIS_HASH = "0" * 64


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"audit payloads hold JSON values and Decimals, not {type(value).__name__}")


def canonical_json(value: object) -> str:
    """The one serialization that is hashed: sorted keys, no whitespace, non-ASCII kept, no NaN."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


def normalize_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as it reads back from storage (Decimals become strings), so hashes match on verify."""
    normalized = json.loads(canonical_json(dict(payload)))
    ensure(isinstance(normalized, dict), "an audit payload is a JSON object")
    return normalized  # type: ignore[no-any-return]


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds, e.g. ``2026-01-31T12:00:00.000000+00:00``."""
    ensure(moment.utcoffset() is not None, "audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def record_hash(
    *,
    seq: int,
    occurred_at: str,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> str:
    document = {
        "seq": seq,
        "occurred_at": occurred_at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "payload": payload,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One link of the chain. ``payload`` is never a place for secrets (keys, tokens, passwords)."""

    seq: int
    occurred_at: str
    actor: str
    action: str
    subject: str
    payload: Mapping[str, Any]
    prev_hash: str
    hash: str

    def expected_hash(self) -> str:
        """The hash this record's contents should have; differs from ``hash`` if the record was altered."""
        return record_hash(
            seq=self.seq,
            occurred_at=self.occurred_at,
            actor=self.actor,
            action=self.action,
            subject=self.subject,
            payload=self.payload,
            prev_hash=self.prev_hash,
        )

    def describe(self) -> str:
        return f"record seq {self.seq} (action {self.action!r}, subject {self.subject!r})"

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "occurred_at": self.occurred_at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "payload": dict(self.payload),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def seal(
    *,
    seq: int,
    occurred_at: str,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> AuditRecord:
    """A new record with its hash computed. ``payload`` must already be normalized."""
    unsealed = AuditRecord(seq, occurred_at, actor, action, subject, payload, prev_hash, hash="")
    return replace(unsealed, hash=unsealed.expected_hash())


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of walking the chain.

    ``records`` counts the records that form an intact chain from the genesis (all of them when ``ok``);
    ``first_broken_seq`` is the first sequence number at which the chain breaks (a missing seq for a dropped
    record) and ``reason`` names the record and what is wrong with it.
    """

    ok: bool
    records: int
    first_broken_seq: int | None
    reason: str | None


def check_link(record: AuditRecord, expected_seq: int, prev_hash: str) -> str | None:
    """Why ``record`` does not continue a chain whose next seq is ``expected_seq``; None when it does."""
    if record.seq != expected_seq:
        return _gap_reason(record, expected_seq)
    hash_ok = record.expected_hash() == record.hash
    link_ok = record.prev_hash == prev_hash
    if hash_ok and link_ok:
        return None
    if not link_ok and not hash_ok:
        return (
            f"{record.describe()}: neither its hash nor its prev_hash fit the chain "
            "(the record was reordered, replaced or rewritten)"
        )
    if not hash_ok:
        return f"{record.describe()}: stored hash does not match the record's contents (the record was edited)"
    return (
        f"{record.describe()}: prev_hash does not match the hash of seq {expected_seq - 1} "
        "(a record before it was dropped, replaced or rehashed)"
    )


def _gap_reason(record: AuditRecord, expected_seq: int) -> str:
    if record.seq < expected_seq:
        return f"{record.describe()} appears after seq {expected_seq - 1} (records out of order)"
    missing = (
        f"seq {expected_seq} is" if record.seq == expected_seq + 1 else f"seqs {expected_seq}-{record.seq - 1} are"
    )
    where = "is the first record" if expected_seq == 1 else f"follows seq {expected_seq - 1}"
    return f"{record.describe()} {where}: {missing} missing (dropped)"
