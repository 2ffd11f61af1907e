"""Re-seal the audit chain with RFC 8785 (JCS) hashes, after checking it with the legacy hash.

The chain was hashed over Python's ``json.dumps(sort_keys=True)``; it is now hashed over the RFC 8785 serialization
(see ``modelmarket.audit.records``). Every record's hash changes, and so does every ``prev_hash`` after it.

The old chain is verified in full first: a broken chain stops the migration, naming the first broken seq, because
re-sealing it would give the tampered records valid hashes. Then every record is re-sealed in seq order, and its
``payload_json`` rewritten in the JCS form (the key order differs for some non-ASCII keys). Both passes stream
the table in batches on the migration's connection, inside its transaction: it all commits or none of it does.
Stop every writer still running the old code before upgrading: a record it appends afterwards is sealed with the
old hash and breaks the chain. The downgrade does the reverse (check with JCS, re-seal with the legacy hash).

Revision ID: m0002
Revises: m0001
"""

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import op

from modelmarket.audit.records import (
    GENESIS_HASH,
    AuditRecord,
    RecordHashFn,
    canonical_json,
    check_link,
    legacy_canonical_json,
    legacy_check_link,
    legacy_record_hash,
    record_hash,
)
from modelmarket.core.errors import Conflict, InvariantViolated

revision = "m0002"
down_revision = "m0001"
branch_labels = None
depends_on = None

RESEAL_BATCH_ROWS = 1000
"""Audit rows read (and then updated) per round trip; the table is streamed, never loaded whole."""

# A lightweight table: this migration must keep working whatever the application's schema module becomes.
_audit_log = sa.table(
    "audit_log",
    sa.column("seq", sa.BigInteger),
    sa.column("occurred_at", sa.String),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("subject", sa.String),
    sa.column("payload_json", sa.Text),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)


class _Scheme(NamedTuple):
    """One way of hashing the chain: how a link is checked, how a record is hashed, how its payload is stored."""

    name: str
    check_link: Callable[[AuditRecord, int, str], str | None]
    record_hash: RecordHashFn
    serialize: Callable[[object], str]


_LEGACY = _Scheme("the legacy sorted-keys JSON hash", legacy_check_link, legacy_record_hash, legacy_canonical_json)
_JCS = _Scheme("the RFC 8785 hash", check_link, record_hash, canonical_json)


def upgrade() -> None:
    _reseal(op.get_bind(), old=_LEGACY, new=_JCS)


def downgrade() -> None:
    _reseal(op.get_bind(), old=_JCS, new=_LEGACY)


def _reseal(conn: sa.Connection, *, old: _Scheme, new: _Scheme) -> None:
    """Check the whole chain under ``old``, then re-link and re-seal every record under ``new``."""
    if conn.dialect.name == "postgresql":
        # The lock appenders take: no record joins the chain between the check and the re-seal.
        conn.execute(sa.text("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE"))
    _verify(conn, old)
    update = (
        sa.update(_audit_log)
        .where(_audit_log.c.seq == sa.bindparam("b_seq"))
        .values(
            payload_json=sa.bindparam("b_payload_json"),
            prev_hash=sa.bindparam("b_prev_hash"),
            hash=sa.bindparam("b_hash"),
        )
    )
    prev_hash = GENESIS_HASH
    for rows in _batches(conn):
        changes: list[dict[str, Any]] = []
        for row in rows:
            record = _record(row)
            if record is None:
                raise InvariantViolated(f"audit seq {row.seq} became unreadable after it verified")
            change = _resealed(record, prev_hash, new)
            changes.append(change)
            prev_hash = change["b_hash"]
        conn.execute(update, changes)


def _verify(conn: sa.Connection, scheme: _Scheme) -> None:
    """Raise ``Conflict`` naming the first broken seq unless the whole chain verifies under ``scheme``."""
    expected_seq, prev_hash = 1, GENESIS_HASH
    for rows in _batches(conn):
        for row in rows:
            record = _record(row)
            reason = (
                f"audit record seq {row.seq} (action {row.action!r}, subject {row.subject!r}): "
                "payload is not a JSON object (the record was edited)"
                if record is None
                else scheme.check_link(record, expected_seq, prev_hash)
            )
            if reason is not None:
                raise Conflict(_broken_message(min(int(row.seq), expected_seq), reason, scheme))
            expected_seq, prev_hash = expected_seq + 1, row.hash


def _broken_message(seq: int, reason: str, scheme: _Scheme) -> str:
    return (
        f"audit chain is broken at seq {seq}, checked with {scheme.name}: {reason}. "
        "Migration 0002 re-seals only an intact chain, since re-sealing a broken one would hide the tampering. "
        "Nothing was changed: compare audit_log with a backup, restore the altered records, then upgrade again."
    )


def _resealed(record: AuditRecord, prev_hash: str, scheme: _Scheme) -> dict[str, Any]:
    """The update that links ``record`` after ``prev_hash`` and seals it with ``scheme``."""
    relinked = replace(record, prev_hash=prev_hash)
    try:
        payload_json = scheme.serialize(dict(record.payload))
        new_hash = relinked.hash_with(scheme.record_hash)
    except (TypeError, ValueError) as exc:  # e.g. a float or a huge integer, which RFC 8785 cannot carry
        raise Conflict(
            f"audit {record.describe()} cannot be sealed with {scheme.name}: {exc}. Nothing was changed."
        ) from exc
    return {"b_seq": record.seq, "b_payload_json": payload_json, "b_prev_hash": prev_hash, "b_hash": new_hash}


def _batches(conn: sa.Connection) -> Iterator[Sequence[sa.Row[Any]]]:
    """The table in seq order, ``RESEAL_BATCH_ROWS`` at a time; keyset paging, so updates between batches are safe."""
    after_seq = 0
    while True:
        stmt = sa.select(_audit_log).where(_audit_log.c.seq > after_seq).order_by(_audit_log.c.seq)
        rows = conn.execute(stmt.limit(RESEAL_BATCH_ROWS)).all()
        if not rows:
            return
        yield rows
        after_seq = int(rows[-1].seq)


def _record(row: sa.Row[Any]) -> AuditRecord | None:
    """The stored record, or None when its ``payload_json`` is not a JSON object."""
    try:
        payload = json.loads(row.payload_json)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    return AuditRecord(
        seq=int(row.seq),
        occurred_at=row.occurred_at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        payload=payload,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
