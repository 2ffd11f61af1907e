"""What the gateway's limiter needs from the store, read in one snapshot: each limited account's policy (plan
grant or included IU, plan and account limits, key limits) and, at start, the usage its counters resume from."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

from modelmarket.billing.period import Period
from modelmarket.billing.plans import PlanLimits, PlanVersion, Subscription, remaining_days
from modelmarket.billing.ports import EconomyUnitOfWork, StoredLimits
from modelmarket.metering.units import UnitKind

IMPLICIT_CURRENCY = "USD"
"""The currency of an account's budget when it has no plan (billed as payg)."""


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    iu_per_day: dict[UnitKind, Fraction] = field(default_factory=dict)
    budget: Decimal | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and not self.iu_per_day and self.budget is None


@dataclass(frozen=True, slots=True)
class Policy:
    account_id: str
    currency: str
    plan: str
    grant: dict[UnitKind, Fraction]
    included: dict[UnitKind, Fraction]
    hard_cap: bool
    limits: Limits
    key_limits: dict[str, Limits]
    rates: dict[str, Decimal] = field(default_factory=dict)
    """Enterprise: the price per IU of named models (what a call is billed at instead of the list price)."""
    overage: dict[UnitKind, Decimal] = field(default_factory=dict)
    """Subscription: the price per IU past the included IU, per unit kind."""


@dataclass(frozen=True, slots=True)
class Used:
    iu_today: dict[UnitKind, Fraction]
    iu_period: dict[UnitKind, Fraction]
    spend_period: Fraction


def _merge(plan: PlanLimits | None, stored: StoredLimits | None) -> Limits:
    """The account's own limits override its plan's, field by field."""
    rpm = stored.rpm if stored is not None and stored.rpm is not None else (plan.rpm if plan else None)
    per_day = {**(plan.iu_per_day if plan else {}), **(stored.iu_per_day if stored else {})}
    budget = stored.budget if stored is not None and stored.budget is not None else (plan.budget if plan else None)
    return Limits(rpm, per_day, budget)


def _in_force(subs: list[Subscription], at: datetime) -> Subscription | None:
    current = None
    for sub in subs:
        if sub.effective <= at:
            current = sub
    return current


def policies(uow: EconomyUnitOfWork, at: datetime) -> dict[str, Policy]:
    """The policy of every account that has any limit or grant at ``at`` (others are not limited at all)."""
    plans = {(p.name, p.version): p for p in uow.plans.plan_versions()}
    by_account: dict[str, list[Subscription]] = defaultdict(list)
    for row_sub in uow.plans.subscriptions():
        by_account[row_sub.account_id].append(row_sub)
    stored: dict[str, dict[str, StoredLimits]] = defaultdict(dict)
    for row in uow.plans.limits():
        stored[row.account_id][row.key_id] = row
    period = Period.of(at.astimezone(UTC).date())
    out: dict[str, Policy] = {}
    for account_id in sorted(set(by_account) | set(stored)):
        sub: Subscription | None = _in_force(by_account.get(account_id, []), at)
        plan: PlanVersion | None = plans.get((sub.plan_name, sub.plan_version)) if sub is not None else None
        own = stored.get(account_id, {})
        limits = _merge(plan.spec.limits if plan else None, own.get(""))
        keys = {key_id: _merge(None, row) for key_id, row in own.items() if key_id}
        grant: dict[UnitKind, Fraction] = {}
        included: dict[UnitKind, Fraction] = {}
        if plan is not None and sub is not None and plan.kind == "free":
            grant = dict(plan.spec.grant)
        if plan is not None and sub is not None and plan.kind == "subscription":
            start = max(sub.effective.astimezone(UTC).date(), period.first_day)
            share = Fraction(remaining_days(start, period), period.last_day.day)
            included = {kind: iu * share for kind, iu in plan.spec.included.items()}
        hard_cap = plan is not None and plan.kind == "free"
        if not hard_cap and limits.empty and all(k.empty for k in keys.values()):
            continue
        currency = plan.currency if plan is not None else IMPLICIT_CURRENCY
        out[account_id] = Policy(
            account_id,
            currency,
            plan.name if plan else "payg",
            grant,
            included,
            hard_cap,
            limits,
            keys,
            dict(plan.spec.rates) if plan is not None and plan.kind == "enterprise" else {},
            dict(plan.spec.overage) if plan is not None and plan.kind == "subscription" else {},
        )
    return out


def used(
    uow: EconomyUnitOfWork, account_ids: list[str], day: date, currencies: dict[str, str] | None = None
) -> dict[str, Used]:
    """What each account used today and this month (IU per unit kind) and its billed spend this month, in its
    budget's currency (``currencies``; default: every currency, for an account with one)."""
    period = Period.of(day)
    out: dict[str, Used] = {}
    for account_id in account_ids:
        today: dict[UnitKind, Fraction] = defaultdict(Fraction)
        month: dict[UnitKind, Fraction] = defaultdict(Fraction)
        for row in uow.usage.daily_usage(account_id, period.first_day.isoformat(), period.last_day.isoformat()):
            iu = row.unit_kind.iu(row.quantity_base)
            month[row.unit_kind] += iu
            if row.day == day.isoformat():
                today[row.unit_kind] += iu
        currency = (currencies or {}).get(account_id)
        rows = uow.ledger.rated(account_id=account_id, period=period.label)
        spend = sum((r.amount for r in rows if currency is None or r.currency == currency), Fraction(0))
        out[account_id] = Used(dict(today), dict(month), spend)
    return out
