"""Pure audit rules: canonical JSON, record hashes, and how a broken link is described."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import rfc8785

import modelmarket.audit
from modelmarket.audit import GENESIS_HASH, canonical_json
from modelmarket.audit.records import (
    JCS_INTEGER_MAX,
    AuditRecord,
    canonical_json_bytes,
    check_link,
    format_timestamp,
    legacy_canonical_json,
    legacy_check_link,
    legacy_record_hash,
    normalize_payload,
    record_hash,
    seal,
)
from modelmarket.core.errors import InvariantViolated

# Keys whose order differs between code points (the legacy sort) and UTF-16 code units (RFC 8785): U+1F600 is
# the surrogate pair D83D DE00, which sorts before U+FB33 in UTF-16 but after it by code point.
EMOJI, DALET = "\U0001f600", "\ufb33"


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


def test_canonical_json_refuses_floats_unknown_types_and_non_string_keys() -> None:
    for number in (float("nan"), float("inf"), 1.5, 1.0):
        with pytest.raises(TypeError, match=r"no floats.*Decimal"):
            canonical_json({"x": [number]})
    with pytest.raises(TypeError, match="set"):
        canonical_json({"x": {1, 2}})
    with pytest.raises(TypeError, match="keys are strings"):
        canonical_json({"x": {1: "one"}})


def test_rfc8785_key_order_is_by_utf16_code_units() -> None:
    """The sorting example of RFC 8785 section 3.2.3, checked against the text the RFC prints."""
    document = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        DALET: "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        EMOJI: "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys_in_order = ["\r", "1", "\u0080", "\u00f6", "\u20ac", EMOJI, DALET]

    assert list(json.loads(canonical_json(document))) == keys_in_order
    assert canonical_json(document).startswith('{"\\r":"Carriage Return","1":"One","\u0080":"Control"')
    assert canonical_json_bytes(document) == rfc8785.dumps(document)
    assert canonical_json({"a": 1, "\u20ac": 2}) == '{"a":1,"\u20ac":2}'
    # the legacy scheme sorted by code point: that is where the two serializations part
    assert list(json.loads(legacy_canonical_json(document)))[-2:] == [DALET, EMOJI]


def test_integers_strings_and_literals_canonicalize_per_rfc8785() -> None:
    """The string and literals of the RFC 8785 section 3.2.4 example, plus the integer range JCS carries exactly."""
    parsed = json.loads(
        '{"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}'
    )
    assert canonical_json(parsed) == '{"literals":[null,true,false],"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    integers = [0, -0, 7, -7, JCS_INTEGER_MAX, -JCS_INTEGER_MAX]
    assert canonical_json(integers) == f"[0,0,7,-7,{JCS_INTEGER_MAX},-{JCS_INTEGER_MAX}]"
    for too_big in (JCS_INTEGER_MAX + 1, -JCS_INTEGER_MAX - 1, 10**30):
        with pytest.raises(ValueError, match="pass it as a string"):
            canonical_json({"n": too_big})
    assert canonical_json({"tab\t": "\u001f\b\f\u007f"}) == '{"tab\\t":"\\u001f\\b\\f\u007f"}'


def test_record_hash_is_sha256_of_the_rfc8785_document() -> None:
    fields: dict[str, Any] = {
        "seq": 9,
        "occurred_at": "2026-01-01T00:00:00.000000+00:00",
        "actor": "operator:\u00e9",
        "action": "model.published",
        "subject": "digits@1.0.0",
        "payload": {EMOJI: "x", DALET: ["y", None, True, 3], "price": "0.010"},
        "prev_hash": "ab" * 32,
    }
    expected = hashlib.sha256(rfc8785.dumps(fields)).hexdigest()
    assert record_hash(**fields) == expected
    # Decimals are hashed as their string, exactly as they read back from storage
    assert record_hash(**{**fields, "payload": {**fields["payload"], "price": Decimal("0.010")}}) == expected


def test_legacy_hash_is_the_old_sorted_keys_scheme_and_differs_where_the_serializations_do() -> None:
    fields: dict[str, Any] = {
        "seq": 1,
        "occurred_at": "2026-01-01T00:00:00.000000+00:00",
        "actor": "a",
        "action": "model.published",
        "subject": "s",
        "payload": {"artifacts": {EMOJI: "1" * 64, DALET: "2" * 64}},
        "prev_hash": GENESIS_HASH,
    }
    old_text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert legacy_record_hash(**fields) == hashlib.sha256(old_text.encode("utf-8")).hexdigest()
    assert legacy_record_hash(**fields) != record_hash(**fields)
    # for documents whose keys sort alike both ways the bytes, and so the hashes, are the same
    plain = {**fields, "payload": {"b": "gr\u00fcn \u2713", "a": [1, None]}}
    assert legacy_canonical_json(plain) == canonical_json(plain)
    assert legacy_record_hash(**plain) == record_hash(**plain)


def test_legacy_check_link_verifies_legacy_seals_only() -> None:
    current = _record()
    payload = {EMOJI: 1, DALET: 2}
    legacy = replace(current, payload=payload, hash="")
    legacy = replace(legacy, hash=legacy.hash_with(legacy_record_hash))
    assert legacy_check_link(legacy, 1, GENESIS_HASH) is None
    assert "was edited" in (check_link(legacy, 1, GENESIS_HASH) or "")
    resealed = seal(**{k: v for k, v in legacy.to_json().items() if k != "hash"})
    assert check_link(resealed, 1, GENESIS_HASH) is None
    assert "was edited" in (legacy_check_link(resealed, 1, GENESIS_HASH) or "")
    assert "seq 1 is missing" in (legacy_check_link(replace(legacy, seq=2), 1, GENESIS_HASH) or "")


def test_normalize_payload_turns_decimals_into_strings() -> None:
    normalized = normalize_payload({"price": Decimal("0.010"), "n": 3, "t": (1, 2)})
    assert normalized == {"n": 3, "price": "0.010", "t": [1, 2]}
    with pytest.raises(TypeError, match="no floats"):
        normalize_payload({"price": 0.01})


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
        "AuditService",
        "GENESIS_HASH",
        "VerifyResult",
        "append",
        "canonical_json",
        "head",
        "list_records",
        "record_hash",
        "verify",
    ]
