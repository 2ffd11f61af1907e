"""Pure audit rules: canonical JSON, record hashes, and how a broken link is described."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

import modelmarket.audit
from modelmarket.audit import GENESIS_HASH, canonical_json
from modelmarket.audit.records import AuditRecord, check_link, format_timestamp, normalize_payload, seal
from modelmarket.core.errors import InvariantViolated


def _record(seq: int = 1, prev_hash: str = GENESIS_HASH) -> AuditRecord:
    return seal(
        seq=seq,
        occurred_at="2026-01-01T00:00:00.000000+00:00",
        actor="operator:alice",
        action="model.approve",
        subject="model:digits",
        payload={"stage": "review"},
        prev_hash=prev_hash,
    )


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": [1, {"d": 2, "c": "ü"}], "a": None}) == '{"a":null,"b":[1,{"c":"ü","d":2}]}'


def test_canonical_json_refuses_nan_and_unknown_types() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError, match="set"):
        canonical_json({"x": {1, 2}})


def test_normalize_payload_turns_decimals_into_strings() -> None:
    assert normalize_payload({"price": Decimal("0.010"), "n": 3}) == {"n": 3, "price": "0.010"}


def test_timestamps_are_utc_and_must_be_aware() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 1, 1, 2, 0, tzinfo=plus_two)) == "2026-01-01T00:00:00.000000+00:00"
    with pytest.raises(InvariantViolated, match="timezone"):
        format_timestamp(datetime(2026, 1, 1))
    assert format_timestamp(datetime(2026, 1, 1, tzinfo=UTC)).endswith("+00:00")


def test_every_field_is_covered_by_the_hash() -> None:
    record = _record()
    changes: dict[str, Any] = {
        "seq": 2,
        "occurred_at": "2026-01-01T00:00:00.000001+00:00",
        "actor": "operator:bob",
        "action": "model.reject",
        "subject": "model:other",
        "payload": {"stage": "published"},
        "prev_hash": "f" * 64,
    }
    for field, value in changes.items():
        assert replace(record, **{field: value}).expected_hash() != record.hash, field


def test_check_link_accepts_the_next_record_and_names_what_is_wrong() -> None:
    first = _record()
    second = _record(seq=2, prev_hash=first.hash)
    assert check_link(first, 1, GENESIS_HASH) is None
    assert check_link(second, 2, first.hash) is None

    edited = replace(second, payload={"stage": "forged"})
    assert "was edited" in (check_link(edited, 2, first.hash) or "")
    assert "seq 2 is missing" in (check_link(_record(seq=3), 2, first.hash) or "")
    assert "seqs 1-2 are missing" in (check_link(_record(seq=3), 1, GENESIS_HASH) or "")
    assert "prev_hash" in (check_link(second, 2, "e" * 64) or "")
    assert "reordered" in (check_link(replace(second, seq=2, prev_hash="e" * 64), 2, first.hash) or "")


def test_public_names() -> None:
    assert sorted(modelmarket.audit.__all__) == [
        "AuditRecord",
        "GENESIS_HASH",
        "VerifyResult",
        "append",
        "canonical_json",
        "head",
        "list_records",
        "record_hash",
        "verify",
    ]
