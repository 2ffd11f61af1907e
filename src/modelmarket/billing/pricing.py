"""Operator list prices and dynamic pricing: a versioned price history (records are added, never edited), the
pure ``PriceBook`` the gateway prices each call with, and the ``PriceService`` that writes the history.

The price of one IU of a model at time T is ``(list_price or the manifest's price_per_iu) x factor``, where the
list price comes from the latest ``list`` record in force at T (none: the manifest's price) and the factor from
the latest ``dynamic`` record in force at T (none: 1). A record is in force from its ``effective_at`` on; the
latest is the one with the greatest ``effective_at <= T``, ties broken by the greatest ``seq`` (per model, max+1).
Prices are never retroactive: a record is never effective before the moment it is written.

The dynamic factor (``recompute``), for one model with dynamic pricing enabled, at ``now``:

    window W = 300 s and reference R = 86 400 s, both ending at ``now`` (the window lies inside the reference)
    w = the model's calls in the window       d = its calls in the reference period
    t = every model's calls in the reference  n = the models with at least one call in the reference
    lw, ld = the model's p50 latency over the window and over the reference (nearest rank)

    demand      r = (w / W) / (d / R)    calls per minute now, over the model's mean of the last 24 h (1 if d = 0)
    latency     q = lw / ld              p50 now over the 24 h p50 (1 without calls in the window)
    popularity  p = (d / t) x n          its share of the day's calls over an equal share (1 if t = 0)
    feedback    f = s / 3                s: the mean feedback score (1-5) on the model's calls of the reference
                                         period (``POST /api/feedback``), not its provider's; 1 with fewer than
                                         20 scored calls or 5 accounts scoring

    raw    = 1 + 1/4 x (min(r, 4) - 1) + 1/10 x (min(q, 4) - 1) + 1/20 x (min(p, 4) - 1) + 1/20 x (f - 1)
    factor = raw clamped to the model's [min_factor, max_factor], rounded to 4 decimals, half to even

Demand weighs most. Feedback is the lab's telemetry (the figures its experiments and bandit read): a model
its callers rate above the neutral 3 costs a little more, one rated below a little less (at most +-1/30).
Latency is read as congestion: a p50 above the model's own daily p50 means its runner is
saturated, so the price rises (the same direction as demand) to shed marginal load; a faster-than-usual model
gets a little cheaper. Each ratio is capped at 4 so one spike cannot dominate; all arithmetic is exact
(``Fraction``) up to the one rounding. A ``dynamic`` record is written only when the factor changes (no churn).

Worked example: W = 300, R = 86 400; 30 calls in the last 5 min, 2 880 in 24 h (2 per minute on average, 6 now):
r = 30 x 86 400 / (2 880 x 300) = 3. p50 120 ms now against 80 ms over the day: q = 1.5. The day had 5 760 calls
over 4 active models: p = 2 880 / 5 760 x 4 = 2. raw = 1 + 0.25 x 2 + 0.1 x 0.5 + 0.05 x 1 = 1.6; with bounds
[0.5, 2] the factor is 1.6, with [0.5, 1.5] it is 1.5. One call in 5 min against 864 a day (r = 1/3), usual
latency, a third of 2 592 calls over 3 models (p = 1): raw = 1 - 1/6 = 0.8333..., factor 0.8333.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Protocol

from modelmarket.audit import chain as audit
from modelmarket.audit.ports import AuditRepository
from modelmarket.billing.ports import DynamicPricing, PlanRepository, PriceRecord
from modelmarket.core.clock import Clock
from modelmarket.core.errors import InvalidInput, NotFound, ensure
from modelmarket.core.money import EXACT, exact_text, parse_decimal
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.lab.ports import LabRepository
from modelmarket.metering.ports import CallStats, UsageRepository
from modelmarket.registry.manifest import PRICE_LIMIT, PRICE_MAX_DECIMALS, PRICE_RE
from modelmarket.registry.ports import RegistryRepository

WINDOW_S = 300
"""Demand window of ``recompute``: the last 5 minutes."""
REFERENCE_S = 86_400
"""Reference period of ``recompute``: the last 24 hours (each model against its own mean and p50 over it)."""
DEMAND_WEIGHT, LATENCY_WEIGHT, POPULARITY_WEIGHT = Fraction(1, 4), Fraction(1, 10), Fraction(1, 20)
RATIO_CAP = Fraction(4)
QUALITY_WEIGHT = Fraction(1, 20)
FEEDBACK_MIN_CALLS = 20
"""Scored calls a model needs in the reference period before its feedback moves its price."""
FEEDBACK_MIN_ACCOUNTS = 5
"""Distinct accounts those scores must come from."""
FACTOR_DECIMALS = 4
FACTOR_MAX = Decimal(10)
CLOCK_SKEW_S = 5
"""How far before the clock ``recompute(now=...)`` may start (a caller's own reading of the clock)."""
MAX_REASON_CHARS = 300
SOURCES = ("list", "dynamic")
ONE = Decimal(1)


# -- validation ------------------------------------------------------------------------------------------------


def plain(value: Decimal) -> Decimal:
    """The shortest plain form of an exact decimal: ``1.2500`` -> ``1.25``, ``10.0`` -> ``10`` (never ``1E+1``)."""
    return value.quantize(ONE) if value == value.to_integral_value() else value.normalize()


def check_list_price(price: Decimal, field: str = "price") -> Decimal:
    """A list price as the manifest's prices are bounded: at most 10 decimals, not negative, under 10**12."""
    if not isinstance(price, Decimal) or not price.is_finite() or price < 0:
        raise InvalidInput(f"{field}: {price} must be a non-negative decimal amount per IU")
    if int(price.as_tuple().exponent) < -PRICE_MAX_DECIMALS:
        raise InvalidInput(f"{field}: {price} has more than {PRICE_MAX_DECIMALS} digits after the decimal point")
    if price >= PRICE_LIMIT:
        raise InvalidInput(f"{field}: {price} must be less than {PRICE_LIMIT:,}")
    return price


def parse_list_price(text: str, field: str = "price") -> Decimal:
    """A list price written as the manifest writes prices: digits, optionally a point and more digits."""
    if not PRICE_RE.match(text):
        raise InvalidInput(f"{field}: {text[:40]!r} is not a plain decimal: write digits and a point, e.g. 0.05")
    return check_list_price(parse_decimal(text, field), field)


def check_bounds(min_factor: Decimal, max_factor: Decimal) -> tuple[Decimal, Decimal]:
    """Dynamic bounds: 0 < min <= 1 <= max <= 10, each with at most 4 decimals."""
    for field, value in (("min_factor", min_factor), ("max_factor", max_factor)):
        if not value.is_finite() or int(value.as_tuple().exponent) < -FACTOR_DECIMALS:
            raise InvalidInput(f"{field}: {value} must be a decimal with at most {FACTOR_DECIMALS} decimals")
    if not 0 < min_factor <= 1:
        raise InvalidInput(f"min_factor: {min_factor} must be above 0 and at most 1 (the list price itself)")
    if not 1 <= max_factor <= FACTOR_MAX:
        raise InvalidInput(f"max_factor: {max_factor} must be between 1 and {FACTOR_MAX}")
    return plain(min_factor), plain(max_factor)


def _aware(moment: datetime, field: str) -> datetime:
    if moment.utcoffset() is None:
        raise InvalidInput(f"{field}: {moment.isoformat()} has no UTC offset; write e.g. 2026-03-01T00:00:00Z")
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    """UTC ISO 8601 text, as usage events' ``occurred_at`` and price records' times are written."""
    return moment.astimezone(UTC).isoformat()


# -- the book (pure) -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriceInForce:
    list_price: Decimal | None
    """None: the version's manifest price."""
    factor: Decimal
    seq: int
    """The seq of the latest record in force (0: none)."""

    def unit_price(self, manifest_price: Decimal) -> Decimal:
        """(The list price, else ``manifest_price``) x factor, exact."""
        base = manifest_price if self.list_price is None else self.list_price
        return base if self.factor == ONE else EXACT.multiply(base, self.factor)


NO_RECORD = PriceInForce(None, ONE, 0)


def price_now_json(found: PriceInForce, manifest_price: Decimal) -> dict[str, str | int | None]:
    """The price in force as the catalogue shows it: per IU, the factor, and the list price it comes from."""
    return {
        "price_per_iu": format(plain(found.unit_price(manifest_price)), "f"),
        "factor": format(plain(found.factor), "f"),
        "list_price": None if found.list_price is None else format(plain(found.list_price), "f"),
        "record": found.seq,
    }


@dataclass(frozen=True, slots=True)
class _Timeline:
    """One model's records by (effective_at, seq), each with the combined price in force from it on."""

    times: tuple[datetime, ...]
    records: tuple[PriceRecord, ...]
    states: tuple[PriceInForce, ...]


def _timeline(records: list[PriceRecord]) -> _Timeline:
    keyed = sorted(((datetime.fromisoformat(r.effective_at), r.seq, r) for r in records), key=lambda x: x[:2])
    list_price: Decimal | None = None
    factor = ONE
    states = []
    for effective, _, record in keyed:
        ensure(effective.utcoffset() is not None, f"price record {record.model_name}#{record.seq} has no UTC offset")
        ensure(record.source in SOURCES, f"price record {record.model_name}#{record.seq}: source {record.source!r}")
        if record.source == "list":
            list_price = record.list_price
        else:
            factor = record.factor
        states.append(PriceInForce(list_price, factor, record.seq))
    return _Timeline(tuple(k[0] for k in keyed), tuple(k[2] for k in keyed), tuple(states))


@dataclass(frozen=True, slots=True)
class PriceBook:
    """Every model's price history, immutable; ``in_force`` is a dict lookup and a bisect (O(log n))."""

    _timelines: Mapping[str, _Timeline]
    _configs: Mapping[str, DynamicPricing]

    @classmethod
    def build(cls, records: Iterable[PriceRecord], configs: Iterable[DynamicPricing] = ()) -> PriceBook:
        by_model: dict[str, list[PriceRecord]] = {}
        for record in records:
            by_model.setdefault(record.model_name, []).append(record)
        timelines = {name: _timeline(rs) for name, rs in by_model.items()}
        return cls(MappingProxyType(timelines), MappingProxyType({c.model_name: c for c in configs}))

    def in_force(self, model_name: str, at: datetime) -> PriceInForce:
        line = self._timelines.get(model_name)
        if line is None:
            return NO_RECORD
        i = bisect.bisect_right(line.times, at)
        return line.states[i - 1] if i else NO_RECORD

    def unit_price(self, manifest_price: Decimal, model_name: str, at: datetime) -> Decimal:
        """The price per IU at ``at``: (list price, else ``manifest_price``) x factor, exact."""
        return self.in_force(model_name, at).unit_price(manifest_price)

    def timeline(self, model_name: str) -> list[tuple[PriceRecord, PriceInForce]]:
        """The model's records by (effective_at, seq), each with the price in force from it on."""
        line = self._timelines.get(model_name)
        return [] if line is None else list(zip(line.records, line.states, strict=True))

    def dynamic(self, model_name: str) -> DynamicPricing | None:
        return self._configs.get(model_name)


# -- the formula (pure) ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemandInputs:
    """What ``recompute`` reads for one model (see the module docstring for the formula)."""

    window_calls: int
    reference_calls: int
    all_calls: int
    active_models: int
    latency_ms_p50_window: Decimal | None
    latency_ms_p50_reference: Decimal | None
    window_s: int = WINDOW_S
    reference_s: int = REFERENCE_S
    feedback_calls: int = 0
    """Calls of the model made in the reference period and given feedback (``POST /api/feedback``) by someone
    other than its provider."""
    feedback_score_sum: int = 0
    feedback_accounts: int = 0
    """The distinct accounts that gave it."""

    def __post_init__(self) -> None:
        ensure(0 < self.window_s <= self.reference_s, "the demand window lies inside the reference period")
        ensure(0 <= self.window_calls <= self.reference_calls <= self.all_calls, f"call counts: {self}")
        ensure(self.active_models >= (1 if self.all_calls else 0), f"active models: {self}")

    def demand(self) -> Fraction:
        if self.reference_calls == 0:
            return Fraction(1)
        return Fraction(self.window_calls * self.reference_s, self.reference_calls * self.window_s)

    def latency(self) -> Fraction:
        now, usual = self.latency_ms_p50_window, self.latency_ms_p50_reference
        if self.window_calls == 0 or now is None or usual is None or usual <= 0:
            return Fraction(1)
        return Fraction(now) / Fraction(usual)

    def quality(self) -> Fraction:
        """The mean feedback score over the neutral 3 (of 1-5); 1 with fewer than ``FEEDBACK_MIN_CALLS`` scored
        calls or ``FEEDBACK_MIN_ACCOUNTS`` accounts scoring them (one account cannot move a price)."""
        if self.feedback_calls < FEEDBACK_MIN_CALLS or self.feedback_accounts < FEEDBACK_MIN_ACCOUNTS:
            return Fraction(1)
        return Fraction(self.feedback_score_sum, self.feedback_calls * 3)

    def popularity(self) -> Fraction:
        if self.all_calls == 0:
            return Fraction(1)
        return Fraction(self.reference_calls * self.active_models, self.all_calls)

    def to_json(self) -> dict[str, Any]:
        p50s = (self.latency_ms_p50_window, self.latency_ms_p50_reference)
        return {
            "window_s": self.window_s,
            "reference_s": self.reference_s,
            "window_calls": self.window_calls,
            "reference_calls": self.reference_calls,
            "all_calls": self.all_calls,
            "active_models": self.active_models,
            "latency_ms_p50_window": None if p50s[0] is None else format(p50s[0], "f"),
            "latency_ms_p50_reference": None if p50s[1] is None else format(p50s[1], "f"),
            "feedback_calls": self.feedback_calls,
            "feedback_score_sum": self.feedback_score_sum,
            "feedback_accounts": self.feedback_accounts,
        }


@dataclass(frozen=True, slots=True)
class FactorComputation:
    inputs: DemandInputs
    demand: Fraction
    latency: Fraction
    popularity: Fraction
    raw: Fraction
    factor: Decimal
    min_factor: Decimal
    max_factor: Decimal
    quality: Fraction = Fraction(1)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.inputs.to_json(),
            "demand": exact_text(self.demand),
            "latency": exact_text(self.latency),
            "popularity": exact_text(self.popularity),
            "quality": exact_text(self.quality),
            "raw": exact_text(self.raw),
            "min_factor": format(self.min_factor, "f"),
            "max_factor": format(self.max_factor, "f"),
        }

    def reason(self) -> str:
        def shown(x: Fraction) -> str:
            return format(round_factor(x), "f")

        feedback = "" if self.quality == 1 else f", feedback x{shown(self.quality)}"
        return (
            f"demand x{shown(self.demand)}, latency x{shown(self.latency)}, popularity x{shown(self.popularity)}"
            f"{feedback}: raw {shown(self.raw)} in [{self.min_factor}, {self.max_factor}]"
        )


