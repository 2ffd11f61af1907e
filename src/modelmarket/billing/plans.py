"""Plans: what a consumer buys. Declared in YAML, versioned by content, subscribed to with a history.

Kinds (``docs/billing.md`` has worked examples):

- ``free``: a monthly grant of IU per unit kind; a hard cap (the gateway refuses past it with 402), never billed.
- ``payg``: the models' list prices, no fee.
- ``subscription``: a monthly fee, IU included per unit kind, overage at the list price or the plan's rate.
- ``enterprise``: custom rates per model, a committed monthly spend (a shortfall line when unmet), custom limits.

A plan's version is the hash of its normalised spec: applying the same file twice changes nothing; a changed
plan becomes version N+1. Proration is by day, exact (fractions of a month), see ``prorate``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelmarket.billing.period import Period
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import check_currency
from modelmarket.metering.units import UnitKind
from modelmarket.registry.manifest import load_declared_list

PLAN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
MAX_PLANS_FILE_BYTES = 256 * 1024
MAX_PLANS = 200
MAX_RATES = 1000
AMOUNT_RE = re.compile(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,10})?$")
"""A money amount in a plan: plain decimal digits (at most 12 before the point and 10 after), quoted."""
IU_RE = re.compile(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$")
PlanKind = Literal["free", "payg", "subscription", "enterprise"]
IMPLICIT_PLAN = "payg"
"""An account with no subscription is billed as on a ``payg`` plan: list prices, no fee, no grant."""


def _amount(value: Any) -> Decimal:
    if isinstance(value, float):
        raise ValueError(f'write the amount as a quoted decimal string such as "20.00", not a float ({value!r})')
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'must be a quoted decimal string such as "20.00", not {type(value).__name__}')
    text = str(value)
    if not AMOUNT_RE.match(text):
        raise ValueError(f'{text[:40]!r} is not a plain non-negative decimal amount such as "20.00"')
    return Decimal(text)


def _iu(value: Any) -> Fraction:
    if isinstance(value, float):
        raise ValueError(f"write IU as an integer or a quoted decimal, not a float ({value!r})")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a number of IU, not {type(value).__name__}")
    text = str(value)
    if not IU_RE.match(text):
        raise ValueError(f"{text[:40]!r} is not a non-negative number of IU")
    return Fraction(Decimal(text))


def _per_unit_kind(values: Any, parse: Any) -> dict[UnitKind, Any]:
    if not isinstance(values, dict):
        raise ValueError("must be a mapping of unit kind to a value, e.g. {image: 100}")
    out = {}
    for key, value in values.items():
        try:
            kind = UnitKind(key)
        except ValueError:
            known = ", ".join(k.value for k in UnitKind)
            raise ValueError(f"{key!r} is not a unit kind (one of {known})") from None
        try:
            out[kind] = parse(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out


class PlanLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rpm: int | None = Field(default=None, gt=0, le=10_000_000)
    iu_per_day: dict[UnitKind, Fraction] = Field(default_factory=dict)
    budget: Decimal | None = None

    @field_validator("iu_per_day", mode="before")
    @classmethod
    def _iu_per_day(cls, value: Any) -> dict[UnitKind, Fraction]:
        return _per_unit_kind(value, _iu)

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Decimal | None:
        return None if value is None else _amount(value)

    def to_json(self) -> dict[str, Any]:
        return {
            "rpm": self.rpm,
            "iu_per_day": {k.value: _iu_text(v) for k, v in sorted(self.iu_per_day.items())},
            "budget": None if self.budget is None else str(self.budget),
        }


class PlanSpec(BaseModel):
    """One plan as written in the plans file; normalised by ``to_json`` (whose hash is the version's digest)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: str
    kind: PlanKind
    currency: str
    description: str = Field(default="", max_length=2000)
    grant: dict[UnitKind, Fraction] = Field(default_factory=dict)
    fee: Decimal = Decimal(0)
    included: dict[UnitKind, Fraction] = Field(default_factory=dict)
    overage: dict[UnitKind, Decimal] = Field(default_factory=dict)
    """Subscription: the plan's price per IU past the included IU (a unit kind not named: the list price)."""
    rates: dict[str, Decimal] = Field(default_factory=dict, max_length=MAX_RATES)
    """Enterprise: the price per IU of named models (others: the list price)."""
    commitment: Decimal = Decimal(0)
    """Enterprise: the committed monthly spend; a shortfall line bills the difference when usage is below it."""
    limits: PlanLimits = Field(default_factory=PlanLimits)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not PLAN_NAME_RE.match(name):
            raise ValueError(f"{name[:40]!r} must be 1-100 lowercase letters, digits, '.', '_' or '-'")
        return name

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str:
        try:
            return check_currency(value, "currency")
        except InvalidInput as exc:
            raise ValueError(exc.message.removeprefix("currency: ")) from None

    @field_validator("grant", "included", mode="before")
    @classmethod
    def _ius(cls, value: Any) -> dict[UnitKind, Fraction]:
        return _per_unit_kind(value, _iu)

    @field_validator("overage", mode="before")
    @classmethod
    def _overage(cls, value: Any) -> dict[UnitKind, Decimal]:
        return _per_unit_kind(value, _amount)

    @field_validator("rates", mode="before")
    @classmethod
    def _rates(cls, value: Any) -> dict[str, Decimal]:
        if not isinstance(value, dict):
            raise ValueError('must be a mapping of model name to a price per IU, e.g. {digits: "0.0005"}')
        out = {}
        for model, price in value.items():
            if not isinstance(model, str) or not 0 < len(model) <= 200:
                raise ValueError(f"{str(model)[:40]!r} is not a model name")
            try:
                out[model] = _amount(price)
            except ValueError as exc:
                raise ValueError(f"{model}: {exc}") from None
        return out

    @field_validator("fee", "commitment", mode="before")
    @classmethod
    def _money(cls, value: Any) -> Decimal:
        return _amount(value)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> PlanSpec:
        allowed = {
            "free": {"grant"},
            "payg": set(),
            "subscription": {"fee", "included", "overage"},
            "enterprise": {"rates", "commitment"},
        }[self.kind]
        for field in ("grant", "fee", "included", "overage", "rates", "commitment"):
            if field not in allowed and field in self.model_fields_set and getattr(self, field):
                raise ValueError(f"{field}: a {self.kind} plan has no {field} (only {_names(allowed)})")
        if self.kind == "subscription" and "fee" not in self.model_fields_set:
            raise ValueError('fee: a subscription plan needs a monthly fee, e.g. fee: "20.00"')
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "currency": self.currency,
            "description": self.description,
            "grant": {k.value: _iu_text(v) for k, v in sorted(self.grant.items())},
            "fee": str(self.fee),
            "included": {k.value: _iu_text(v) for k, v in sorted(self.included.items())},
            "overage": {k.value: str(v) for k, v in sorted(self.overage.items())},
            "rates": {k: str(v) for k, v in sorted(self.rates.items())},
            "commitment": str(self.commitment),
            "limits": self.limits.to_json(),
        }

    @property
    def digest(self) -> str:
        return hashlib.sha256(orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PlanSpec:
        return cls.model_validate(doc)


def _names(fields: set[str]) -> str:
    return ", ".join(sorted(fields)) if fields else "no such fields"


def _iu_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else format(Decimal(value.numerator) / value.denominator, "f")


@dataclass(frozen=True, slots=True)
class PlanVersion:
    name: str
    version: int
    spec: PlanSpec
    created_at: str

    @property
    def kind(self) -> PlanKind:
        return self.spec.kind

    @property
    def currency(self) -> str:
        return self.spec.currency

    def to_json(self) -> dict[str, Any]:
        return {**self.spec.to_json(), "version": self.version, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class Subscription:
    seq: int
    account_id: str
    plan_name: str
    plan_version: int
    effective_at: str
    """ISO 8601 UTC instant from which the plan is in force."""
    created_at: str

    @property
    def effective(self) -> datetime:
        return datetime.fromisoformat(self.effective_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "plan": self.plan_name,
            "plan_version": self.plan_version,
            "effective_at": self.effective_at,
            "created_at": self.created_at,
        }


def parse_plans(text: str | bytes, source: str = "plans file") -> list[PlanSpec]:
    """Plans from YAML ``{plans: [...]}``; errors name the plan and the field (``plans[2] (pro).fee: ...``)."""
    items = load_declared_list(text, "plans", source, MAX_PLANS_FILE_BYTES)
    if not 0 < len(items) <= MAX_PLANS:
        raise InvalidInput(f"{source}: 'plans' must list 1-{MAX_PLANS} plans")
    plans: list[PlanSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        label = f"plans[{i}]" + (f" ({item['name']})" if isinstance(item, dict) and "name" in item else "")
        if not isinstance(item, dict):
            raise InvalidInput(f"{label}: must be a mapping with name, kind and currency")
        try:
            plan = PlanSpec.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"{label}.{where}: {message}" if where else f"{label}: {message}") from None
        if plan.name in seen:
            raise InvalidInput(f"{label}: plan {plan.name!r} is declared twice")
        seen.add(plan.name)
        plans.append(plan)
    return plans


# -- proration ----------------------------------------------------------------------------------------------


def days_in(period: Period) -> int:
    return period.last_day.day


def prorate(value: Fraction | Decimal, days: int, period: Period) -> Fraction:
    """``value`` x days / days in the month, exactly (rounded only when it becomes an invoice line)."""
    return Fraction(value) * days / days_in(period)


def remaining_days(start: date, period: Period) -> int:
    """Days from ``start`` (inclusive) to the end of ``period``; the whole month when ``start`` is before it."""
    if start <= period.first_day:
        return days_in(period)
    if start > period.last_day:
        return 0
    return (period.last_day - start).days + 1


@dataclass(frozen=True, slots=True)
class Segment:
    """The part of a period a subscription was in force: days from ``first`` to ``last`` inclusive."""

    subscription: Subscription
    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def segments(history: list[Subscription], period: Period) -> list[Segment]:
    """The subscriptions in force during ``period``, each with its days (a day belongs to the plan in force at
    its end... precisely: to the plan in force at the start of the day, or the one that started that day)."""
    ordered = sorted(history, key=lambda s: (s.effective_at, s.seq))
    out: list[Segment] = []
    for i, sub in enumerate(ordered):
        start = max(sub.effective.astimezone(UTC).date(), period.first_day)
        nxt = ordered[i + 1].effective.astimezone(UTC).date() if i + 1 < len(ordered) else None
        end = period.last_day if nxt is None else min(period.last_day, nxt - _ONE_DAY)
        if nxt is not None and nxt <= period.first_day:
            continue
        if start > period.last_day or end < start:
            continue
        out.append(Segment(sub, start, end))
    return out


_ONE_DAY = date(2000, 1, 2) - date(2000, 1, 1)
