"""Plans applied from a file, subscriptions, and limits per account and per key. Every change is audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from modelmarket.audit import chain as audit
from modelmarket.billing.period import Period
from modelmarket.billing.plans import IMPLICIT_PLAN, PlanSpec, PlanVersion, Subscription, parse_plans
from modelmarket.billing.ports import EconomyUnitOfWork, StoredLimits
from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.metering.units import UnitKind

MAX_RPM = 10_000_000


@dataclass(frozen=True, slots=True)
class Applied:
    name: str
    version: int
    action: str
    """'created', 'changed' or 'unchanged'."""
    moved: int
    """Subscribers moved to the new version."""

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.name, "version": self.version, "action": self.action, "moved_subscribers": self.moved}


def next_period_start(now: datetime) -> datetime:
    period = Period.of(now.astimezone(UTC).date())
    year, month = (period.year + 1, 1) if period.month == 12 else (period.year, period.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


class PlanService:
    def __init__(self, uow: UnitOfWorkFactory[EconomyUnitOfWork], clock: Clock) -> None:
        self.uow = uow
        self.clock = clock

    def apply(
        self, text: str | bytes, *, now: bool = False, actor: str = "cli", source: str = "plans file"
    ) -> list[Applied]:
        """Apply every plan in the file: new plans get version 1, changed ones a new version (their subscribers
        move to it at the next period, or at once with ``now``), identical ones nothing."""
        specs = parse_plans(text, source)
        results = []
        with self.uow.write(Lock.METERING) as uow:  # no event is rated while plans change (see _effective_now)
            at = _effective_now(uow, self.clock(), None)
            for spec in specs:
                versions = uow.plans.plan_versions(spec.name)
                latest = versions[-1] if versions else None
                if latest is not None and latest.spec.digest == spec.digest:
                    results.append(Applied(spec.name, latest.version, "unchanged", 0))
                    continue
                plan = PlanVersion(spec.name, (latest.version + 1) if latest else 1, spec, at.isoformat())
                uow.plans.add_plan_version(plan)
                moved = 0
                if latest is not None:
                    if latest.currency != spec.currency:
                        raise InvalidInput(
                            f"plan {spec.name!r}: its currency cannot change ({latest.currency} -> {spec.currency}); "
                            "declare a new plan instead"
                        )
                    moved = self._move_subscribers(uow, plan, at if now else next_period_start(at), at)
                audit.append(
                    uow.audit,
                    actor=actor,
                    action="plan.created" if latest is None else "plan.changed",
                    subject=spec.name,
                    payload={"version": plan.version, "digest": spec.digest, "spec": spec.to_json(), "moved": moved},
                    now=at,
                )
                results.append(Applied(spec.name, plan.version, "created" if latest is None else "changed", moved))
        return results

    def _move_subscribers(self, uow: EconomyUnitOfWork, plan: PlanVersion, effective: datetime, at: datetime) -> int:
        latest: dict[str, Subscription] = {}
        for sub in uow.plans.subscriptions():
            latest[sub.account_id] = sub  # ordered by account, effective_at, seq: the last one is the latest
        moved = 0
        seq = uow.plans.next_subscription_seq()
        for account_id, sub in sorted(latest.items()):
            if sub.plan_name == plan.name and sub.plan_version != plan.version:
                uow.plans.add_subscription(
                    Subscription(seq, account_id, plan.name, plan.version, effective.isoformat(), at.isoformat())
                )
                seq += 1
                moved += 1
        return moved

    def plans(self) -> list[PlanVersion]:
        """The latest version of every plan."""
        with self.uow.read() as uow:
            latest: dict[str, PlanVersion] = {}
            for plan in uow.plans.plan_versions():
                latest[plan.name] = plan
            return list(latest.values())

    def plan(self, name: str, version: int | None = None) -> PlanVersion:
        with self.uow.read() as uow:
            versions = uow.plans.plan_versions(name)
        if not versions:
            raise NotFound(f"no plan named {name!r} (apply a plans file with `modelmarket plans apply FILE`)")
        if version is None:
            return versions[-1]
        for plan in versions:
            if plan.version == version:
                return plan
        raise NotFound(f"plan {name!r} has no version {version} (versions 1-{versions[-1].version})")

    def subscribe(self, account_id: str, plan_name: str, *, now: bool = False, actor: str = "cli") -> Subscription:
        """Put the account on the latest version of a plan: at once for its first plan or with ``now`` (the
        fees and included IU of both plans prorate by day), else from the next period. Subscribing to the
        latest version of the plan already in force (or, without ``now``, already scheduled) changes nothing: that
        subscription is returned, so its included IU are not renewed."""
        with self.uow.write(Lock.METERING) as uow:  # no event is rated while the plan changes
            at = _effective_now(uow, self.clock(), account_id)
            versions = uow.plans.plan_versions(plan_name)
            if not versions:
                raise NotFound(f"no plan named {plan_name!r} (apply a plans file with `modelmarket plans apply FILE`)")
            plan = versions[-1]
            history = uow.plans.subscriptions(account_id)
            latest = history[-1] if history else None
            if (
                latest is not None
                and (latest.plan_name, latest.plan_version) == (plan.name, plan.version)
                and (not now or latest.effective <= at)
            ):
                return latest  # already on it (or moving to it): a new segment would renew its included IU
            effective = at if (now or not history) else next_period_start(at)
            sub = Subscription(
                uow.plans.next_subscription_seq(),
                account_id,
                plan.name,
                plan.version,
                effective.isoformat(),
                at.isoformat(),
            )
            uow.plans.add_subscription(sub)
            audit.append(
                uow.audit,
                actor=actor,
                action="subscription.changed",
                subject=account_id,
                payload={"plan": plan.name, "version": plan.version, "effective_at": sub.effective_at},
                now=at,
            )
        return sub

    def history(self, account_id: str) -> list[Subscription]:
        with self.uow.read() as uow:
            return uow.plans.subscriptions(account_id)

    def in_force(self, account_id: str, at: datetime | None = None) -> tuple[Subscription | None, PlanVersion | None]:
        at = at or self.clock()
        with self.uow.read() as uow:
            current = None
            for sub in uow.plans.subscriptions(account_id):
                if sub.effective <= at:
                    current = sub
            if current is None:
                return None, None
            for plan in uow.plans.plan_versions(current.plan_name):
                if plan.version == current.plan_version:
                    return current, plan
        return current, None

    def plan_name_of(self, account_id: str) -> str:
        sub, _ = self.in_force(account_id)
        return IMPLICIT_PLAN if sub is None else sub.plan_name

    # -- limits ------------------------------------------------------------------------------------------------

    def set_limits(
        self,
        account_id: str,
        key_id: str | None,
        *,
        rpm: int | None,
        iu_per_day: dict[UnitKind, Fraction] | None,
        budget: Decimal | None,
        clear: bool = False,
        actor: str = "cli",
    ) -> StoredLimits:
        """Set (merge into) an account's or a key's limits; ``clear`` removes them all first."""
        if rpm is not None and not 0 < rpm <= MAX_RPM:
            raise InvalidInput(f"rpm: must be between 1 and {MAX_RPM}, got {rpm}")
        if budget is not None and (not budget.is_finite() or budget < 0):
            raise InvalidInput(f"budget: must be a non-negative amount, got {budget}")
        at = self.clock()
        with self.uow.write(Lock.PLANS) as uow:
            current = next((x for x in uow.plans.limits(account_id) if x.key_id == (key_id or "")), None)
            base = StoredLimits(account_id, key_id or "", None, {}, None, at.isoformat())
            if current is not None and not clear:
                base = current
            merged = StoredLimits(
                account_id,
                key_id or "",
                rpm if rpm is not None else base.rpm,
                {**base.iu_per_day, **(iu_per_day or {})},
                budget if budget is not None else base.budget,
                at.isoformat(),
            )
            uow.plans.put_limits(merged)
            audit.append(
                uow.audit,
                actor=actor,
                action="limits.set",
                subject=account_id if key_id is None else f"{account_id}/{key_id}",
                payload=limits_json(merged),
                now=at,
            )
        return merged

    def limits(self, account_id: str | None = None) -> list[StoredLimits]:
        with self.uow.read() as uow:
            return uow.plans.limits(account_id)


def _effective_now(uow: EconomyUnitOfWork, now: datetime, account_id: str | None) -> datetime:
    """When a change made now takes effect: now, but never at or before the time of an event already rated (of
    the account, or of anyone), so an event is rated under the same plan live and on ``billing rebuild``, even
    when the gateway's clock is ahead of this one. Called under ``Lock.METERING``: nothing is rated meanwhile."""
    latest = uow.ledger.last_rated_at(account_id)
    if latest is None:
        return now
    after = datetime.fromisoformat(latest) + timedelta(microseconds=1)
    return max(now, after.astimezone(UTC) if after.tzinfo else after.replace(tzinfo=UTC))


def limits_json(limits: StoredLimits) -> dict[str, Any]:
    return {
        "account_id": limits.account_id,
        "key_id": limits.key_id or None,
        "rpm": limits.rpm,
        "iu_per_day": {k.value: str(v) for k, v in sorted(limits.iu_per_day.items())},
        "budget": None if limits.budget is None else str(limits.budget),
        "updated_at": limits.updated_at,
    }


def plan_spec_json(spec: PlanSpec) -> dict[str, Any]:
    return spec.to_json()
