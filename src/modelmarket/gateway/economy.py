"""The gateway's view of the economy: the limiter's policies and the prices in force, refreshed in the background.

Policies (plan grants, included IU, account and key limits) and the price book are read from the store every
``refresh_s`` (and at start); the limiter keeps its counters across reloads (a change to one account or key resets
none of them) and only counters that start counting are seeded from stored usage: those of a limited account it
did not count before (at start: every limited account; calls admitted while the usage is read keep their
reservations), and those of a key newly given a quota or budget, which start from 0 (usage is stored per account,
not per key). A call then costs no database round trip:
``admit`` checks in-memory counters, ``price`` looks the price up in the book.

Bounds (``docs/billing.md``): one gateway never overshoots a grant, quota or budget (reservations count calls in
flight). A change of plan or limits takes effect within ``refresh_s``. Per-key daily quotas restart from zero
when the gateway restarts (usage is stored per account, not per key); account counters resume from usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from modelmarket.billing.charges import ChargeModel, charge_model, token_amount
from modelmarket.billing.enforcement import Limits, Policy, Used
from modelmarket.billing.leases import LeaseService
from modelmarket.billing.pricing import PriceBook
from modelmarket.core.clock import Clock
from modelmarket.core.money import EXACT, exact_text
from modelmarket.gateway.leases import LeaseBook
from modelmarket.gateway.limits import AccountPolicy, Limiter, LimitSet, SeedUsage, Ticket, Usage
from modelmarket.metering.units import UnitKind
from modelmarket.registry.catalogue import VersionRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Priced:
    unit_price: Decimal
    factor: Decimal


def _limit_set(limits: Limits) -> LimitSet:
    return LimitSet(limits.rpm, dict(limits.iu_per_day), limits.budget)


def _account_policy(p: Policy) -> AccountPolicy:
    return AccountPolicy(
        account_id=p.account_id,
        currency=p.currency,
        grant=dict(p.grant),
        included=dict(p.included),
        limits=_limit_set(p.limits),
        key_limits={k: _limit_set(v) for k, v in p.key_limits.items()},
        hard_cap_grant=p.hard_cap,
    )


def _seed(u: Used) -> SeedUsage:
    return SeedUsage(account=Usage(dict(u.iu_today), dict(u.iu_period), u.spend_period))


def period_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


class Economy:
    def __init__(
        self,
        load_policies: Callable[[datetime], dict[str, Policy]],
        load_used: Callable[[list[str], date, dict[str, str]], dict[str, Used]],
        load_prices: Callable[[], PriceBook] | None,
        clock: Clock,
        refresh_s: float,
    ) -> None:
        self.load_policies = load_policies
        self.load_used = load_used
        self.load_prices = load_prices
        self.clock = clock
        self.refresh_s = refresh_s
        self.limiter = Limiter()
        self.prices: PriceBook = PriceBook.build(())
        self.policies: dict[str, Policy] = {}
        self._charges: dict[tuple[str, str], ChargeModel] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._leasing: LeaseService | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._lease_tasks: set[asyncio.Task[None]] = set()
        """Prefetches in flight (awaited at stop, so none commits after the give-back)."""

    async def reload(self) -> None:
        async with self._lock:
            now = self.clock()
            policies = await asyncio.to_thread(self.load_policies, now)
            if self.load_prices is not None:
                self.prices = await asyncio.to_thread(self.load_prices)
            self.policies = policies
            unseeded = self.limiter.set_policies({k: _account_policy(v) for k, v in policies.items()})
            if unseeded:
                day = now.astimezone(UTC).date()
                currencies = {k: policies[k].currency for k in unseeded if k in policies}
                used = await asyncio.to_thread(self.load_used, sorted(unseeded), day, currencies)
                self.limiter.seed(day, period_of(day), {k: _seed(v) for k, v in used.items()})

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever())
        if self._leasing is not None:
            self._heartbeat = asyncio.create_task(self._heartbeat_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.reload()
            except Exception:  # keep enforcing the last good snapshot
                log.exception("refreshing the gateway's limits and prices failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stop_leasing()

    # -- the hot path ------------------------------------------------------------------------------------------

    def price(self, version: VersionRecord, at: datetime) -> Priced:
        """The price per IU in force for a call to ``version`` now, and the dynamic factor in it."""
        found = self.prices.in_force(version.model_name, at)
        return Priced(found.unit_price(version.manifest.pricing.price_per_iu), found.factor)

    def admit(
        self,
        account_id: str,
        key_id: str | None,
        version: VersionRecord,
        units: int,
        priced: Priced,
        at: datetime,
        count_rate: bool = True,
    ) -> Ticket:
        pricing = version.manifest.pricing
        unit: UnitKind = pricing.unit
        policy = self.policies.get(account_id)
        per_iu = Fraction(0)
        cost_of: Callable[[Fraction], Fraction] | None = None
        if policy is not None and policy.currency == pricing.currency:
            charge = self._charge(version)
            rate = policy.rates.get(version.model_name)
            if rate is None:
                rate = policy.overage.get(unit)
            if rate is not None:  # the plan's own price (0 too) replaces the list price (no factor applies)
                per_iu = Fraction(rate)
            elif charge.kind == "per_unit" and charge.output_price_per_iu is None:
                per_iu = Fraction(priced.unit_price)
            else:  # tiers, packages, split token prices: the most the billable IU can cost (never below the bill)
                factor = Fraction(priced.factor)

                def cost_of(billable: Fraction) -> Fraction:
                    return charge.max_marginal(billable) * factor

        day = at.astimezone(UTC).date()
        return self.limiter.admit(
            account_id=account_id,
            key_id=key_id,
            unit_kind=unit,
            quantity_iu=unit.iu(units),
            price_per_iu=per_iu,
            cost_of=cost_of,
            day=day,
            period=period_of(day),
            count_rate=count_rate,
            now_s=at.timestamp(),
        )

    # -- leased limits (several gateways on one store: docs/scale-out.md, "Limits across replicas") -------------

    def use_leases(self, service: LeaseService, replica: str, fraction: Fraction) -> LeaseBook:
        """Count every limit against blocks leased from the store as ``replica`` (a name unique to this process:
        a restarted gateway must not take over the leases of its past life)."""
        book = LeaseBook(replica, service.grant, fraction, self._now_ms, self._spawn_lease)
        self._leasing = service
        self.limiter.leases = book
        return book

    def _now_ms(self) -> int:
        return int(self.clock().timestamp() * 1000)

    def _spawn_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._lease_tasks.add(task)
        task.add_done_callback(self._lease_tasks.discard)

    def _spawn_lease(self, work: Callable[[], Fraction], done: Callable[[Fraction | None], None]) -> None:
        async def run() -> None:
            granted: Fraction | None = None
            try:
                granted = await asyncio.to_thread(work)
            except Exception:  # the block stays as it was; a call that needs more asks again itself
                log.exception("leasing a block of a limit failed")
            finally:
                done(granted)

        self._spawn_task(run())

    async def _heartbeat_forever(self) -> None:
        while self._leasing is not None:
            await asyncio.sleep(self._leasing.ttl_ms / 3000)
            try:
                await self.heartbeat()
            except Exception:  # the leases expire if this keeps failing: their allowance comes back then
                log.exception("renewing the gateway's leases failed")

    async def heartbeat(self) -> None:
        """Report every block's use and extend its lease; give back the blocks no call took from since the last."""
        book, service = self.limiter.leases, self._leasing
        if book is None or service is None:
            return
        idle = book.idle()
        for held in idle:
            book.forget(held)
        if idle:
            asks = [book.ask(held, Fraction(0))[1] for held in idle]
            await asyncio.to_thread(service.give_back, book.replica, asks, self._now_ms())
        for held in book.held():
            sent, ask = book.ask(held, Fraction(0))
            book.apply(held, sent, await asyncio.to_thread(service.renew, book.replica, ask, self._now_ms()))

    async def _stop_leasing(self) -> None:
        """Give every unused block back (a gateway that dies instead holds them until its leases expire)."""
        book, service = self.limiter.leases, self._leasing
        if book is None or service is None:
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await asyncio.gather(*self._lease_tasks, return_exceptions=True)
        asks = [book.ask(held, Fraction(0))[1] for held in book.held()]
        for held in book.held():
            book.forget(held)
        await asyncio.to_thread(service.give_back, book.replica, asks, self._now_ms())

    def _charge(self, version: VersionRecord) -> ChargeModel:
        key = (version.model_name, version.version)
        found = self._charges.get(key)
        if found is None:
            found = self._charges[key] = charge_model(version.manifest.pricing)
        return found


