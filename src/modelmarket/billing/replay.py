"""Pricing what-if: a period's real usage events re-rated under proposed prices or plans, nothing stored.

``modelmarket lab price-replay`` asks what a month would have earned had a model cost something else, or a plan
been shaped otherwise. It answers with the billing code itself: the recorded events of the period go through the
same ``Rater`` that priced them (its ``apply`` over an in-memory ledger instead of the store's), and the invoices
through the same ``build_lines``. So a replay with no change reproduces every stored invoice of the period to the
cent, and a replay with a change differs from it only by the change.

What is re-rated: every event that lands on the period (its usage and its adjustments), and with them every event
of the same origin months, in log order, because tiers, included IU and grants count from the first event of an
origin month. Events of those months that landed elsewhere move the counters and are left out of the report.

What a proposal changes:

- ``prices``: model -> a list price per IU. Every version of the model is billed per unit at that price, times the
  dynamic factor stamped on each event (a tiered or token-priced version becomes per unit). A plan's own rate for
  the model (an enterprise rate, a subscription's overage) still wins, as it does in billing.
- ``plans``: plan specs from a plans file. Each replaces every version of the stored plan of its name for the
  replay: that plan's subscribers keep their subscription days and are rated and invoiced under the proposal.

Nothing is written: the replay reads in one read transaction and never takes a write lock.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from modelmarket.billing.charges import ChargeModel
from modelmarket.billing.lifecycle import build_lines, token_prices_of
from modelmarket.billing.period import Period
from modelmarket.billing.plans import PlanSpec, PlanVersion, Subscription, segments
from modelmarket.billing.ports import EconomyUnitOfWork, LedgerTxn, RatedEvent, StoredUsage
from modelmarket.billing.rating import PER_UNIT, ChargeSource, Rater
from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import round_minor, sum_exact
from modelmarket.core.uow import Lock
from modelmarket.metering.events import UsageEvent

REPLAY_BATCH = 10_000
"""Events handed to the rater at once (its counters and plan timelines are per batch; the ledger here is not)."""
REPLAY_SOURCE = "modelmarket/price-replay"


@dataclass(frozen=True)
class Proposal:
    """What the replay changes: list prices per IU by model, and plan specs by plan name. Empty: nothing."""

    prices: Mapping[str, Decimal] = field(default_factory=dict)
    plans: Sequence[PlanSpec] = ()

    def describe(self) -> str:
        parts = [f"{model} at {price} per IU" for model, price in sorted(self.prices.items())]
        parts += [f"plan {spec.name} as proposed" for spec in self.plans]
        return ", ".join(parts) or "today's prices and plans"


@dataclass
class Change:
    """Old against new, exactly; ``events`` counts the re-rated events behind the figures."""

    old: Fraction = Fraction(0)
    new: Fraction = Fraction(0)
    events: int = 0

    @property
    def delta(self) -> Fraction:
        return self.new - self.old


@dataclass
class InvoiceChange:
    account_id: str
    currency: str
    segment: str
    old: Decimal
    new: Decimal

    @property
    def delta(self) -> Decimal:
        return self.new - self.old


@dataclass
class ReplayReport:
    period: str
    proposal: str
    events: int
    """Events landing on the period, re-rated."""
    rated: int
    """Events re-rated in all (with the rest of their origin months)."""
    seconds: float
    models: dict[tuple[str, str], Change]
    """(model, currency) -> usage revenue."""
    providers: dict[tuple[str, str], Change]
    """(provider account, currency) -> the provider's share of it."""
    segments: dict[tuple[str, str], Change]
    """(plan name in force, currency) -> usage revenue."""
    invoices: list[InvoiceChange]
    """Every invoice of the period (fees and shortfalls included), the largest change first."""

    def totals(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Currency -> (old, new) sum of the period's invoice totals."""
        out: dict[str, tuple[Decimal, Decimal]] = {}
        for inv in self.invoices:
            old, new = out.get(inv.currency, (Decimal(0), Decimal(0)))
            out[inv.currency] = (old + inv.old, new + inv.new)
        return out

    def to_json(self, names: Mapping[str, str] | None = None, top: int | None = None) -> dict[str, Any]:
        names = names or {}

        def money(value: Fraction, currency: str) -> str:
            return str(round_minor(value, currency))

        def changes(rows: dict[tuple[str, str], Change], key: str) -> list[dict[str, Any]]:
            return [
                {
                    key: names.get(k, k) if key != "model" else k,
                    "currency": c,
                    "events": ch.events,
                    "old": money(ch.old, c),
                    "new": money(ch.new, c),
                    "change": money(ch.delta, c),
                    "old_exact": str(ch.old),
                    "new_exact": str(ch.new),
                }
                for (k, c), ch in sorted(rows.items())
            ]

        invoices = self.invoices if top is None else self.invoices[:top]
        return {
            "period": self.period,
            "proposal": self.proposal,
            "events": self.events,
            "rated": self.rated,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rated / self.seconds) if self.seconds > 0 else None,
            "totals": [
                {"currency": c, "old": str(o), "new": str(n), "change": str(n - o)}
                for c, (o, n) in sorted(self.totals().items())
            ],
            "models": changes(self.models, "model"),
            "providers": changes(self.providers, "provider"),
            "segments": changes(self.segments, "segment"),
            "accounts": [
                {
                    "account": names.get(i.account_id, i.account_id),
                    "account_id": i.account_id,
                    "segment": i.segment,
                    "currency": i.currency,
                    "old": str(i.old),
                    "new": str(i.new),
                    "change": str(i.delta),
                }
                for i in invoices
            ],
        }


