"""``UsageRepository`` (metering) on SQL: the usage tables, the consumer offsets and the rejects."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Connection, Numeric, cast, delete, func, insert, select, update

from modelmarket.adapters.store import schema as t
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.ports import CallStats, DailyUsage, Reject
from modelmarket.metering.units import UnitKind

_D = t.usage_daily.c
_O = t.consumer_offsets.c


def _daily(row: Any) -> DailyUsage:
    return DailyUsage(
        row.account_id,
        row.model_name,
        row.day,
        UnitKind(row.unit_kind),
        row.currency,
        int(row.events),
        int(row.quantity_base),
        row.amount_numerator,
    )


class SqlUsageRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _offset_row(self, consumer: str) -> Any:
        return self.conn.execute(select(t.consumer_offsets).where(_O.consumer == consumer)).first()

    def offset(self, consumer: str) -> int:
        row = self._offset_row(consumer)
        return 0 if row is None else int(row.log_offset)

    def save_offset(self, consumer: str, offset: int) -> None:
        self._upsert_offset(consumer, log_offset=offset)

    def halted(self, consumer: str) -> str | None:
        row = self._offset_row(consumer)
        return None if row is None else row.halted_reason

    def set_halted(self, consumer: str, reason: str | None) -> None:
        self._upsert_offset(consumer, halted_reason=reason)

    def _upsert_offset(self, consumer: str, **values: Any) -> None:
        changed = self.conn.execute(update(t.consumer_offsets).where(_O.consumer == consumer).values(**values))
        if changed.rowcount == 0:
            self.conn.execute(insert(t.consumer_offsets).values({"consumer": consumer, "log_offset": 0, **values}))

    def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        c = t.usage_events.c
        return set(self.conn.execute(select(c.event_id).where(c.event_id.in_(list(event_ids)))).scalars())

    def add_events(self, events: Sequence[tuple[int, UsageEvent]]) -> None:
        rows = [
            {
                "event_id": e.id,
                "account_id": e.account_id,
                "model_name": e.model,
                "version": e.version,
                "provider_account_id": e.provider_account_id,
                "unit_kind": e.unit_kind.value,
                "quantity_base": e.quantity,
                "unit_price": e.unit_price,
                "amount_numerator": e.amount_numerator,
                "currency": e.currency,
                "occurred_at": e.time.isoformat(),
                "day": e.day.isoformat(),
                "latency_ms": e.latency_ms,
                "log_offset": offset,
            }
            for offset, e in events
        ]
        self.conn.execute(insert(t.usage_events), rows)

    def _where(self, key: tuple[str, str, str, UnitKind, str]) -> tuple[Any, ...]:
        account, model, day, unit, currency = key
        return (
            _D.account_id == account,
            _D.model_name == model,
            _D.day == day,
            _D.unit_kind == unit.value,
            _D.currency == currency,
        )

    def daily(self, key: tuple[str, str, str, UnitKind, str]) -> DailyUsage | None:
        row = self.conn.execute(select(t.usage_daily).where(*self._where(key))).first()
        return None if row is None else _daily(row)

    def put_daily(self, row: DailyUsage, is_new: bool) -> None:
        values = {"events": row.events, "quantity_base": row.quantity_base, "amount_numerator": row.amount_numerator}
        if is_new:
            keys = dict(zip(("account_id", "model_name", "day", "unit_kind", "currency"), row.key, strict=True))
            keys["unit_kind"] = row.unit_kind.value
            self.conn.execute(insert(t.usage_daily).values(**keys, **values))
        else:
            self.conn.execute(update(t.usage_daily).where(*self._where(row.key)).values(**values))

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        r = t.metering_rejects.c
        offsets = [x.log_offset for x in rejects]
        known = set(self.conn.execute(select(r.log_offset).where(r.log_offset.in_(offsets))).scalars())
        fresh = [
            {
                "log_offset": x.log_offset,
                "event_id": x.event_id,
                "error": x.error,
                "payload": x.payload,
                "rejected_at": x.rejected_at,
            }
            for x in rejects
            if x.log_offset not in known
        ]
        if fresh:
            self.conn.execute(insert(t.metering_rejects), fresh)

    def daily_usage(self, account_id: str, since: str | None, until: str | None) -> list[DailyUsage]:
        query = select(t.usage_daily).where(_D.account_id == account_id)
        if since:
            query = query.where(_D.day >= since)
        if until:
            query = query.where(_D.day <= until)
        return [_daily(r) for r in self.conn.execute(query.order_by(_D.day, _D.model_name))]

    def daily_usage_all(self) -> list[DailyUsage]:
        query = select(t.usage_daily).order_by(_D.account_id, _D.model_name, _D.day, _D.unit_kind, _D.currency)
        return [_daily(r) for r in self.conn.execute(query)]

    def call_stats(self, since: str, until: str, latency_of: Collection[str] = ()) -> list[CallStats]:
        e = t.usage_events.c
        in_range = (e.occurred_at >= since, e.occurred_at < until)
        counts = self.conn.execute(
            select(e.model_name, func.count()).where(*in_range).group_by(e.model_name).order_by(e.model_name)
        ).all()
        wanted = set(latency_of)
        out = []
        for model_name, calls in counts:
            p50 = None
            if model_name in wanted:
                # Nearest rank, in SQL: the ceil(calls/2)-th smallest latency (the text column sorts as a number).
                p50 = self.conn.execute(
                    select(e.latency_ms)
                    .where(e.model_name == model_name, *in_range)
                    .order_by(cast(e.latency_ms, Numeric))
                    .offset((int(calls) + 1) // 2 - 1)
                    .limit(1)
                ).scalar_one()
            out.append(CallStats(model_name, int(calls), p50))
        return out

    def clear_derived(self, consumer: str) -> None:
        self.conn.execute(delete(t.usage_events))
        self.conn.execute(delete(t.usage_daily))
        self.conn.execute(delete(t.metering_rejects))
        self.save_offset(consumer, 0)
