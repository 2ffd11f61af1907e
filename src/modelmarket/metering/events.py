"""The usage event: one CloudEvents 1.0 JSON document per served call, the only source of truth for billing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson

from modelmarket.core.money import EXACT, exact_text
from modelmarket.metering.units import UnitKind

EVENT_TYPE = "modelmarket.inference.completed"
FIELD_LIMITS = {
    "id": 64,
    "source": 200,
    "account_id": 40,
    "model": 200,
    "version": 100,
    "provider_account_id": 40,
    "route": 100,
}
"""Longest value of each string field (the usage tables' column widths): an event that would not fit is refused
when it is built or read, so it goes to the rejects table instead of blocking the consumer."""
TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: str
    source: str
    account_id: str
    time: datetime
    model: str
    version: str
    provider_account_id: str
    unit_kind: UnitKind
    quantity: int
    """Base units: images, tokens, seconds or requests (see ``metering.units``). What is billed."""
    unit_price: Decimal
    currency: str
    latency_ms: Decimal
    route: str = "default"
    trace_id: str | None = None
    price_factor: Decimal = Decimal(1)
    """The dynamic-pricing multiplier in force for the call (already in ``unit_price``; tiers apply it too)."""
    quantity_out: int = 0
    """Of ``quantity``, the base units that were output (tokens generated), for input/output token prices."""

    def __post_init__(self) -> None:
        for name, limit in FIELD_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= limit:
                raise ValueError(f"usage event {name} must be 1-{limit} characters")
        if not isinstance(self.currency, str) or not CURRENCY_RE.match(self.currency):
            raise ValueError(f"usage event currency {self.currency!r} is not a 3-letter code")
        if self.trace_id is not None and not (isinstance(self.trace_id, str) and TRACE_ID_RE.match(self.trace_id)):
            raise ValueError("usage event trace_id must be 32 lowercase hex characters")
        if self.quantity < 0:
            raise ValueError("usage event quantity must not be negative")
        if not 0 <= self.quantity_out <= self.quantity:
            raise ValueError("usage event quantity_out must be between 0 and quantity")
        if not self.price_factor.is_finite() or self.price_factor <= 0:
            raise ValueError(f"usage event price_factor {self.price_factor} must be a finite, positive decimal")
        if not self.unit_price.is_finite() or self.unit_price < 0:
            raise ValueError(f"usage event unit_price {self.unit_price} must be a finite, non-negative decimal")

    @property
    def quantity_iu(self) -> Fraction:
        return self.unit_kind.iu(self.quantity)

    @property
    def amount_numerator(self) -> Decimal:
        """Exact: the event's amount is ``amount_numerator / unit_kind.divisor``."""
        return EXACT.multiply(Decimal(self.quantity), self.unit_price)

    @property
    def amount(self) -> Fraction:
        return Fraction(self.amount_numerator) / self.unit_kind.divisor

    @property
    def day(self) -> date:
        return self.time.astimezone(UTC).date()

    def to_cloudevent(self) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": EVENT_TYPE,
            "subject": self.account_id,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {
                "model": self.model,
                "version": self.version,
                "provider": self.provider_account_id,
                "unit_kind": self.unit_kind.value,
                "quantity": self.quantity,
                "base_unit": self.unit_kind.base_unit,
                "quantity_iu": str(self.quantity) if self.unit_kind.divisor == 1 else exact_text(self.quantity_iu),
                "unit_price": format(self.unit_price, "f"),
                "currency": self.currency,
                "latency_ms": format(self.latency_ms, "f"),
                "route": self.route,
                "trace_id": self.trace_id,
                "price_factor": format(self.price_factor, "f"),
                "quantity_out": self.quantity_out,
            },
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.to_cloudevent())

    @classmethod
    def decode(cls, payload: bytes) -> UsageEvent:
        """Read an event; raises ValueError/KeyError/TypeError for anything that is not a valid usage event."""
        doc = orjson.loads(payload)
        if doc.get("type") != EVENT_TYPE or doc.get("specversion") != "1.0":
            raise ValueError(f"not a usage event: type={doc.get('type')!r}")
        data = doc["data"]
        quantity = _int(data["quantity"], "quantity")
        time = datetime.fromisoformat(doc["time"].replace("Z", "+00:00"))
        if time.utcoffset() is None:
            raise ValueError("event time must carry a UTC offset")
        return cls(
            id=doc["id"],
            source=doc["source"],
            account_id=doc["subject"],
            time=time,
            model=data["model"],
            version=data["version"],
            provider_account_id=data["provider"],
            unit_kind=UnitKind(data["unit_kind"]),
            quantity=quantity,
            unit_price=Decimal(_text(data, "unit_price")),
            currency=data["currency"],
            latency_ms=Decimal(_text(data, "latency_ms")),
            route=data.get("route", "default"),
            trace_id=data.get("trace_id"),
            price_factor=Decimal(_text(data, "price_factor")) if "price_factor" in data else Decimal(1),
            quantity_out=_int(data.get("quantity_out", 0), "quantity_out"),
        )


def _text(data: dict[str, Any], key: str) -> str:
    """Decimals travel as strings: a JSON number would be a float, not the exact value that was meant."""
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a decimal string, not {type(value).__name__}")
    return value


def _int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} must be an integer, not {value!r}")
    return value
