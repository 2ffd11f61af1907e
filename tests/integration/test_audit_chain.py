"""The audit hash chain on SQLite and PostgreSQL: append, verify, and tampering detected."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
import rfc8785
from sqlalchemy import delete, select, text, update

from modelmarket.adapters.store import SqlStore
from modelmarket.adapters.store.schema import audit_log
from modelmarket.audit import (
    GENESIS_HASH,
    AuditService,
    VerifyResult,
    append,
    head,
    list_records,
    record_hash,
    verify,
)
from modelmarket.audit.records import legacy_record_hash
from modelmarket.core.errors import InvalidInput, InvariantViolated

T0 = datetime(2026, 1, 31, 23, 59, 59, 123456, tzinfo=UTC)


def _append_n(store: SqlStore, n: int) -> None:
    for i in range(n):
        with store.write() as uow:
            append(
                uow.audit,
                actor="operator:alice",
                action="model.approve" if i % 2 else "price.set",
                subject=f"model:digits@1.{i}.0",
                payload={"index": i, "price_per_iu": Decimal("0.0125"), "note": "grün ✓"},
                now=T0 + timedelta(seconds=i),
            )


def _verify(store: SqlStore, batch_rows: int = 1000) -> VerifyResult:
    with store.read() as uow:
        return verify(uow.audit, batch_rows=batch_rows)


def test_append_builds_a_chain_that_verifies(store: SqlStore) -> None:
    _append_n(store, 7)

    result = _verify(store, batch_rows=3)  # several fetch batches

    assert (result.ok, result.records, result.first_broken_seq, result.reason) == (True, 7, None, None)
    with store.read() as uow:
        records = list_records(uow.audit, limit=100)
    assert [r.seq for r in records] == list(range(1, 8))
    assert records[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in pairwise(records))


def test_hash_is_sha256_of_canonical_json(store: SqlStore) -> None:
    # RFC 8785 (JCS) orders keys by UTF-16 code units: "\U0001f600" (a surrogate pair, 0xD83D...) sorts before
    # "\ufb01", where Python's sorted keys (code points) put it after. The hash is JCS's, not json.dumps's.
    payload = {"b": 1, "a": "é", "\ufb01": 2, "\U0001f600": 3}
    with store.write() as uow:
        record = append(uow.audit, actor="a", action="key.issue", subject="account:x", payload=payload, now=T0)
    document = {
        "seq": 1,
        "occurred_at": "2026-01-31T23:59:59.123456+00:00",
        "actor": "a",
        "action": "key.issue",
        "subject": "account:x",
        "payload": payload,
        "prev_hash": "0" * 64,
    }
    assert record.hash == hashlib.sha256(rfc8785.dumps(document)).hexdigest()
    legacy = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record.hash != hashlib.sha256(legacy.encode("utf-8")).hexdigest() == legacy_record_hash(**document)
    with store.read() as uow:
        stored = uow.conn.execute(select(audit_log.c.payload_json, audit_log.c.hash)).one()
    assert stored.payload_json == '{"a":"é","b":1,"\U0001f600":3,"\ufb01":2}'
    assert stored.hash == record.hash


def test_decimals_in_payload_are_stored_as_strings(store: SqlStore) -> None:
    with store.write() as uow:
        record = append(uow.audit, actor="a", action="price.set", subject="m", payload={"p": Decimal("0.10")}, now=T0)
    assert record.payload == {"p": "0.10"}
    with store.read() as uow:
        assert list_records(uow.audit, limit=1)[0].payload == {"p": "0.10"}


def test_append_rolls_back_with_the_callers_transaction(store: SqlStore) -> None:
    _append_n(store, 2)
    with pytest.raises(RuntimeError), store.write() as uow:
        append(uow.audit, actor="a", action="model.publish", subject="m", payload={}, now=T0)
        raise RuntimeError("the state change failed")

    with store.read() as uow:
        last = head(uow.audit)
    assert last is not None and last.seq == 2
    assert _verify(store).records == 2


def test_edited_payload_is_detected_at_that_seq(store: SqlStore) -> None:
    _append_n(store, 6)
    with store.write() as uow:
        uow.conn.execute(update(audit_log).where(audit_log.c.seq == 4).values(payload_json='{"index":99}'))

    result = _verify(store, batch_rows=2)

    assert not result.ok
    assert result.first_broken_seq == 4
    assert result.records == 3
    assert result.reason is not None
    assert "seq 4" in result.reason and "edited" in result.reason
    assert "model.approve" in result.reason and "model:digits@1.3.0" in result.reason


def test_edited_actor_is_detected(store: SqlStore) -> None:
    _append_n(store, 3)
    with store.write() as uow:
        uow.conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="operator:mallory"))

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 2)


def test_payload_replaced_by_non_json_is_detected(store: SqlStore) -> None:
    _append_n(store, 3)
    with store.write() as uow:
        uow.conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(payload_json="not json"))

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 3)
    assert result.reason is not None and "payload" in result.reason


def test_dropped_middle_record_is_detected(store: SqlStore) -> None:
    _append_n(store, 5)
    with store.write() as uow:
        uow.conn.execute(delete(audit_log).where(audit_log.c.seq == 3))

    result = _verify(store)

    assert not result.ok
    assert result.first_broken_seq == 3
    assert result.records == 2
    assert result.reason is not None and "seq 3 is missing" in result.reason and "seq 4" in result.reason


def test_dropped_record_with_renumbered_successors_is_detected(store: SqlStore) -> None:
    _append_n(store, 5)
    with store.write() as uow:
        uow.conn.execute(delete(audit_log).where(audit_log.c.seq == 3))
        for seq in (4, 5):
            uow.conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(seq=seq - 1))

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 3)


def test_dropped_first_record_is_detected(store: SqlStore) -> None:
    _append_n(store, 3)
    with store.write() as uow:
        uow.conn.execute(delete(audit_log).where(audit_log.c.seq == 1))

    result = _verify(store)

    assert (result.ok, result.records, result.first_broken_seq) == (False, 0, 1)


def test_swapped_records_are_detected(store: SqlStore) -> None:
    _append_n(store, 6)
    columns = [c for c in audit_log.c if c.name != "seq"]
    with store.write() as uow:
        two = uow.conn.execute(select(*columns).where(audit_log.c.seq == 2)).one()._asdict()
        five = uow.conn.execute(select(*columns).where(audit_log.c.seq == 5)).one()._asdict()
        uow.conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(**five))
        uow.conn.execute(update(audit_log).where(audit_log.c.seq == 5).values(**two))

    result = _verify(store)

    assert not result.ok
    assert result.first_broken_seq == 2
    assert result.reason is not None and "seq 2" in result.reason and "reordered" in result.reason


def test_rehashed_edit_is_caught_at_the_next_record(store: SqlStore) -> None:
    """Recomputing the edited record's own hash does not help: its successor no longer links to it."""
    _append_n(store, 4)
    with store.read() as uow:
        original = list_records(uow.audit, limit=10)[1]
    forged_payload = {**original.payload, "index": 42}
    forged_hash = record_hash(
        seq=2,
        occurred_at=original.occurred_at,
        actor=original.actor,
        action=original.action,
        subject=original.subject,
        payload=forged_payload,
        prev_hash=original.prev_hash,
    )
    with store.write() as uow:
        uow.conn.execute(
            update(audit_log)
            .where(audit_log.c.seq == 2)
            .values(payload_json=json.dumps(forged_payload), hash=forged_hash)
        )

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 3)
    assert result.reason is not None and "prev_hash" in result.reason


