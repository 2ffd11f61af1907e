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

Rating runs once per event on the metering hot path, so it keeps the exact arithmetic in integers: an amount is a
numerator and a denominator (a per-unit one is ``billable x`` the price's integer ratio over ``divisor x`` its
denominator), a transaction sums numerators per denominator and makes one Fraction at the end (its share is that
total x share, which equals the sum of its events' shares exactly), and the Fractions of the few distinct amounts
of a batch are made once. Plans are looked up by bisection in each account's history, and the included IU of a
subscription computed once per period. The rated rows go to ``LedgerRepository.add_rated`` with their usage
events: the store writes each event once, with its rating (``records_events``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any, Protocol

from modelmarket.billing.charges import ChargeModel, Tier, charge_model
from modelmarket.billing.period import Period
from modelmarket.billing.plans import IMPLICIT_PLAN, PlanSpec, PlanVersion, Subscription, remaining_days
from modelmarket.billing.ports import EconomyUnitOfWork, LedgerEntry, LedgerTxn, RatedEvent
from modelmarket.core.errors import InvalidInput
from modelmarket.core.uow import Lock
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.partitions import SHARED_LOCK_KEY
from modelmarket.metering.units import UnitKind
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


@dataclass(frozen=True, slots=True, eq=False)
class _Plan:
    """A plan in force: the implicit ``payg``, or a subscription with its spec (None if the version is unknown)."""

    name: str
    version: int
    sub: Subscription | None = None
    spec: PlanSpec | None = None
    scope: str = ""
    """The counter scope of the subscription's grant or included IU: ``sub:<seq>``."""
    start: date | None = None
    """The UTC day the subscription started (its included IU are prorated from it)."""


_IMPLICIT = _Plan(IMPLICIT_PLAN, 0)
_UNIT_TEXT = {unit: unit.value for unit in UnitKind}


class _Timeline:
    """An account's subscription history in a batch: the plan in force at a time, by bisection."""

    __slots__ = ("chronological", "plans", "starts")

    def __init__(self, subs: list[Subscription], specs: dict[tuple[str, int], PlanVersion]) -> None:
        self.starts: list[datetime] = []
        self.plans: list[_Plan] = []
        for sub in subs:  # ordered by effective_at, then seq: the last one starting at or before T is in force
            effective = sub.effective
            spec = specs.get((sub.plan_name, sub.plan_version))
            self.starts.append(effective)
            self.plans.append(
                _Plan(
                    sub.plan_name,
                    sub.plan_version,
                    sub,
                    None if spec is None else spec.spec,
                    f"sub:{sub.seq}",
                    effective.astimezone(UTC).date(),
                )
            )
        # Ordered by the text of effective_at, which is time order for UTC instants; otherwise (other offsets)
        # the last one in that order that started at or before T, as a scan finds it.
        self.chronological = all(a <= b for a, b in pairwise(self.starts))

    def at(self, time: datetime) -> _Plan:
        if self.chronological:
            i = bisect_right(self.starts, time)
            return self.plans[i - 1] if i else _IMPLICIT
        found = _IMPLICIT
        for start, plan in zip(self.starts, self.plans, strict=True):
            if start <= time:
                found = plan
        return found


class _Group:
    """The events of one usage transaction in a batch: the amount is summed exactly, as integer numerators per
    denominator (no Fraction normalisation per event), and made one Fraction at the end."""

    __slots__ = ("count", "first", "numerators")

    def __init__(self, first: RatedEvent) -> None:
        self.first = first
        self.count = 0
        self.numerators: dict[int, int] = {}

    def add(self, numerator: int, denominator: int) -> None:
        self.count += 1
        self.numerators[denominator] = self.numerators.get(denominator, 0) + numerator

    def amount(self) -> Fraction:
        return sum((Fraction(n, d) for d, n in self.numerators.items()), Fraction(0))


log = logging.getLogger(__name__)
SHARE_SETTING = "provider_share"
AMOUNT_CACHE_MAX = 4096
"""Distinct (numerator, denominator) amounts whose Fractions rating keeps between batches (an event's amount is
usually one of a few: a small quantity times one price)."""


class Rater:
    """The rating projection. ``share``: the provider's share of billed revenue (0..1).

    It records the events it rates (``records_events``): the store keeps one row per event, the usage event with
    its rating, written once (``LedgerRepository.add_rated``), so the metering consumer does not write them."""

    records_events = True

    def __init__(self, share: Decimal, now: Callable[[], datetime], charges: ChargeSource | None = None) -> None:
        self.charges: ChargeSource = charges or RegistryCharges()
        self.configured_share = check_share(share)
        self.share = Fraction(self.configured_share)
        self.now = now
        self._amounts: dict[tuple[int, int], tuple[Fraction, Fraction]] = {}
        self._ratios: dict[Decimal, tuple[int, int]] = {}

    def apply(self, uow: EconomyUnitOfWork, events: Sequence[tuple[int, UsageEvent]]) -> None:
        if not events:
            return
        self._use_stored_share(uow)
        placed, keys = self._place(uow, events)
        stored = uow.ledger.counters(sorted(keys))
        counters = dict(stored)
        closed = uow.ledger.closed_periods(sorted({e.account_id for _, e in events}))
        rated, groups = self._rate_all(uow, placed, counters, closed)
        uow.ledger.put_counters({k: v for k, v in counters.items() if stored.get(k) != v}, set(stored))
        uow.ledger.add_rated(rated)
        created = self.now().astimezone(UTC).isoformat()
        txns = []
        for group in groups:
            amount = group.amount()
            txns.append(usage_txn(group.first, group.count, amount, amount * self.share, created))
        uow.ledger.add_txns(txns)

    def _use_stored_share(self, uow: EconomyUnitOfWork) -> None:
        """The share the store rates at: fixed by its first rating (``MODELMARKET_PROVIDER_SHARE`` then), so every
        process that rates (the metering child, a CLI catching up, a rebuild) gives the same amounts."""
        stored = uow.ledger.setting(SHARE_SETTING)
        if stored is None:  # the first rating: metering partitions rating at once must not both record it
            uow.lock(Lock.METERING, SHARED_LOCK_KEY)
            stored = uow.ledger.setting(SHARE_SETTING)
        if stored is None:
            uow.ledger.put_setting(SHARE_SETTING, str(self.configured_share))
            stored = str(self.configured_share)
        share = Fraction(Decimal(stored))
        if share != self.share:
            if Decimal(stored) != self.configured_share:
                log.warning(
                    "MODELMARKET_PROVIDER_SHARE is %s here, but this store rates at %s (fixed by its first rating)",
                    self.configured_share,
                    stored,
                )
            self.share = share
            self._amounts.clear()

    def _place(
        self, uow: EconomyUnitOfWork, events: Sequence[tuple[int, UsageEvent]]
    ) -> tuple[list[tuple[int, UsageEvent, str, _Plan]], set[CounterKey]]:
        """Each event with its origin period and the plan in force at its time; the counters they may move."""
        specs = {(p.name, p.version): p for p in uow.plans.plan_versions()}
        timelines: dict[str, _Timeline] = {}
        labels: dict[tuple[int, int], str] = {}
        placed = []
        combos = set()
        for offset, e in events:
            timeline = timelines.get(e.account_id)
            if timeline is None:
                timeline = timelines[e.account_id] = _Timeline(uow.plans.subscriptions(e.account_id), specs)
            plan = timeline.at(e.time)
            utc = e.time.astimezone(UTC)
            origin = labels.get((utc.year, utc.month))
            if origin is None:
                origin = labels[(utc.year, utc.month)] = period_label(utc)
            placed.append((offset, e, origin, plan))
            combos.add((e.account_id, origin, e.model, e.unit_kind, plan))
        keys: set[CounterKey] = set()
        for account_id, origin, model, unit, plan in combos:
            keys.add((account_id, origin, f"model:{model}", _UNIT_TEXT[unit]))
            if plan.sub is not None:
                keys.add((account_id, origin, plan.scope, _UNIT_TEXT[unit]))
        return placed, keys

    def _rate_all(
        self,
        uow: EconomyUnitOfWork,
        placed: list[tuple[int, UsageEvent, str, _Plan]],
        counters: dict[CounterKey, int],
        closed: dict[tuple[str, str, str], int],
    ) -> tuple[list[RatedEvent], list[_Group]]:
        """The rated events, in log order, and their groups (one usage transaction each)."""
        allowances: dict[tuple[str, str, UnitKind], int] = {}
        rated: list[RatedEvent] = []
        groups: dict[tuple[str, str, str, str, str], _Group] = {}
        if len(self._amounts) > AMOUNT_CACHE_MAX:
            self._amounts.clear()
        for offset, e, origin, plan in placed:
            landing, kind = _landing(closed, e, origin, offset) if closed else (origin, "usage")
            granted, numerator, denominator = self._rate(uow, e, origin, plan, counters, allowances)
            amount, provider = self._amount(numerator, denominator)
            group_key = (e.account_id, e.provider_account_id, e.currency, landing, kind)
            group = groups.get(group_key)
            # The group's first event's offset makes its transaction id unique.
            txn_id = group.first.txn_id if group is not None else txn_id_for("usage", *group_key, offset)
            row = RatedEvent(
                e.id,
                offset,
                e.account_id,
                e.provider_account_id,
                e.model,
                e.unit_kind,
                e.currency,
                landing,
                origin,
                kind,
                plan.name,
                plan.version,
                e.quantity,
                granted,
                amount,
                provider,
                txn_id,
                e.version,
                e.quantity_out,
                e.pipeline_call_id,
                e,
            )
            if group is None:
                group = groups[group_key] = _Group(row)
            group.add(numerator, denominator)
            rated.append(row)
        return rated, list(groups.values())

    def clear(self, uow: EconomyUnitOfWork) -> None:
        uow.ledger.clear_derived()

    def _rate(
        self,
        uow: EconomyUnitOfWork,
        e: UsageEvent,
        origin: str,
        plan: _Plan,
        counters: dict[CounterKey, int],
        allowances: dict[tuple[str, str, UnitKind], int],
    ) -> tuple[int, int, int]:
        """(granted base units, amount numerator, amount denominator) of one event, exactly; moves the counters
        it uses."""
        spec = plan.spec
        unit = e.unit_kind
        if spec is not None:  # (a subscription's: the implicit plan has none)
            sub_key = (e.account_id, origin, plan.scope, _UNIT_TEXT[unit])
            used = counters.get(sub_key, 0)
            counters[sub_key] = used + e.quantity
            if spec.kind == "free":
                return e.quantity, 0, 1
            if spec.kind == "subscription":
                allowance = allowances.get((plan.scope, origin, unit))
                if allowance is None:
                    allowance = allowances[(plan.scope, origin, unit)] = _included_base(plan, spec, origin, unit)
                granted = min(e.quantity, max(0, allowance - used))
                billable = e.quantity - granted
                if billable == 0:
                    return granted, 0, 1
                rate = plan_rate(spec, e.model, unit, e.currency)
                if rate is not None:
                    n, d = self._ratio(rate)
                    return granted, billable * n, d * unit.divisor
                return (granted, *self._list(uow, e, origin, billable, counters))
            if spec.kind == "enterprise":
                rate = plan_rate(spec, e.model, unit, e.currency)
                if rate is not None:
                    n, d = self._ratio(rate)
                    return 0, e.quantity * n, d * unit.divisor
        return (0, *self._list(uow, e, origin, e.quantity, counters))

    def _amount(self, numerator: int, denominator: int) -> tuple[Fraction, Fraction]:
        """The exact amount and the provider's share of it (cached: a batch repeats a few amounts)."""
        pair = self._amounts.get((numerator, denominator))
        if pair is None:
            amount = Fraction(numerator, denominator)
            pair = self._amounts[(numerator, denominator)] = (amount, amount * self.share)
        return pair

    def _ratio(self, price: Decimal) -> tuple[int, int]:
        """A decimal price as an exact integer ratio (cached: an event carries one of a few prices)."""
        found = self._ratios.get(price)
        if found is None:
            if len(self._ratios) > AMOUNT_CACHE_MAX:
                self._ratios.clear()
            found = self._ratios[price] = price.as_integer_ratio()
        return found

    def _list(
        self, uow: EconomyUnitOfWork, e: UsageEvent, origin: str, billable: int, counters: dict[CounterKey, int]
    ) -> tuple[int, int]:
        """The list amount of ``billable`` base units of this event (the last ones of its quantity), as an exact
        (numerator, denominator)."""
        charge = self.charges(uow, e.model, e.version)
        div = e.unit_kind.divisor
        if charge.kind == "per_unit":
            if charge.output_price_per_iu is None:
                n, d = self._ratio(e.unit_price)
                return billable * n, d * div
            assert charge.input_price_per_iu is not None
            out = min(billable, e.quantity_out)  # output is billed first: it is the last part of the call
            inp = billable - out
            prices = Fraction(inp) * Fraction(charge.input_price_per_iu)
            prices += Fraction(out) * Fraction(charge.output_price_per_iu)
            amount = Fraction(e.price_factor) * prices / div
            return amount.numerator, amount.denominator
        key = (e.account_id, origin, f"model:{e.model}", _UNIT_TEXT[e.unit_kind])
        before = counters.get(key, 0)
        counters[key] = before + billable
        amount = Fraction(e.price_factor) * charge.marginal(Fraction(before, div), Fraction(before + billable, div))
        return amount.numerator, amount.denominator


def plan_rate(spec: PlanSpec, model: str, unit: UnitKind, currency: str) -> Decimal | None:
    """The plan's own price per IU for an event's billable units: a subscription's ``overage`` rate for its unit
    kind, an enterprise plan's rate for its model. None: the list price applies (no such rate, another kind of
    plan, or an event in another currency than the plan's, since a plan's rates are prices in its currency).
    Rating prices by it, and the invoice tells by it which tokens were billed at their input and output prices."""
    if spec.currency != currency:
        return None
    if spec.kind == "subscription":
        return spec.overage.get(unit)
    if spec.kind == "enterprise":
        return spec.rates.get(model)
    return None


def _landing(closed: dict[tuple[str, str, str], int], e: UsageEvent, origin: str, offset: int) -> tuple[str, str]:
    """(landing period, kind): an event of a period finalized before it was read is an adjustment that lands on the
    next period not finalized before then."""
    if not _read_after_close(closed, (e.account_id, origin, e.currency), offset):
        return origin, "usage"
    landing = next_period(origin)
    # A period finalized *after* this event was read kept it (a rebuild must land it there again).
    while _read_after_close(closed, (e.account_id, landing, e.currency), offset):
        landing = next_period(landing)
    return landing, "adjustment"


def _included_base(plan: _Plan, spec: PlanSpec, origin: str, unit: UnitKind) -> int:
    """The included base units of a subscription in a period: prorated by the days left in the month when it
    started mid-month, rounded down to whole base units (a fraction of one is not included)."""
    assert plan.start is not None
    period = Period(int(origin[:4]), int(origin[5:]))
    start = max(plan.start, period.first_day)
    allowance = spec.included.get(unit, Fraction(0)) * unit.divisor
    return int(allowance * remaining_days(start, period) / period.last_day.day)


def usage_txn(first: RatedEvent, count: int, amount: Fraction, provider: Fraction, created_at: str) -> LedgerTxn:
    """The balanced transaction of a group of ``count`` rated events (same consumer, provider, currency, period,
    kind; ``first`` is the first of them): ``amount`` is the exact sum of their amounts, ``provider`` of their
    provider shares."""
    entries = (
        LedgerEntry(first.txn_id, 1, receivable(first.account_id), first.currency, amount),
        LedgerEntry(first.txn_id, 2, payable(first.provider_account_id), first.currency, -provider),
        LedgerEntry(first.txn_id, 3, PLATFORM_REVENUE, first.currency, provider - amount),
    )
    memo = f"{count} {first.kind} event(s) of {first.period}"
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
