"""The usage event: one CloudEvents 1.0 JSON document per served call, the only source of truth for billing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

EVENT_TYPE = "modelmarket.inference.completed"


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
    quantity_iu: Decimal
    unit_price: Decimal
    currency: str
    latency_ms: Decimal
    route: str = "default"
    trace_id: str | None = None

    @property
    def amount(self) -> Decimal:
        return self.quantity_iu * self.unit_price

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
                "quantity_iu": str(self.quantity_iu),
                "unit_price": str(self.unit_price),
                "currency": self.currency,
                "latency_ms": str(self.latency_ms),
                "route": self.route,
                "trace_id": self.trace_id or self.id,
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
            quantity_iu=Decimal(data["quantity_iu"]),
            unit_price=Decimal(data["unit_price"]),
            currency=data["currency"],
            latency_ms=Decimal(data["latency_ms"]),
            route=data.get("route", "default"),
            trace_id=data.get("trace_id"),
        )