def round_factor(value: Fraction) -> Decimal:
    """Round once, to 4 decimals, half to even (``round`` on a Fraction is half-even), in its plainest form."""
    return plain(Decimal(round(value * 10**FACTOR_DECIMALS)).scaleb(-FACTOR_DECIMALS, context=EXACT))


def compute_factor(inputs: DemandInputs, min_factor: Decimal, max_factor: Decimal) -> FactorComputation:
    demand, latency, popularity = inputs.demand(), inputs.latency(), inputs.popularity()
    quality = inputs.quality()
    raw = (
        1
        + DEMAND_WEIGHT * (min(demand, RATIO_CAP) - 1)
        + LATENCY_WEIGHT * (min(latency, RATIO_CAP) - 1)
        + POPULARITY_WEIGHT * (min(popularity, RATIO_CAP) - 1)
        + QUALITY_WEIGHT * (quality - 1)
    )
    clamped = min(max(raw, Fraction(min_factor)), Fraction(max_factor))
    factor = round_factor(clamped)
    ensure(min_factor <= factor <= max_factor, f"factor {factor} outside [{min_factor}, {max_factor}]")
    return FactorComputation(inputs, demand, latency, popularity, raw, factor, min_factor, max_factor, quality)


def record_json(record: PriceRecord) -> dict[str, Any]:
    return {
        "model": record.model_name,
        "seq": record.seq,
        "effective_at": record.effective_at,
        "source": record.source,
        "list_price": None if record.list_price is None else format(record.list_price, "f"),
        "factor": format(record.factor, "f"),
        "reason": record.reason,
        "created_at": record.created_at,
    }