class _Ledger:
    """The rater's ledger in a replay: counters from zero in memory, the store's finalized periods and share,
    rated rows kept, transactions dropped, nothing written."""

    def __init__(self, store: Any, period: str) -> None:
        self.store = store
        self.period = period
        self.counter_values: dict[tuple[str, str, str, str], int] = {}
        self.rows: list[RatedEvent] = []
        """The re-rated rows landing on ``period`` (the others only moved the counters)."""
        self._closed: dict[tuple[str, str, str], int] | None = None

    def setting(self, name: str) -> str | None:
        value: str | None = self.store.setting(name)
        return value

    def put_setting(self, name: str, value: str) -> None:
        raise InvalidInput("nothing has been rated yet: there is no usage to replay")

    def counters(self, keys: Sequence[tuple[str, str, str, str]]) -> dict[tuple[str, str, str, str], int]:
        values = self.counter_values
        return {k: values[k] for k in keys if k in values}

    def put_counters(self, changed: Mapping[tuple[str, str, str, str], int], existing: object) -> None:
        self.counter_values.update(changed)

    def closed_periods(self, account_ids: Sequence[str] | None = None) -> dict[tuple[str, str, str], int]:
        if self._closed is None:  # every account's, once: the replay's batches ask again and again
            self._closed = self.store.closed_periods(None)
        return self._closed

    def add_rated(self, rows: Sequence[RatedEvent]) -> None:
        period = self.period
        self.rows.extend(r._replace(usage=None) for r in rows if r.period == period)  # (the event is not kept)

    def add_txns(self, txns: Sequence[LedgerTxn]) -> None:
        pass


class _Plans:
    """The store's plans and subscriptions, with the proposal's specs in place of the plans they name."""

    def __init__(self, store: Any, proposed: Sequence[PlanSpec]) -> None:
        self.store = store
        by_name = {spec.name: spec for spec in proposed}
        stored = store.plan_versions()
        known = {p.name for p in stored}
        for name in by_name:
            if name not in known:
                raise InvalidInput(
                    f"plan {name!r} is not a plan of this platform (a replay re-rates the subscribers of existing "
                    f"plans; known: {', '.join(sorted(known)) or 'none'})"
                )
        self.versions = [
            p if p.name not in by_name else PlanVersion(p.name, p.version, by_name[p.name], p.created_at)
            for p in stored
        ]
        self.all_subscriptions: list[Subscription] = store.subscriptions(None)  # one query, not one per account
        self._subs: dict[str, list[Subscription]] = defaultdict(list)
        for sub in self.all_subscriptions:
            self._subs[sub.account_id].append(sub)

    def plan_versions(self, name: str | None = None) -> list[PlanVersion]:
        return [p for p in self.versions if name is None or p.name == name]

    def subscriptions(self, account_id: str | None = None) -> list[Subscription]:
        if account_id is None:
            return self.all_subscriptions
        return self._subs.get(account_id, [])


