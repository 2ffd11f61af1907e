"""The usage event: one CloudEvents 1.0 JSON document per served call, the only source of truth for billing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal, Inexact, Rounded
from typing import Any

import orjson

from modelmarket.metering.units import BASE_UNIT, UNIT_DIVISOR

EVENT_TYPE = "modelmarket.inference.completed"
_EXACT = Context(prec=200, traps=[Inexact, Rounded])
_DISPLAY = Context(prec=28)


def _base_quantity(data: dict[str, Any]) -> int:
    """The event's base-unit count; events written before it was recorded carry only ``quantity_iu``."""
    if "quantity" in data:
        return int(data["quantity"])
    return int((Decimal(data["quantity_iu"]) * UNIT_DIVISOR[data["unit_kind"]]).to_integral_value())


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: str
    source: str
    account_id: str
    time: datetime
    model: str
    version: str
    provider_account_id: str
    unit_kind: str
    quantity: int  # base units: images, tokens, seconds or requests (see metering.units)
    quantity_iu: Decimal
    unit_price: Decimal
    currency: str
    latency_ms: Decimal
    route: str = "default"
    trace_id: str | None = None

    @property
    def amount_divisor(self) -> int:
        return UNIT_DIVISOR[self.unit_kind]

    @property
    def amount_numerator(self) -> Decimal:
        """Exact: the event's amount is ``amount_numerator / amount_divisor``."""
        return _EXACT.multiply(Decimal(self.quantity), self.unit_price)

    @property
    def amount(self) -> Decimal:
        """The amount as a decimal, for display (28 significant digits when the divisor is not 10^k)."""
        return _DISPLAY.divide(self.amount_numerator, Decimal(self.amount_divisor))

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
                "unit_kind": self.unit_kind,
                "quantity": self.quantity,
                "base_unit": BASE_UNIT[self.unit_kind],
                "quantity_iu": format(self.quantity_iu, "f"),
                "unit_price": format(self.unit_price, "f"),
                "currency": self.currency,
                "latency_ms": format(self.latency_ms, "f"),
                "route": self.route,
                "trace_id": self.trace_id,
            },
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.to_cloudevent())

    @classmethod
    def decode(cls, payload: bytes) -> UsageEvent:
        doc = orjson.loads(payload)
        if doc.get("type") != EVENT_TYPE or doc.get("specversion") != "1.0":
            raise ValueError(f"not a usage event: type={doc.get('type')!r}")
        data = doc["data"]
        return cls(
            id=doc["id"],
            source=doc["source"],
            account_id=doc["subject"],
            time=datetime.fromisoformat(doc["time"].replace("Z", "+00:00")),
            model=data["model"],
            version=data["version"],
            provider_account_id=data["provider"],
            unit_kind=data["unit_kind"],
            quantity=_base_quantity(data),
            quantity_iu=Decimal(data["quantity_iu"]),
            unit_price=Decimal(data["unit_price"]),
            currency=data["currency"],
            latency_ms=Decimal(data["latency_ms"]),
            route=data.get("route", "default"),
            trace_id=data.get("trace_id"),
        )