# -- the service -----------------------------------------------------------------------------------------------


class PricingUnitOfWork(Protocol):
    @property
    def plans(self) -> PlanRepository: ...

    @property
    def registry(self) -> RegistryRepository: ...

    @property
    def usage(self) -> UsageRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def lab(self) -> LabRepository: ...


class PriceService:
    def __init__(self, uow: UnitOfWorkFactory[PricingUnitOfWork], clock: Clock) -> None:
        self.uow = uow
        self.clock = clock

    def set_list_price(
        self, model: str, price: Decimal, at: datetime | None = None, actor: str = "cli", reason: str = ""
    ) -> PriceRecord:
        """The operator's price per IU of ``model`` from ``at`` (default: now) on; ``at`` may not be in the past."""
        price = check_list_price(price)
        now = self.clock()
        effective = now if at is None else _aware(at, "at")
        if effective < now:
            raise InvalidInput(
                f"at: {_iso(effective)} is in the past (now {_iso(now)}); prices are never retroactive: "
                "give a time from now on, or leave --at out"
            )
        with self.uow.write(Lock.PLANS) as uow:
            _known_model(uow, model)
            _priced_per_unit(uow, model)
            records = uow.plans.price_records(model)
            before = PriceBook.build(records).in_force(model, effective).list_price
            why = _reason(reason) or f"list price set by {actor}"
            record = PriceRecord(model, _next_seq(records), _iso(effective), price, ONE, "list", why, _iso(now))
            uow.plans.add_price_record(record)
            payload = {**record_json(record), "previous_list_price": None if before is None else format(before, "f")}
            audit.append(uow.audit, actor=actor, action="price.set", subject=model, payload=payload, now=now)
        return record

    def enable_dynamic(
        self, model: str, min_factor: Decimal, max_factor: Decimal, actor: str = "cli"
    ) -> DynamicPricing:
        """Turn dynamic pricing on (or change its bounds); a factor in force outside them is clamped at once."""
        low, high = check_bounds(min_factor, max_factor)
        now = self.clock()
        config = DynamicPricing(model, low, high, True, _iso(now))
        bounds = {"min_factor": format(low, "f"), "max_factor": format(high, "f")}
        with self.uow.write(Lock.PLANS) as uow:
            _known_model(uow, model)
            uow.plans.put_dynamic_pricing(config)
            audit.append(uow.audit, actor=actor, action="price.dynamic.enabled", subject=model, payload=bounds, now=now)
            clamped = min(max(_factor_at(uow, model, now), low), high)
            reason = f"dynamic bounds set to [{low}, {high}]"
            _change_factor(uow, model, clamped, _Change(now, now, actor), reason, bounds)
        return config

    def disable_dynamic(self, model: str, actor: str = "cli") -> DynamicPricing:
        """Turn dynamic pricing off: the factor goes back to 1 from now on (a record, audited)."""
        now = self.clock()
        with self.uow.write(Lock.PLANS) as uow:
            _known_model(uow, model)
            current = next((c for c in uow.plans.dynamic_pricing() if c.model_name == model), None)
            if current is None:
                raise NotFound(f"model {model!r} has no dynamic pricing (enable it with `modelmarket prices dynamic`)")
            if not current.enabled:
                return current
            config = DynamicPricing(model, current.min_factor, current.max_factor, False, _iso(now))
            uow.plans.put_dynamic_pricing(config)
            audit.append(uow.audit, actor=actor, action="price.dynamic.disabled", subject=model, payload={}, now=now)
            _change_factor(uow, model, ONE, _Change(now, now, actor), "dynamic pricing disabled", {})
        return config

    def history(self, model: str) -> list[PriceRecord]:
        """Every price record of ``model``, by seq."""
        with self.uow.read() as uow:
            _known_model(uow, model)
            return uow.plans.price_records(model)

    def book(self) -> PriceBook:
        with self.uow.read() as uow:
            return PriceBook.build(uow.plans.price_records(), uow.plans.dynamic_pricing())

    def recompute(self, now: datetime | None = None, actor: str = "pricing") -> list[PriceRecord]:
        """Recompute the factor of every model with dynamic pricing enabled from the usage up to ``now``
        (default: the clock); write (and audit) a record effective at ``now`` for each factor that changed."""
        clock_now = self.clock()
        now = clock_now if now is None else _aware(now, "now")
        if now < clock_now - timedelta(seconds=CLOCK_SKEW_S):
            raise InvalidInput(f"now: {_iso(now)} is in the past (the clock says {_iso(clock_now)})")
        inputs = self._inputs(now)
        change = _Change(now, clock_now, actor)
        written = []
        with self.uow.write(Lock.PLANS) as uow:
            configs = {c.model_name: c for c in uow.plans.dynamic_pricing() if c.enabled}
            for name in sorted(set(inputs) & set(configs)):
                computed = compute_factor(inputs[name], configs[name].min_factor, configs[name].max_factor)
                record = _change_factor(uow, name, computed.factor, change, computed.reason(), computed.to_json())
                if record is not None:
                    written.append(record)
        return written

    def _inputs(self, now: datetime) -> dict[str, DemandInputs]:
        """The formula's inputs of every model with dynamic pricing enabled, from one consistent snapshot."""
        with self.uow.read() as uow:
            names = sorted(c.model_name for c in uow.plans.dynamic_pricing() if c.enabled)
            if not names:
                return {}
            until = _iso(now)
            window = _by_name(uow.usage.call_stats(_iso(now - timedelta(seconds=WINDOW_S)), until, names))
            day = _by_name(uow.usage.call_stats(_iso(now - timedelta(seconds=REFERENCE_S)), until, names))
            # the feedback the lab's experiments and bandit read (lab.feedback), over the same reference period
            scored = uow.lab.feedback_since(names, _iso(now - timedelta(seconds=REFERENCE_S)), until)
        all_calls = sum(s.calls for s in day.values())
        empty = CallStats("", 0, None)
        return {
            name: DemandInputs(
                window.get(name, empty).calls,
                day.get(name, empty).calls,
                all_calls,
                len(day),
                window.get(name, empty).latency_ms_p50,
                day.get(name, empty).latency_ms_p50,
                feedback_calls=scored.get(name, (0, 0, 0))[0],
                feedback_score_sum=scored.get(name, (0, 0, 0))[1],
                feedback_accounts=scored.get(name, (0, 0, 0))[2],
            )
            for name in names
        }


