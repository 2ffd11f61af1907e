"""Audit records and their hashes: canonical JSON and SHA-256, no I/O.

A record's hash is the SHA-256 of the RFC 8785 (JSON Canonicalization Scheme, JCS) serialization of
``{seq, occurred_at, actor, action, subject, payload, prev_hash}``. JCS is a published standard, so a checkpoint
or an exported chain can be checked by anyone with a JCS library in any language, not only by re-running
Python's ``json.dumps``. Each record names the hash of the one before it (``prev_hash``; the first record names
``GENESIS_HASH``), so editing, dropping or reordering any record breaks the chain from that point on.

Payload values are what JCS can carry exactly: objects with string keys, arrays, strings, booleans, null and
integers within +/-(2**53 - 1). Decimals are written as their string (JCS has no decimal type, and money must not
pass through a binary float). Floats are refused, finite or not: money is Decimal here, and a float's value is
an approximation of what the caller meant, which a hash must not quietly pin down; pass a Decimal or a string.

Chains written before the switch used an ad hoc scheme (``json.dumps`` with sorted keys, see
``legacy_record_hash``); migration 0002 checks them with it and re-seals them with JCS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import rfc8785

from modelmarket.core.errors import ensure

GENESIS_HASH = "0" * 64

JCS_INTEGER_MAX = 2**53 - 1
"""Largest integer magnitude RFC 8785 represents exactly (JSON numbers are IEEE 754 doubles there)."""


class RecordHashFn(Protocol):
    """``record_hash``'s signature, so a check can run with either the current or the legacy hash."""

    def __call__(
        self,
        *,
        seq: int,
        occurred_at: str,
        actor: str,
        action: str,
        subject: str,
        payload: Mapping[str, Any],
        prev_hash: str,
    ) -> str: ...


_JsonValue = None | bool | int | str | list["_JsonValue"] | dict[str, "_JsonValue"]


def _jcs_value(value: object) -> _JsonValue:
    """``value`` as plain JSON values for JCS: Decimals become strings; floats and other types are refused."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        if abs(value) > JCS_INTEGER_MAX:
            raise ValueError(
                f"audit payload integer {value} is beyond +/-{JCS_INTEGER_MAX}, which RFC 8785 cannot carry "
                "exactly; pass it as a string"
            )
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        raise TypeError(f"audit payloads hold no floats (got {value!r}); pass a Decimal or a string")
    if isinstance(value, Mapping):
        return {_jcs_key(key): _jcs_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jcs_value(item) for item in value]
    raise TypeError(f"audit payloads hold JSON values and Decimals, not {type(value).__name__}")


def _jcs_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"audit payload object keys are strings, not {type(key).__name__} ({key!r})")
    return key


def canonical_json_bytes(value: object) -> bytes:
    """The one serialization that is hashed: RFC 8785 (keys in UTF-16 code unit order, no whitespace, UTF-8)."""
    return rfc8785.dumps(_jcs_value(value))


def canonical_json(value: object) -> str:
    """``canonical_json_bytes`` as text: valid, compact JSON with non-ASCII kept, stored as ``payload_json``."""
    return canonical_json_bytes(value).decode("utf-8")


def normalize_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as it reads back from storage (Decimals become strings), so hashes match on verify."""
    normalized = json.loads(canonical_json(dict(payload)))
    ensure(isinstance(normalized, dict), "an audit payload is a JSON object")
    return normalized  # type: ignore[no-any-return]


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds, e.g. ``2026-01-31T12:00:00.000000+00:00``."""
    ensure(moment.utcoffset() is not None, "audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _hashed_document(
    *,
    seq: int,
    occurred_at: str,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "occurred_at": occurred_at,
        "actor": actor,
        "action": action,
        "subject": subject,
        "payload": payload,
        "prev_hash": prev_hash,
    }


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
    """SHA-256 (hex) of the RFC 8785 serialization of the record's fields."""
    document = _hashed_document(
        seq=seq,
        occurred_at=occurred_at,
        actor=actor,
        action=action,
        subject=subject,
        payload=payload,
        prev_hash=prev_hash,
    )
    return hashlib.sha256(canonical_json_bytes(document)).hexdigest()


# -- Legacy scheme: ONLY for migration 0002 ------------------------------------------------------------------
# Chains sealed before the switch to RFC 8785 hash Python's json.dumps with sorted keys. The migration verifies
# them with these functions before re-sealing them (and its downgrade writes them back). Never seal or verify a
# live chain with them: the store holds RFC 8785 hashes once the migration has run.


def _legacy_json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"audit payloads hold JSON values and Decimals, not {type(value).__name__}")


def legacy_canonical_json(value: object) -> str:
    """LEGACY, only for migration 0002: sorted keys (by code point), no whitespace, non-ASCII kept, no NaN."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_legacy_json_default,
    )


def legacy_record_hash(
    *,
    seq: int,
    occurred_at: str,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """LEGACY, only for migration 0002: SHA-256 (hex) of ``legacy_canonical_json`` of the record's fields."""
    document = _hashed_document(
        seq=seq,
        occurred_at=occurred_at,
        actor=actor,
        action=action,
        subject=subject,
        payload=payload,
        prev_hash=prev_hash,
    )
    return hashlib.sha256(legacy_canonical_json(document).encode("utf-8")).hexdigest()


def legacy_check_link(record: AuditRecord, expected_seq: int, prev_hash: str) -> str | None:
    """LEGACY, only for migration 0002: ``check_link`` with the record's hash recomputed by the legacy scheme."""
    return _link_problem(record, expected_seq, prev_hash, legacy_record_hash)


# -- Records and links ---------------------------------------------------------------------------------------


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
        return self.hash_with(record_hash)

    def hash_with(self, hash_fn: RecordHashFn) -> str:
        """This record's contents hashed by ``hash_fn`` (``record_hash``, or the legacy one in migration 0002)."""
        return hash_fn(
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
    return _link_problem(record, expected_seq, prev_hash, record_hash)


def _link_problem(record: AuditRecord, expected_seq: int, prev_hash: str, hash_fn: RecordHashFn) -> str | None:
    if record.seq != expected_seq:
        return _gap_reason(record, expected_seq)
    hash_ok = record.hash_with(hash_fn) == record.hash
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