class _Uow:
    """What ``Rater.apply`` and the charge source read, over the store's read transaction."""

    def __init__(self, real: EconomyUnitOfWork, proposed: Sequence[PlanSpec], period: str) -> None:
        self.real = real
        self.ledger = _Ledger(real.ledger, period)
        self.plans = _Plans(real.plans, proposed)

    @property
    def registry(self) -> Any:
        return self.real.registry  # type: ignore[attr-defined]

    def lock(self, lock: Lock, key: str = "", *, shared: bool = False) -> None:
        pass  # read only: nothing to serialize


class _Charges:
    """The billing charge models, with a proposed list price making a model per unit."""

    def __init__(self, base: ChargeSource, prices: Mapping[str, Decimal]) -> None:
        self.base = base
        self.prices = prices

    def __call__(self, uow: Any, model: str, version: str) -> ChargeModel:
        if model in self.prices:
            return PER_UNIT
        return self.base(uow, model, version)


def _event(stored: StoredUsage, prices: Mapping[str, Decimal], charges: _Charges, uow: _Uow) -> UsageEvent:
    """The usage event behind a stored row, at the proposed price of its model if there is one."""
    r = stored.rated
    factor = stored.price_factor
    if factor is None:  # recorded before the store kept factors: only the per-unit price it was billed at is known
        charge = charges(uow, r.model_name, r.version)
        if r.model_name in prices or charge.kind != "per_unit" or charge.output_price_per_iu is not None:
            raise InvalidInput(
                f"event {r.event_id} of {r.origin_period} was recorded before the store kept price factors, and "
                f"re-rating {r.model_name} needs it: run `modelmarket billing rebuild` once, then replay"
            )
        factor = Decimal(1)
    price = prices.get(r.model_name)
    return UsageEvent(
        id=r.event_id,
        source=REPLAY_SOURCE,
        account_id=r.account_id,
        time=datetime.fromisoformat(stored.occurred_at),
        model=r.model_name,
        version=r.version,
        provider_account_id=r.provider_account_id,
        unit_kind=r.unit_kind,
        quantity=r.quantity_base,
        unit_price=stored.unit_price if price is None else price * factor,
        currency=r.currency,
        latency_ms=stored.latency_ms,
        price_factor=factor,
        quantity_out=r.quantity_out,
        pipeline_call_id=r.pipeline_call_id,
    )


def check_proposal(proposal: Proposal) -> None:
    for model, price in proposal.prices.items():
        if not isinstance(price, Decimal) or not price.is_finite() or price < 0:
            raise InvalidInput(f"price of {model!r} must be a finite, non-negative decimal per IU, got {price}")