_DECIMAL_SHIFT = {1: 0, 1000: -3}
"""Units whose IU is a decimal shift of the base units (images and requests; tokens): their figures stay Decimal."""


def call_figures(version: VersionRecord, units: int, out: int, priced: Priced | None) -> tuple[str, str]:
    """A call's IU and what it costs at the price in force, before any plan, as exact text (the
    ``x-modelmarket-iu`` and ``x-modelmarket-cost`` headers): ``units`` base units, ``out`` of them output tokens
    at the output price when the model quotes two; tiers and packages at their reference price (the period's
    position is the invoice's business). Decimal arithmetic where the unit allows it (it runs on every call),
    exact fractions for audio minutes (1/60 has no decimal)."""
    pricing = version.manifest.pricing
    factor = Decimal(1) if priced is None else priced.factor
    shift = _DECIMAL_SHIFT.get(pricing.unit.divisor)
    if shift is None:
        iu = pricing.unit.iu(units)
        if pricing.has_split_prices:
            amount = token_amount(pricing, units - out, out) * Fraction(factor)
        else:
            amount = Fraction(units) * Fraction(pricing.price_per_iu if priced is None else priced.unit_price)
            amount /= pricing.unit.divisor
        return exact_text(iu), exact_text(amount)
    if pricing.has_split_prices:
        total = EXACT.add(
            EXACT.multiply(Decimal(units - out), pricing.input_price_per_iu),  # type: ignore[arg-type]
            EXACT.multiply(Decimal(out), pricing.output_price_per_iu),  # type: ignore[arg-type]
        )
        total = total if factor == 1 else EXACT.multiply(total, factor)
    else:
        total = EXACT.multiply(Decimal(units), pricing.price_per_iu if priced is None else priced.unit_price)
    return _plain(Decimal(units).scaleb(shift, EXACT)), _plain(total.scaleb(shift, EXACT))


def _plain(value: Decimal) -> str:
    """``0.0570`` -> ``0.057``, ``1.000`` -> ``1``, ``1E+2`` -> ``100``: the text ``exact_text`` gives."""
    return format(value.normalize(EXACT), "f") if value else "0"