def _by_name(stats: list[CallStats]) -> dict[str, CallStats]:
    return {s.model_name: s for s in stats}


def _known_model(uow: PricingUnitOfWork, model: str) -> None:
    if uow.registry.model(model) is None:
        raise NotFound(f"model {model!r} is not published (see `modelmarket models`)")


def _priced_per_unit(uow: PricingUnitOfWork, model: str) -> None:
    """A list price replaces one price per IU: a model with tiers, packages or split token prices has none."""
    newest = uow.registry.newest_version(model)
    stored = None if newest is None else uow.registry.version(model, newest)
    if stored is None:
        return
    pricing = json.loads(stored.manifest_json).get("pricing", {})
    charge = pricing.get("charge", "per_unit")
    if charge != "per_unit" or "output_price_per_iu" in pricing:
        kind = charge if charge != "per_unit" else "input and output token"
        raise InvalidInput(
            f"model {model!r} is priced with {kind} prices, not one price per IU: publish a new version to change "
            "them (dynamic pricing still applies its factor)"
        )


def _next_seq(records: list[PriceRecord]) -> int:
    return max((r.seq for r in records), default=0) + 1


def _reason(text: str) -> str:
    if len(text) > MAX_REASON_CHARS:
        raise InvalidInput(f"reason: at most {MAX_REASON_CHARS} characters, got {len(text)}")
    return text.strip()


