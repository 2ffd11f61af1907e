"""The audit hash chain on SQLite and PostgreSQL: append, verify, and tampering detected."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from sqlalchemy import delete, select, text, update

from modelmarket.adapters.store import Store
from modelmarket.adapters.store.schema import audit_log
from modelmarket.audit import GENESIS_HASH, VerifyResult, append, head, list_records, record_hash, verify
from modelmarket.core.errors import InvalidInput

T0 = datetime(2026, 1, 31, 23, 59, 59, 123456, tzinfo=UTC)


def _append_n(store: Store, n: int) -> None:
    for i in range(n):
        with store.write() as conn:
            append(
                conn,
                actor="operator:alice",
                action="model.approve" if i % 2 else "price.set",
                subject=f"model:digits@1.{i}.0",
                payload={"index": i, "price_per_iu": Decimal("0.0125"), "note": "grün ✓"},
                now=T0 + timedelta(seconds=i),
            )


def _verify(store: Store, batch_rows: int = 1000) -> VerifyResult:
    with store.read() as conn:
        return verify(conn, batch_rows=batch_rows)


def test_append_builds_a_chain_that_verifies(store: Store) -> None:
    _append_n(store, 7)

    result = _verify(store, batch_rows=3)  # several fetch batches

    assert (result.ok, result.records, result.first_broken_seq, result.reason) == (True, 7, None, None)
    with store.read() as conn:
        records = list_records(conn, limit=100)
    assert [r.seq for r in records] == list(range(1, 8))
    assert records[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in pairwise(records))


def test_hash_is_sha256_of_canonical_json(store: Store) -> None:
    with store.write() as conn:
        record = append(conn, actor="a", action="key.issue", subject="account:x", payload={"b": 1, "a": "é"}, now=T0)
    document = {
        "seq": 1,
        "occurred_at": "2026-01-31T23:59:59.123456+00:00",
        "actor": "a",
        "action": "key.issue",
        "subject": "account:x",
        "payload": {"a": "é", "b": 1},
        "prev_hash": "0" * 64,
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert record.hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    with store.read() as conn:
        stored = conn.execute(select(audit_log.c.payload_json, audit_log.c.hash)).one()
    assert stored.payload_json == '{"a":"é","b":1}'
    assert stored.hash == record.hash


def test_decimals_in_payload_are_stored_as_strings(store: Store) -> None:
    with store.write() as conn:
        record = append(conn, actor="a", action="price.set", subject="m", payload={"p": Decimal("0.10")}, now=T0)
    assert record.payload == {"p": "0.10"}
    with store.read() as conn:
        assert list_records(conn, limit=1)[0].payload == {"p": "0.10"}


def test_append_rolls_back_with_the_callers_transaction(store: Store) -> None:
    _append_n(store, 2)
    with pytest.raises(RuntimeError), store.write() as conn:
        append(conn, actor="a", action="model.publish", subject="m", payload={}, now=T0)
        raise RuntimeError("the state change failed")

    with store.read() as conn:
        last = head(conn)
    assert last is not None and last.seq == 2
    assert _verify(store).records == 2


def test_edited_payload_is_detected_at_that_seq(store: Store) -> None:
    _append_n(store, 6)
    with store.write() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 4).values(payload_json='{"index":99}'))

    result = _verify(store, batch_rows=2)

    assert not result.ok
    assert result.first_broken_seq == 4
    assert result.records == 3
    assert result.reason is not None
    assert "seq 4" in result.reason and "edited" in result.reason
    assert "model.approve" in result.reason and "model:digits@1.3.0" in result.reason


def test_edited_actor_is_detected(store: Store) -> None:
    _append_n(store, 3)
    with store.write() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="operator:mallory"))

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 2)


def test_payload_replaced_by_non_json_is_detected(store: Store) -> None:
    _append_n(store, 3)
    with store.write() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(payload_json="not json"))

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 3)
    assert result.reason is not None and "payload" in result.reason


def test_dropped_middle_record_is_detected(store: Store) -> None:
    _append_n(store, 5)
    with store.write() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 3))

    result = _verify(store)

    assert not result.ok
    assert result.first_broken_seq == 3
    assert result.records == 2
    assert result.reason is not None and "seq 3 is missing" in result.reason and "seq 4" in result.reason


def test_dropped_record_with_renumbered_successors_is_detected(store: Store) -> None:
    _append_n(store, 5)
    with store.write() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 3))
        for seq in (4, 5):
            conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(seq=seq - 1))

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 3)


def test_dropped_first_record_is_detected(store: Store) -> None:
    _append_n(store, 3)
    with store.write() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 1))

    result = _verify(store)

    assert (result.ok, result.records, result.first_broken_seq) == (False, 0, 1)


def test_swapped_records_are_detected(store: Store) -> None:
    _append_n(store, 6)
    columns = [c for c in audit_log.c if c.name != "seq"]
    with store.write() as conn:
        two = conn.execute(select(*columns).where(audit_log.c.seq == 2)).one()._asdict()
        five = conn.execute(select(*columns).where(audit_log.c.seq == 5)).one()._asdict()
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(**five))
        conn.execute(update(audit_log).where(audit_log.c.seq == 5).values(**two))

    result = _verify(store)

    assert not result.ok
    assert result.first_broken_seq == 2
    assert result.reason is not None and "seq 2" in result.reason and "reordered" in result.reason


def test_rehashed_edit_is_caught_at_the_next_record(store: Store) -> None:
    """Recomputing the edited record's own hash does not help: its successor no longer links to it."""
    _append_n(store, 4)
    with store.read() as conn:
        original = list_records(conn, limit=10)[1]
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
    with store.write() as conn:
        conn.execute(
            update(audit_log)
            .where(audit_log.c.seq == 2)
            .values(payload_json=json.dumps(forged_payload), hash=forged_hash)
        )

    result = _verify(store)

    assert (result.ok, result.first_broken_seq) == (False, 3)
    assert result.reason is not None and "prev_hash" in result.reason


def test_concurrent_appends_from_two_threads_form_one_chain(store: Store) -> None:
    per_thread = 25
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                with store.write() as conn:
                    append(conn, actor=name, action="usage.note", subject=f"{name}:{i}", payload={"i": i}, now=T0)
                    if store.dialect == "postgresql":
                        conn.execute(text("SELECT pg_sleep(0.001)"))  # widen the race window
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
    with store.read() as conn:
        actors = [r.actor for r in list_records(conn, limit=1000)]
    assert actors.count("worker-0") == actors.count("worker-1") == per_thread


def test_list_records_pages_after_seq(store: Store) -> None:
    _append_n(store, 5)
    with store.read() as conn:
        page = list_records(conn, limit=2, after_seq=2)
        with pytest.raises(InvalidInput, match="limit"):
            list_records(conn, limit=0)
    assert [r.seq for r in page] == [3, 4]
    assert page[0].to_json()["payload"]["price_per_iu"] == "0.0125"


def test_empty_chain_verifies(store: Store) -> None:
    assert _verify(store).ok
    with store.read() as conn:
        assert head(conn) is None
