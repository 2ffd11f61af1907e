"""The economy's repositories on SQL: plans, subscriptions, limits and prices; rated events, the ledger,
invoices and payouts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson
from sqlalchemy import Connection, String, delete, func, insert, select, type_coerce, update

from modelmarket.adapters.store import schema as t
from modelmarket.adapters.store.repos.usage import USAGE_COLUMNS, Texts, insert_rows, usage_columns
from modelmarket.billing.plans import PlanSpec, PlanVersion, Subscription
from modelmarket.billing.ports import (
    BilledCall,
    DynamicPricing,
    LedgerEntry,
    LedgerTxn,
    Payout,
    PriceRecord,
    RatedEvent,
    StatementSum,
    StoredInvoice,
    StoredLimits,
    StoredUsage,
)
from modelmarket.core.errors import InvariantViolated
from modelmarket.metering.units import UnitKind

STREAM_BATCH_ROWS = 2000
CounterKey = tuple[str, str, str, str]
_C = t.rating_counters.c
_R = t.usage_events.c
RATED_COLUMNS = (
    "period",
    "origin_period",
    "kind",
    "plan_name",
    "plan_version",
    "granted_base",
    "amount",
    "provider_amount",
    "txn_id",
)
"""The columns of ``usage_events`` that rating writes (a rated event is its usage event's row)."""
_RATED_SELECT = select(
    _R.event_id,
    _R.log_offset,
    _R.account_id,
    _R.provider_account_id,
    _R.model_name,
    _R.unit_kind,
    _R.currency,
    _R.quantity_base,
    *(_R[name] for name in RATED_COLUMNS),
    _R.version,
    _R.quantity_out,
    _R.pipeline_call_id,
).where(_R.txn_id.is_not(None))
_STORED_USAGE_PLAIN = (
    "event_id", "log_offset", "account_id", "provider_account_id", "model_name", "unit_kind", "currency",
    "quantity_base", "period", "origin_period", "kind", "plan_name", "plan_version", "granted_base", "txn_id",
    "version", "quantity_out", "pipeline_call_id", "occurred_at",
)  # fmt: skip
_STORED_USAGE_EXACT = ("amount", "provider_amount", "unit_price", "latency_ms", "price_factor")
_X = t.ledger_txns.c
_E = t.ledger_entries.c
_I = t.invoices.c


def _iu_json(values: dict[UnitKind, Fraction]) -> str:
    return orjson.dumps({k.value: str(v) for k, v in sorted(values.items())}).decode()


class SqlPlanRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def plan_versions(self, name: str | None = None) -> list[PlanVersion]:
        q = select(t.plan_versions).order_by(t.plan_versions.c.plan_name, t.plan_versions.c.version)
        if name is not None:
            q = q.where(t.plan_versions.c.plan_name == name)
        return [
            PlanVersion(r.plan_name, int(r.version), PlanSpec.from_json(orjson.loads(r.spec_json)), r.created_at)
            for r in self.conn.execute(q)
        ]

    def add_plan_version(self, plan: PlanVersion) -> None:
        self.conn.execute(
            insert(t.plan_versions).values(
                plan_name=plan.name,
                version=plan.version,
                kind=plan.kind,
                currency=plan.currency,
                spec_json=orjson.dumps(plan.spec.to_json()).decode(),
                digest=plan.spec.digest,
                created_at=plan.created_at,
            )
        )

    def subscriptions(self, account_id: str | None = None) -> list[Subscription]:
        c = t.subscriptions.c
        q = select(t.subscriptions).order_by(c.account_id, c.effective_at, c.seq)
        if account_id is not None:
            q = q.where(c.account_id == account_id)
        return [
            Subscription(int(r.seq), r.account_id, r.plan_name, int(r.plan_version), r.effective_at, r.created_at)
            for r in self.conn.execute(q)
        ]

    def add_subscription(self, sub: Subscription) -> None:
        self.conn.execute(
            insert(t.subscriptions).values(
                seq=sub.seq,
                account_id=sub.account_id,
                plan_name=sub.plan_name,
                plan_version=sub.plan_version,
                effective_at=sub.effective_at,
                created_at=sub.created_at,
            )
        )

    def next_subscription_seq(self) -> int:
        return int(self.conn.execute(select(func.coalesce(func.max(t.subscriptions.c.seq), 0))).scalar_one()) + 1

    def limits(self, account_id: str | None = None) -> list[StoredLimits]:
        c = t.account_limits.c
        q = select(t.account_limits).order_by(c.account_id, c.key_id)
        if account_id is not None:
            q = q.where(c.account_id == account_id)
        return [
            StoredLimits(
                r.account_id,
                r.key_id,
                r.rpm,
                {UnitKind(k): Fraction(v) for k, v in orjson.loads(r.iu_per_day_json).items()},
                r.budget,
                r.updated_at,
            )
            for r in self.conn.execute(q)
        ]

    def put_limits(self, limits: StoredLimits) -> None:
        c = t.account_limits.c
        values = {
            "rpm": limits.rpm,
            "iu_per_day_json": _iu_json(limits.iu_per_day),
            "budget": limits.budget,
            "updated_at": limits.updated_at,
        }
        changed = self.conn.execute(
            update(t.account_limits)
            .where(c.account_id == limits.account_id, c.key_id == limits.key_id)
            .values(**values)
        )
        if changed.rowcount == 0:
            self.conn.execute(
                insert(t.account_limits).values(account_id=limits.account_id, key_id=limits.key_id, **values)
            )

    def price_records(self, model_name: str | None = None) -> list[PriceRecord]:
        c = t.price_records.c
        q = select(t.price_records).order_by(c.model_name, c.seq)
        if model_name is not None:
            q = q.where(c.model_name == model_name)
        return [
            PriceRecord(
                r.model_name, int(r.seq), r.effective_at, r.list_price, r.factor, r.source, r.reason, r.created_at
            )
            for r in self.conn.execute(q)
        ]

    def add_price_record(self, record: PriceRecord) -> None:
        self.conn.execute(
            insert(t.price_records).values(
                model_name=record.model_name,
                seq=record.seq,
                effective_at=record.effective_at,
                list_price=record.list_price,
                factor=record.factor,
                source=record.source,
                reason=record.reason,
                created_at=record.created_at,
            )
        )

    def dynamic_pricing(self) -> list[DynamicPricing]:
        q = select(t.dynamic_pricing).order_by(t.dynamic_pricing.c.model_name)
        return [
            DynamicPricing(r.model_name, r.min_factor, r.max_factor, bool(r.enabled), r.updated_at)
            for r in self.conn.execute(q)
        ]

    def put_dynamic_pricing(self, config: DynamicPricing) -> None:
        c = t.dynamic_pricing.c
        self.conn.execute(delete(t.dynamic_pricing).where(c.model_name == config.model_name))
        self.conn.execute(
            insert(t.dynamic_pricing).values(
                model_name=config.model_name,
                min_factor=config.min_factor,
                max_factor=config.max_factor,
                enabled=int(config.enabled),
                updated_at=config.updated_at,
            )
        )


def _rated(r: Any) -> RatedEvent:
    return RatedEvent(
        r.event_id,
        int(r.log_offset),
        r.account_id,
        r.provider_account_id,
        r.model_name,
        UnitKind(r.unit_kind),
        r.currency,
        r.period,
        r.origin_period,
        r.kind,
        r.plan_name,
        int(r.plan_version),
        int(r.quantity_base),
        int(r.granted_base),
        r.amount,
        r.provider_amount,
        r.txn_id,
        r.version,
        int(r.quantity_out),
        r.pipeline_call_id,
    )


def _invoice(r: Any) -> StoredInvoice:
    return StoredInvoice(
        r.id,
        r.account_id,
        r.period,
        r.currency,
        r.status,
        r.lines_json,
        r.total,
        r.updated_at,
        r.finalized_at,
        None if r.finalized_offset is None else int(r.finalized_offset),
        r.voided_at,
        r.void_reason,
    )


class SqlLedgerRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def counters(self, keys: Sequence[CounterKey]) -> dict[CounterKey, int]:
        out: dict[CounterKey, int] = {}
        by_account: dict[tuple[str, str], set[CounterKey]] = {}
        for key in keys:
            by_account.setdefault((key[0], key[1]), set()).add(key)
        for (account_id, period), wanted in by_account.items():
            rows = self.conn.execute(
                select(_C.scope, _C.unit_kind, _C.quantity_base).where(_C.account_id == account_id, _C.period == period)
            )
            for r in rows:
                key = (account_id, period, r.scope, r.unit_kind)
                if key in wanted:
                    out[key] = int(r.quantity_base)
        return out

    def put_counters(self, values: dict[CounterKey, int], existing: set[CounterKey]) -> None:
        new = [
            {"account_id": k[0], "period": k[1], "scope": k[2], "unit_kind": k[3], "quantity_base": v}
            for k, v in values.items()
            if k not in existing
        ]
        if new:
            self.conn.execute(insert(t.rating_counters), new)
        for k, v in values.items():
            if k in existing:
                self.conn.execute(
                    update(t.rating_counters)
                    .where(_C.account_id == k[0], _C.period == k[1], _C.scope == k[2], _C.unit_kind == k[3])
                    .values(quantity_base=v)
                )

    def add_rated(self, rows: Sequence[RatedEvent]) -> None:
        texts = Texts()
        records = []
        for r in rows:
            if r.usage is None:  # a programming error: halt metering rather than lose the event's usage
                raise InvariantViolated(f"rated event {r.event_id} comes without its usage event to record")
            records.append(
                (
                    *usage_columns(r.log_offset, r.usage, texts),
                    r.period,
                    r.origin_period,
                    r.kind,
                    r.plan_name,
                    r.plan_version,
                    r.granted_base,
                    texts.by_identity(r.amount),
                    texts.by_identity(r.provider_amount),
                    r.txn_id,
                )
            )
        insert_rows(self.conn, "usage_events", USAGE_COLUMNS + RATED_COLUMNS, records)

    def add_txns(self, txns: Sequence[LedgerTxn]) -> None:
        if not txns:
            return
        self.conn.execute(
            insert(t.ledger_txns),
            [
                {
                    "id": x.id,
                    "kind": x.kind,
                    "currency": x.currency,
                    "period": x.period,
                    "account_id": x.account_id,
                    "memo": x.memo[:300],
                    "log_offset": x.log_offset,
                    "created_at": x.created_at,
                }
                for x in txns
            ],
        )
        entries = [
            {
                "txn_id": e.txn_id,
                "seq": e.seq,
                "ledger_account": e.ledger_account,
                "currency": e.currency,
                "amount": e.amount,
            }
            for x in txns
            for e in x.entries
        ]
        if entries:
            self.conn.execute(insert(t.ledger_entries), entries)

    def rated(
        self,
        *,
        account_id: str | None = None,
        period: str | None = None,
        provider_account_id: str | None = None,
        origin_period: str | None = None,
        txn_id: str | None = None,
    ) -> Iterator[RatedEvent]:
        q = _RATED_SELECT.order_by(_R.log_offset, _R.event_id)  # offsets repeat across partitions
        for column, value in (
            (_R.account_id, account_id),
            (_R.period, period),
            (_R.provider_account_id, provider_account_id),
            (_R.origin_period, origin_period),
            (_R.txn_id, txn_id),
        ):
            if value is not None:
                q = q.where(column == value)
        # The option goes on the statement: Connection.execution_options() would change the whole unit of work's
        # connection in place, and every later statement (an UPDATE too) would run as a server-side cursor.
        with self.conn.execute(q.execution_options(yield_per=STREAM_BATCH_ROWS)) as result:
            for row in result:
                yield _rated(row)

    def stored_usage(self, period: str) -> Iterator[StoredUsage]:
        landing = select(_R.origin_period).where(_R.period == period).distinct()
        origins = [period, *(o for o in self.conn.execute(landing).scalars() if o != period)]
        # The exact columns as text, each distinct text parsed once: a month repeats a few amounts and prices, and
        # parsing a Fraction or Decimal per row was most of a replay's read.
        q = (
            select(
                *(_R[name] for name in _STORED_USAGE_PLAIN),
                *(type_coerce(_R[name], String) for name in _STORED_USAGE_EXACT),
            )
            .where(_R.txn_id.is_not(None), _R.origin_period.in_(origins))
            .order_by(_R.log_offset, _R.event_id)
        )
        fractions: dict[str, Fraction] = {}
        decimals: dict[str | None, Decimal | None] = {None: None}
        units = {u.value: u for u in UnitKind}
        with self.conn.execute(q.execution_options(yield_per=STREAM_BATCH_ROWS)) as result:
            for r in result:
                (event_id, offset, account, provider, model, unit, currency, quantity, period_, origin, kind,
                 plan, plan_version, granted, txn, version, out, pipeline, occurred_at,
                 amount, provider_amount, unit_price, latency, factor) = r  # fmt: skip
                for text_ in (amount, provider_amount):
                    if text_ not in fractions:
                        fractions[text_] = Fraction(text_)
                for text_ in (unit_price, latency, factor):
                    if text_ not in decimals:
                        decimals[text_] = Decimal(text_)
                rated = RatedEvent(
                    event_id, int(offset), account, provider, model, units[unit], currency, period_, origin, kind,
                    plan, int(plan_version), int(quantity), int(granted), fractions[amount],
                    fractions[provider_amount], txn, version, int(out), pipeline,
                )  # fmt: skip
                yield StoredUsage(rated, decimals[unit_price], occurred_at, decimals[latency], decimals[factor])  # type: ignore[arg-type]

    def txns(
        self,
        *,
        account_id: str | None = None,
        kind: str | None = None,
        period: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Iterator[LedgerTxn]:
        q = select(
            _X.id,
            _X.kind,
            _X.currency,
            _X.period,
            _X.account_id,
            _X.memo,
            _X.log_offset,
            _X.created_at,
            _E.txn_id,
            _E.seq,
            _E.ledger_account,
            _E.currency.label("entry_currency"),
            _E.amount,
        ).join(t.ledger_entries, _E.txn_id == _X.id, isouter=True)
        for column, value in ((_X.account_id, account_id), (_X.kind, kind), (_X.period, period)):
            if value is not None:
                q = q.where(column == value)
        if ids is not None:
            q = q.where(_X.id.in_(list(ids)))
        q = q.order_by(_X.id, _E.seq)
        current: LedgerTxn | None = None
        entries: list[LedgerEntry] = []
        with self.conn.execute(q.execution_options(yield_per=STREAM_BATCH_ROWS)) as result:
            for r in result:
                if current is None or current.id != r.id:
                    if current is not None:
                        yield _with_entries(current, entries)
                    current = LedgerTxn(
                        r.id, r.kind, r.currency, r.period, r.account_id, r.memo, r.log_offset, r.created_at
                    )
                    entries = []
                if r.txn_id is not None:
                    entries.append(LedgerEntry(r.txn_id, int(r.seq), r.ledger_account, r.entry_currency, r.amount))
        if current is not None:
            yield _with_entries(current, entries)

    def entries_of(self, ledger_account: str) -> list[LedgerEntry]:
        q = select(t.ledger_entries).where(_E.ledger_account == ledger_account).order_by(_E.txn_id, _E.seq)
        return [LedgerEntry(r.txn_id, int(r.seq), r.ledger_account, r.currency, r.amount) for r in self.conn.execute(q)]

    def invoice(self, invoice_id: str) -> StoredInvoice | None:
        row = self.conn.execute(select(t.invoices).where(_I.id == invoice_id)).first()
        return None if row is None else _invoice(row)

    def invoices(self, account_id: str | None = None, period: str | None = None) -> list[StoredInvoice]:
        q = select(t.invoices).order_by(_I.period, _I.account_id, _I.currency)
        if account_id is not None:
            q = q.where(_I.account_id == account_id)
        if period is not None:
            q = q.where(_I.period == period)
        return [_invoice(r) for r in self.conn.execute(q)]

    def put_invoice(self, invoice: StoredInvoice) -> None:
        values = {
            "account_id": invoice.account_id,
            "period": invoice.period,
            "currency": invoice.currency,
            "status": invoice.status,
            "lines_json": invoice.lines_json,
            "total": invoice.total,
            "updated_at": invoice.updated_at,
            "finalized_at": invoice.finalized_at,
            "finalized_offset": invoice.finalized_offset,
            "voided_at": invoice.voided_at,
            "void_reason": invoice.void_reason,
        }
        changed = self.conn.execute(update(t.invoices).where(_I.id == invoice.id).values(**values))
        if changed.rowcount == 0:
            self.conn.execute(insert(t.invoices).values(id=invoice.id, **values))

    def billed_accounts(self) -> list[tuple[str, str]]:
        q = select(_R.account_id, _R.period).where(_R.period.is_not(None)).distinct().order_by(_R.account_id, _R.period)
        return [(r.account_id, r.period) for r in self.conn.execute(q)]

    def billed_periods(self, account_id: str) -> list[str]:
        q = select(_R.period).where(_R.account_id == account_id, _R.period.is_not(None)).distinct().order_by(_R.period)
        return [r.period for r in self.conn.execute(q)]

    def closed_periods(self, account_ids: Sequence[str] | None = None) -> dict[tuple[str, str, str], int]:
        q = select(_I.account_id, _I.period, _I.currency, _I.finalized_offset).where(_I.status != "draft")
        out: dict[tuple[str, str, str], int] = {}
        if account_ids is None:
            chunks: list[list[str] | None] = [None]
        else:
            ids = sorted(set(account_ids))
            chunks = [ids[i : i + 500] for i in range(0, len(ids), 500)]
        for chunk in chunks:
            query = q if chunk is None else q.where(_I.account_id.in_(chunk))
            for r in self.conn.execute(query):
                out[(r.account_id, r.period, r.currency)] = int(r.finalized_offset or 0)
        return out

    def last_rated_at(self, account_id: str | None) -> str | None:
        c = t.usage_events.c
        q = select(func.max(c.occurred_at))
        if account_id is not None:
            q = q.where(c.account_id == account_id)
        value = self.conn.execute(q).scalar()
        return None if value is None else str(value)

    def setting(self, name: str) -> str | None:
        c = t.economy_settings.c
        value = self.conn.execute(select(c.value).where(c.name == name)).scalar()
        return None if value is None else str(value)

    def put_setting(self, name: str, value: str) -> None:
        c = t.economy_settings.c
        if self.conn.execute(update(t.economy_settings).where(c.name == name).values(value=value)).rowcount == 0:
            self.conn.execute(insert(t.economy_settings).values(name=name, value=value))

    def payouts(self, period: str | None = None) -> list[Payout]:
        c = t.payouts.c
        q = select(t.payouts).order_by(c.period, c.provider_account_id, c.currency)
        if period is not None:
            q = q.where(c.period == period)
        return [
            Payout(r.id, r.provider_account_id, r.period, r.currency, r.amount, r.txn_id, r.created_at, int(r.seq))
            for r in self.conn.execute(q)
        ]

    def recent_payouts(self, provider_account_id: str | None, period: str | None, limit: int) -> list[Payout]:
        c = t.payouts.c
        q = _payouts_of(select(t.payouts), provider_account_id, period)
        q = q.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        return [
            Payout(r.id, r.provider_account_id, r.period, r.currency, r.amount, r.txn_id, r.created_at, int(r.seq))
            for r in self.conn.execute(q)
        ]

    def count_payouts(self, provider_account_id: str | None, period: str | None) -> int:
        q = _payouts_of(select(func.count()).select_from(t.payouts), provider_account_id, period)
        return int(self.conn.execute(q).scalar() or 0)

    def statement_sums(self, period: str, provider_account_id: str | None = None) -> Iterator[StatementSum]:
        group = (_R.provider_account_id, _R.currency, _R.model_name, _R.unit_kind, _R.amount, _R.provider_amount)
        q = (
            select(*group, func.count().label("events"), func.sum(_R.quantity_base).label("quantity_base"))
            .where(_R.txn_id.is_not(None), _R.period == period)
            .group_by(*group)
            .order_by(*group)
        )
        if provider_account_id is not None:
            q = q.where(_R.provider_account_id == provider_account_id)
        with self.conn.execute(q.execution_options(yield_per=STREAM_BATCH_ROWS)) as result:
            for r in result:
                yield StatementSum(
                    r.provider_account_id,
                    r.currency,
                    r.model_name,
                    UnitKind(r.unit_kind),
                    r.amount,
                    r.provider_amount,
                    int(r.events),
                    int(r.quantity_base),
                )

    def recent_invoices(self, account_id: str, limit: int) -> list[StoredInvoice]:
        q = select(t.invoices).where(_I.account_id == account_id).order_by(_I.period.desc(), _I.currency).limit(limit)
        return [_invoice(r) for r in self.conn.execute(q)]

    def add_payout(self, payout: Payout) -> None:
        self.conn.execute(
            insert(t.payouts).values(
                id=payout.id,
                provider_account_id=payout.provider_account_id,
                period=payout.period,
                currency=payout.currency,
                amount=payout.amount,
                txn_id=payout.txn_id,
                created_at=payout.created_at,
                seq=payout.seq,
            )
        )

    def clear_derived(self) -> None:
        usage_txns = select(_X.id).where(_X.kind == "usage")
        self.conn.execute(delete(t.ledger_entries).where(_E.txn_id.in_(usage_txns)))
        self.conn.execute(delete(t.ledger_txns).where(_X.kind == "usage"))
        self.conn.execute(delete(t.usage_events))  # a rated event is its usage event's row
        self.conn.execute(delete(t.rating_counters))

    def billed_calls(self, account_id: str, period: str, currency: str) -> Iterator[BilledCall]:
        """The rated events landing on one invoice (account, period, currency) with their calls' time and
        latency, by log offset; streamed ``STREAM_BATCH_ROWS`` at a time (the rows are never read whole)."""
        q = (
            _RATED_SELECT.add_columns(_R.occurred_at, _R.latency_ms)
            .where(_R.account_id == account_id, _R.period == period, _R.currency == currency)
            .order_by(_R.log_offset)
        )
        with self.conn.execute(q.execution_options(yield_per=STREAM_BATCH_ROWS)) as result:
            for row in result:
                yield BilledCall(_rated(row), row.occurred_at, row.latency_ms)


def _payouts_of(q: Any, provider_account_id: str | None, period: str | None) -> Any:
    c = t.payouts.c
    if provider_account_id is not None:
        q = q.where(c.provider_account_id == provider_account_id)
    return q if period is None else q.where(c.period == period)


def _with_entries(txn: LedgerTxn, entries: list[LedgerEntry]) -> LedgerTxn:
    return replace(txn, entries=tuple(entries))