def _factor_at(uow: PricingUnitOfWork, model: str, at: datetime) -> Decimal:
    return PriceBook.build(uow.plans.price_records(model)).in_force(model, at).factor


@dataclass(frozen=True, slots=True)
class _Change:
    at: datetime
    """When the new factor takes effect."""
    now: datetime
    """When it is written (the clock)."""
    actor: str


def _change_factor(
    uow: PricingUnitOfWork, model: str, factor: Decimal, change: _Change, reason: str, details: dict[str, Any]
) -> PriceRecord | None:
    """A ``dynamic`` record effective at ``change.at``, audited, if ``factor`` differs from the one in force then."""
    records = uow.plans.price_records(model)
    old = PriceBook.build(records).in_force(model, change.at).factor
    if factor == old:
        return None
    seq = _next_seq(records)
    record = PriceRecord(model, seq, _iso(change.at), None, plain(factor), "dynamic", reason, _iso(change.now))
    uow.plans.add_price_record(record)
    payload = {
        "seq": record.seq,
        "effective_at": record.effective_at,
        "old_factor": format(old, "f"),
        "new_factor": format(record.factor, "f"),
        "inputs": details,
    }
    audit.append(uow.audit, actor=change.actor, action="price.changed", subject=model, payload=payload, now=change.now)
    return record