def replay(
    uow: EconomyUnitOfWork,
    period: Period,
    proposal: Proposal,
    share: Decimal,
    now: Callable[[], datetime],
    charges: ChargeSource,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Re-rate ``period`` under ``proposal`` in the read transaction ``uow``. ``charges``: billing's charge models
    (the rating projector's); ``share``: the configured provider share (the store's own is used, as in rating);
    ``progress(n)``: told after every batch with the events re-rated so far."""
    check_proposal(proposal)
    started = time.perf_counter()
    replay_uow = _Uow(uow, proposal.plans, period.label)
    source = _Charges(charges, proposal.prices)
    rater = Rater(share, now, source)
    old_rows: list[RatedEvent] = []
    batch: list[tuple[int, UsageEvent]] = []
    rated = 0
    label = period.label
    for stored in uow.ledger.stored_usage(label):
        if stored.rated.period == label:
            old_rows.append(stored.rated)
        batch.append((stored.rated.log_offset, _event(stored, proposal.prices, source, replay_uow)))
        if len(batch) >= REPLAY_BATCH:
            rater.apply(replay_uow, batch)  # type: ignore[arg-type]
            rated += len(batch)
            batch = []
            if progress is not None:
                progress(rated)
    if batch:
        rater.apply(replay_uow, batch)  # type: ignore[arg-type]
        rated += len(batch)
    new_rows = replay_uow.ledger.rows
    report = ReplayReport(
        label,
        proposal.describe(),
        len(new_rows),
        rated,
        0.0,
        *_revenue(old_rows, new_rows),
        _invoices(uow, replay_uow, charges, source, period, old_rows, new_rows),
    )
    report.seconds = time.perf_counter() - started
    return report


def _revenue(
    old_rows: Iterable[RatedEvent], new_rows: Iterable[RatedEvent]
) -> tuple[dict[tuple[str, str], Change], dict[tuple[str, str], Change], dict[tuple[str, str], Change]]:
    """Per model, provider and segment: the exact sums, as integer numerators per denominator (a Fraction sum per
    row was most of a replay's time), made Fractions once at the end."""
    books: tuple[dict[tuple[str, str], _Sums], ...] = ({}, {}, {})
    for rows, side in ((old_rows, 0), (new_rows, 1)):
        for r in rows:
            for book, key, amount in (
                (books[0], (r.model_name, r.currency), r.amount),
                (books[1], (r.provider_account_id, r.currency), r.provider_amount),
                (books[2], (r.plan_name, r.currency), r.amount),
            ):
                sums = book.get(key)
                if sums is None:
                    sums = book[key] = _Sums()
                sums.add(side, amount)
    models, providers, segs = ({k: v.change() for k, v in book.items()} for book in books)
    return models, providers, segs


class _Sums:
    __slots__ = ("events", "parts")

    def __init__(self) -> None:
        self.parts: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self.events = 0

    def add(self, side: int, amount: Fraction) -> None:
        part = self.parts[side]
        d = amount.denominator
        part[d] = part.get(d, 0) + amount.numerator
        self.events += side

    def change(self) -> Change:
        old, new = (sum((Fraction(n, d) for d, n in part.items()), Fraction(0)) for part in self.parts)
        return Change(old, new, self.events)


def _invoices(
    uow: EconomyUnitOfWork,
    replay_uow: _Uow,
    charges: ChargeSource,
    proposed: ChargeSource,
    period: Period,
    old_rows: list[RatedEvent],
    new_rows: list[RatedEvent],
) -> list[InvoiceChange]:
    """Every account's invoices of the period, as billing builds them, from the stored rows and the new ones."""
    old_plans = {(p.name, p.version): p for p in uow.plans.plan_versions()}
    new_plans = {(p.name, p.version): p for p in replay_uow.plans.plan_versions()}
    old_by: dict[str, list[RatedEvent]] = defaultdict(list)
    new_by: dict[str, list[RatedEvent]] = defaultdict(list)
    for r in old_rows:
        old_by[r.account_id].append(r)
    for r in new_rows:
        new_by[r.account_id].append(r)
    subscribed = {s.account_id for s in replay_uow.plans.subscriptions(None)}
    out = []
    for account_id in sorted(set(old_by) | set(new_by) | subscribed):
        segs = segments(replay_uow.plans.subscriptions(account_id), period)
        old = _totals(old_by[account_id], old_plans, segs, period, token_prices_of(charges, uow, old_by[account_id]))
        new = _totals(
            new_by[account_id], new_plans, segs, period, token_prices_of(proposed, replay_uow, new_by[account_id])
        )
        segment = segs[-1].subscription.plan_name if segs else "payg"
        for currency in sorted(set(old) | set(new)):
            zero = Decimal(0)
            out.append(InvoiceChange(account_id, currency, segment, old.get(currency, zero), new.get(currency, zero)))
    out.sort(key=lambda i: (-abs(i.delta), i.account_id, i.currency))
    return out


def _totals(
    rows: list[RatedEvent],
    plans: dict[tuple[str, int], PlanVersion],
    segs: list[Any],
    period: Period,
    prices: Mapping[tuple[str, str], Any],
) -> dict[str, Decimal]:
    """Currency -> the invoice total ``build_lines`` makes (fees and shortfalls included); only currencies with
    usage or a plan billed in them."""
    currencies = {r.currency for r in rows}
    for seg in segs:
        plan = plans.get((seg.subscription.plan_name, seg.subscription.plan_version))
        if plan is not None and plan.kind in ("subscription", "enterprise"):
            currencies.add(plan.currency)
    out = {}
    for currency in currencies:
        lines = build_lines(rows, plans, segs, period, currency, prices)
        out[currency] = sum_exact(line.amount for line in lines)
    return out


class PriceReplayService:
    """``modelmarket lab price-replay``: metering is caught up first (a replay reads what billing has rated),
    then the period is re-rated in one read transaction."""

    def __init__(
        self, uow: Any, metering: Any, clock: Callable[[], datetime], share: Decimal, charges: ChargeSource
    ) -> None:
        self.uow = uow
        self.metering = metering
        self.clock = clock
        self.share = share
        self.charges = charges

    def replay(self, period: Period, proposal: Proposal, progress: Callable[[int], None] | None = None) -> ReplayReport:
        check_proposal(proposal)
        self.metering.catch_up()
        with self.uow.read() as uow:
            return replay(uow, period, proposal, self.share, self.clock, self.charges, progress)
