"""What each verifiable tree's leaves are: the exact bytes hashed into it. Pure.

Both encodings are RFC 8785 (JCS) canonical JSON, UTF-8: a reader sees every field, and any JCS library gives the
same bytes from the same fields.

- ``audit`` tree: one leaf per audit record, in seq order (leaf index = seq - 1): the record's sealed form,
  ``{seq, occurred_at, actor, action, subject, payload, prev_hash, hash}``.
- ``usage`` tree: one leaf per usage event as the metering consumer applied it, in event log order: the facts an
  invoice is built from (``USAGE_LEAF_FIELDS``). ``list_amount`` is the event's exact amount at its stamped price
  (``quantity x unit_price / divisor``: a decimal or, for audio seconds priced per minute, a fraction ``n/d``);
  the invoice's amount follows from it and the plan in force (grants, tiers), as ``docs/billing.md`` tells.

The usage leaf is on the metering hot path, so it is serialized by orjson with sorted keys rather than by the
general JCS encoder: for objects of ASCII keys whose values are strings and integers within +/-(2**53 - 1) the
two give the same bytes (a unit test checks it on every escaped and non-ASCII character class).
"""

from __future__ import annotations

import functools
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

import orjson

from modelmarket.audit.records import JCS_INTEGER_MAX, AuditRecord, canonical_json_bytes
from modelmarket.core.errors import InvariantViolated
from modelmarket.core.money import exact_text

AUDIT_TREE = "audit"
USAGE_TREE = "usage"
TREES = (AUDIT_TREE, USAGE_TREE)

USAGE_LEAF_FIELDS = (
    "account",
    "currency",
    "event_id",
    "list_amount",
    "log_offset",
    "model",
    "occurred_at",
    "provider",
    "quantity",
    "quantity_out",
    "unit_kind",
    "unit_price",
    "version",
)
"""The keys of a usage leaf, in their canonical (sorted) order."""
_INT_MAX = JCS_INTEGER_MAX


class UsageFacts(NamedTuple):
    """A usage event's facts as ``usage_events`` stores them (decimals as their stored text). A named tuple: one is
    made per applied event, on the metering hot path."""

    event_id: str
    account_id: str
    model: str
    version: str
    provider_account_id: str
    unit_kind: str
    quantity: int
    quantity_out: int
    unit_price: str
    amount_numerator: str
    divisor: int
    currency: str
    occurred_at: str
    log_offset: int


def audit_leaf(record: AuditRecord) -> bytes:
    """The audit tree's leaf of ``record``: the JCS form of the sealed record (its hash included)."""
    return canonical_json_bytes(record.to_json())


@functools.lru_cache(maxsize=4096)
def _amount_text(numerator: str, divisor: int) -> str:
    return exact_text(Fraction(Decimal(numerator)) / divisor)


def usage_leaf(f: UsageFacts) -> bytes:
    """The usage tree's leaf of one applied event."""
    if not (0 <= f.quantity <= _INT_MAX and 0 <= f.quantity_out <= _INT_MAX and 0 <= f.log_offset <= _INT_MAX):
        raise InvariantViolated(f"usage event {f.event_id}: its quantities and log offset must be 0 to 2**53 - 1")
    return orjson.dumps(
        {
            "account": f.account_id,
            "currency": f.currency,
            "event_id": f.event_id,
            "list_amount": _amount_text(f.amount_numerator, f.divisor),
            "log_offset": f.log_offset,
            "model": f.model,
            "occurred_at": f.occurred_at,
            "provider": f.provider_account_id,
            "quantity": f.quantity,
            "quantity_out": f.quantity_out,
            "unit_kind": f.unit_kind,
            "unit_price": f.unit_price,
            "version": f.version,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def parse_ref(ref: str) -> tuple[str, str]:
    """``audit:SEQ`` -> (``audit``, SEQ); anything else is a usage event id -> (``usage``, id)."""
    if ref.startswith(AUDIT_TREE + ":"):
        return AUDIT_TREE, ref.removeprefix(AUDIT_TREE + ":")
    return USAGE_TREE, ref
