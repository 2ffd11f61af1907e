"""Rating: each new usage event priced under the plan in force at its time, and posted to the ledger.

Runs inside the metering consumer's transaction (``MeteringService(projectors=...)``), after the event ids were
deduplicated, so an event is rated exactly once however often the log delivers it, and the rating commits with
the consumer's offset or not at all. Everything it reads is either the event itself (the price in force, the
dynamic factor and the quantity were stamped by the gateway), immutable (a version's charge model, a plan
version), or history keyed by time or log offset (subscriptions, finalized invoices): rating the same log again
(``billing rebuild``) gives the same rows.

Per event, in log order:

1. Its origin period is the UTC month of its time. If that month's invoice (account, currency) was finalized
   at a log offset below the event's, the event is an *adjustment* landing on the next open period.
2. The plan in force at the event's time (the latest subscription with ``effective_at <= time``; none: ``payg``).
3. ``free``: the whole quantity is granted (amount 0; the gateway refuses calls past the grant).
   ``subscription``: the included IU of the subscription's segment (prorated by the days left in the month when
   it started mid-month) cover the quantity first; the rest is overage at the plan's rate or the list price.
   ``enterprise``: the plan's rate for the model, else the list price. ``payg``: the list price. A plan's rates
   are prices in the plan's currency: an event in another currency is billed at its list price.
4. The list price of a billable quantity: per unit, ``quantity x unit_price`` (stamped); tiers and packages
   follow the model's charge model over its cumulative billable quantity in the period, times the factor.
5. The provider's share is ``amount x share``, exactly; the platform keeps the rest.

Each batch posts one ledger transaction per (consumer, provider, currency, landing period, kind): receivable
from the consumer (debit), payable to the provider and platform revenue (credits). Every rated event names its
transaction, whose receivable is the exact sum of its events' amounts (``ledger verify`` checks both).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol

from modelmarket.billing.charges import ChargeModel, Tier, charge_model
from modelmarket.billing.period import Period
from modelmarket.billing.plans import IMPLICIT_PLAN, PlanVersion, Subscription, remaining_days
from modelmarket.billing.ports import EconomyUnitOfWork, LedgerEntry, LedgerTxn, RatedEvent
from modelmarket.core.errors import InvalidInput
from modelmarket.metering.events import UsageEvent
from modelmarket.registry.manifest import parse_manifest

PLATFORM_REVENUE = "revenue:platform"
PLATFORM_CASH = "cash:platform"
PLATFORM_CREDITS = "credits:platform"
CounterKey = tuple[str, str, str, str]


def receivable(account_id: str) -> str:
    return f"receivable:{account_id}"


def payable(provider_account_id: str) -> str:
    return f"payable:{provider_account_id}"


class ChargeSource(Protocol):
    def __call__(self, uow: Any, model: str, version: str) -> ChargeModel:
        """The charge model of a published version (immutable, so it may be cached)."""
        ...


PER_UNIT = ChargeModel("per_unit", (Tier(None, Decimal(0)),))
"""Stands for a version the registry does not know: per unit, at the price stamped on each event."""


class RegistryCharges:
    """Charge models read from the stored manifests, cached (a published version never changes)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], ChargeModel] = {}

    def __call__(self, uow: Any, model: str, version: str) -> ChargeModel:
        key = (model, version)
        found = self._cache.get(key)
        if found is None:
            stored = uow.registry.version(model, version)
            if stored is None:  # not published here (an imported log): its stamped unit price is all there is
                return PER_UNIT
            manifest = parse_manifest(json.loads(stored.manifest_json), f"stored manifest of {model}")
            found = self._cache[key] = charge_model(manifest.pricing)
        return found


def period_label(moment: datetime) -> str:
    day = moment.astimezone(UTC)
    return f"{day.year:04d}-{day.month:02d}"


def next_period(label: str) -> str:
    year, month = int(label[:4]), int(label[5:])
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def _read_after_close(closed: dict[tuple[str, str, str], int], key: tuple[str, str, str], offset: int) -> bool:
    """Whether the invoice ``key`` (account, period, currency) was finalized before the log offset ``offset``."""
    cutoff = closed.get(key)
    return cutoff is not None and offset > cutoff