def test_concurrent_appends_from_two_threads_form_one_chain(store: SqlStore) -> None:
    per_thread = 25
    postgres = store.engine.dialect.name == "postgresql"
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                with store.write() as uow:
                    append(uow.audit, actor=name, action="usage.note", subject=f"{name}:{i}", payload={"i": i}, now=T0)
                    if postgres:
                        uow.conn.execute(text("SELECT pg_sleep(0.001)"))  # widen the race window
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"worker-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    result = _verify(store)
    assert (result.ok, result.records) == (True, 2 * per_thread)
    with store.read() as uow:
        actors = [r.actor for r in list_records(uow.audit, limit=1000)]
    assert actors.count("worker-0") == actors.count("worker-1") == per_thread


def test_list_records_pages_after_seq(store: SqlStore) -> None:
    _append_n(store, 5)
    with store.read() as uow:
        page = list_records(uow.audit, limit=2, after_seq=2)
        with pytest.raises(InvalidInput, match="limit"):
            list_records(uow.audit, limit=0)
        with pytest.raises(InvalidInput, match="after_seq"):
            list_records(uow.audit, limit=1, after_seq=-1)
    assert [r.seq for r in page] == [3, 4]
    assert page[0].to_json()["payload"]["price_per_iu"] == "0.0125"


def test_empty_chain_verifies(store: SqlStore) -> None:
    assert _verify(store).ok
    with store.read() as uow:
        assert head(uow.audit) is None
    assert AuditService(store).head() is None


def test_audit_service_reads_the_chain_through_the_store(store: SqlStore) -> None:
    _append_n(store, 3)
    service = AuditService(store)
    assert service.verify(batch_rows=1) == VerifyResult(ok=True, records=3, first_broken_seq=None, reason=None)
    assert [r.seq for r in service.list(limit=2, after_seq=1)] == [2, 3]
    newest = service.head()
    assert newest is not None and (newest.seq, newest.subject) == (3, "model:digits@1.2.0")
    with store.write() as uow:
        uow.conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(subject="model:other"))
    result = service.verify()
    assert (result.ok, result.first_broken_seq) == (False, 2)


def test_append_refuses_fields_longer_than_their_columns(store: SqlStore) -> None:
    with pytest.raises(InvariantViolated, match="audit subject must be 1-500 characters"), store.write() as uow:
        append(uow.audit, actor="a", action="x", subject="s" * 501, payload={}, now=T0)
    with pytest.raises(InvariantViolated, match="audit actor"), store.write() as uow:
        append(uow.audit, actor="", action="x", subject="s", payload={}, now=T0)
    assert _verify(store).records == 0