def txn_id_for(kind: str, *parts: object) -> str:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:40]
    return f"tx_{kind}_{digest}"


def check_share(provider_share: Decimal) -> Decimal:
    """The provider's share of revenue: a Decimal fraction between 0 and 1 (``MODELMARKET_PROVIDER_SHARE``)."""
    if not isinstance(provider_share, Decimal) or not provider_share.is_finite():
        raise InvalidInput(f"provider share must be a decimal fraction, got {provider_share!r}")
    if not Decimal(0) <= provider_share <= Decimal(1):
        raise InvalidInput(f"provider share must be between 0 and 1, got {provider_share}")
    return provider_share


@dataclass(frozen=True, slots=True)
class _Plan:
    name: str
    version: int
    sub: Subscription | None
    spec: PlanVersion | None


class Rater:
    """The rating projection. ``share``: the provider's share of billed revenue (0..1)."""

    def __init__(self, share: Decimal, now: Callable[[], datetime], charges: ChargeSource | None = None) -> None:
        self.charges: ChargeSource = charges or RegistryCharges()
        self.share = Fraction(check_share(share))
        self.now = now

    def apply(self, uow: EconomyUnitOfWork, events: Sequence[tuple[int, UsageEvent]]) -> None:
        if not events:
            return
        closed = uow.ledger.closed_periods()
        plans = {(p.name, p.version): p for p in uow.plans.plan_versions()}
        history: dict[str, list[Subscription]] = {}
        for _, e in events:
            if e.account_id not in history:
                history[e.account_id] = uow.plans.subscriptions(e.account_id)
        placed = [(offset, e, self._plan(e, history[e.account_id], plans)) for offset, e in events]
        keys = {key for offset, e, plan in placed for key in self._counter_keys(e, plan)}
        stored = uow.ledger.counters(sorted(keys))
        counters = dict(stored)
        rated: list[RatedEvent] = []
        groups: dict[tuple[str, str, str, str, str], list[RatedEvent]] = {}
        for offset, e, plan in placed:
            origin = period_label(e.time)
            landing, kind = origin, "usage"
            if _read_after_close(closed, (e.account_id, origin, e.currency), offset):
                kind = "adjustment"
                landing = next_period(origin)
                # A period finalized *after* this event was read kept it (a rebuild must land it there again).
                while _read_after_close(closed, (e.account_id, landing, e.currency), offset):
                    landing = next_period(landing)
            granted, amount = self._rate(uow, e, origin, plan, counters)
            group = (e.account_id, e.provider_account_id, e.currency, landing, kind)
            txn = txn_id_for("usage", *group, offset)  # the first event's offset makes the group's id unique
            members = groups.setdefault(group, [])
            if members:
                txn = members[0].txn_id
            row = RatedEvent(
                event_id=e.id,
                log_offset=offset,
                account_id=e.account_id,
                provider_account_id=e.provider_account_id,
                model_name=e.model,
                unit_kind=e.unit_kind,
                currency=e.currency,
                period=landing,
                origin_period=origin,
                kind=kind,
                plan_name=plan.name,
                plan_version=plan.version,
                quantity_base=e.quantity,
                granted_base=granted,
                amount=amount,
                provider_amount=amount * self.share,
                txn_id=txn,
            )
            members.append(row)
            rated.append(row)
        uow.ledger.put_counters({k: v for k, v in counters.items() if stored.get(k) != v}, set(stored))
        uow.ledger.add_rated(rated)
        created = self.now().astimezone(UTC).isoformat()
        uow.ledger.add_txns([usage_txn(rows, created) for rows in groups.values()])

    def clear(self, uow: EconomyUnitOfWork) -> None:
        uow.ledger.clear_derived()

    def _plan(self, e: UsageEvent, subs: list[Subscription], plans: dict[tuple[str, int], PlanVersion]) -> _Plan:
        in_force = None
        for sub in subs:  # ordered by effective_at, then seq
            if sub.effective <= e.time:
                in_force = sub
        if in_force is None:
            return _Plan(IMPLICIT_PLAN, 0, None, None)
        spec = plans.get((in_force.plan_name, in_force.plan_version))
        return _Plan(in_force.plan_name, in_force.plan_version, in_force, spec)

    def _counter_keys(self, e: UsageEvent, plan: _Plan) -> list[CounterKey]:
        origin = period_label(e.time)
        keys = [(e.account_id, origin, f"model:{e.model}", e.unit_kind.value)]
        if plan.sub is not None:
            keys.append((e.account_id, origin, f"sub:{plan.sub.seq}", e.unit_kind.value))
        return keys

    def _rate(
        self, uow: EconomyUnitOfWork, e: UsageEvent, origin: str, plan: _Plan, counters: dict[CounterKey, int]
    ) -> tuple[int, Fraction]:
        """(granted base units, exact amount) of one event; moves the counters it uses."""
        spec = plan.spec.spec if plan.spec is not None else None
        unit = e.unit_kind
        div = unit.divisor
        if spec is not None and plan.sub is not None:
            sub_key = (e.account_id, origin, f"sub:{plan.sub.seq}", unit.value)
            used = counters.get(sub_key, 0)
            counters[sub_key] = used + e.quantity
            if spec.kind == "free":
                return e.quantity, Fraction(0)
            if spec.kind == "subscription":
                period = Period(int(origin[:4]), int(origin[5:]))
                start = max(plan.sub.effective.astimezone(UTC).date(), period.first_day)
                allowance = spec.included.get(unit, Fraction(0)) * div
                allowance = allowance * remaining_days(start, period) / period.last_day.day
                left = max(0, int(allowance) - used)  # whole base units (a fraction of one is not included)
                granted = min(e.quantity, left)
                billable = e.quantity - granted
                if billable == 0:
                    return granted, Fraction(0)
                rate = spec.overage.get(unit) if spec.currency == e.currency else None  # a price in its currency
                if rate is not None:
                    return granted, Fraction(billable) * Fraction(rate) / div
                return granted, self._list(uow, e, origin, billable, counters)
            if spec.kind == "enterprise":
                rate = spec.rates.get(e.model) if spec.currency == e.currency else None
                if rate is not None:
                    return 0, Fraction(e.quantity) * Fraction(rate) / div
        return 0, self._list(uow, e, origin, e.quantity, counters)

    def _list(
        self, uow: EconomyUnitOfWork, e: UsageEvent, origin: str, billable: int, counters: dict[CounterKey, int]
    ) -> Fraction:
        """The list amount of ``billable`` base units of this event (the last ones of its quantity)."""
        charge = self.charges(uow, e.model, e.version)
        div = e.unit_kind.divisor
        factor = Fraction(e.price_factor)
        if charge.kind == "per_unit":
            if charge.output_price_per_iu is not None and charge.input_price_per_iu is not None:
                out = min(billable, e.quantity_out)  # output is billed first: it is the last part of the call
                inp = billable - out
                prices = Fraction(inp) * Fraction(charge.input_price_per_iu)
                prices += Fraction(out) * Fraction(charge.output_price_per_iu)
                return factor * prices / div
            return Fraction(billable) * Fraction(e.unit_price) / div
        key = (e.account_id, origin, f"model:{e.model}", e.unit_kind.value)
        before = counters.get(key, 0)
        counters[key] = before + billable
        return factor * charge.marginal(Fraction(before, div), Fraction(before + billable, div))


def usage_txn(rows: Sequence[RatedEvent], created_at: str) -> LedgerTxn:
    """The balanced transaction of a group of rated events (same consumer, provider, currency, period, kind)."""
    first = rows[0]
    amount = sum((r.amount for r in rows), Fraction(0))
    provider = sum((r.provider_amount for r in rows), Fraction(0))
    entries = (
        LedgerEntry(first.txn_id, 1, receivable(first.account_id), first.currency, amount),
        LedgerEntry(first.txn_id, 2, payable(first.provider_account_id), first.currency, -provider),
        LedgerEntry(first.txn_id, 3, PLATFORM_REVENUE, first.currency, provider - amount),
    )
    memo = f"{len(rows)} {first.kind} event(s) of {first.period}"
    return LedgerTxn(
        first.txn_id,
        "usage",
        first.currency,
        first.period,
        first.account_id,
        memo,
        first.log_offset,
        created_at,
        entries,
    )
