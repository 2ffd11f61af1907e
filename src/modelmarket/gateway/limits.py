"""The gateway's in-memory limiter: requests per minute, daily IU quotas, monthly budgets and free-plan grants.

Nothing here touches a database: counters live in memory, are rebuilt from stored usage at start (``seed``) and
follow policy snapshots (``set_policies``). A call is admitted (``admit`` returns a ``Ticket``, or raises
``RateLimited`` / ``QuotaExceeded``), then settled (billed: its reservation stays as usage) or cancelled (failed:
its IU and cost are released; its rpm slot stays used, a request is a request).

Guarantees, stated exactly:

- **Overshoot bound in one process: 0.** Quotas, budgets and grants count settled usage plus the reservations of
  calls in flight, so calls admitted concurrently can never together pass a limit on top of the usage counted
  (before a ``seed``, stored usage is not counted: see reloads). The rpm window is exact: call R+1 within any 60 s
  is refused, and a refused call takes no slot.
- **Across replicas: with a ``LeaseBook``** (``gateway/leases.py``), every quota, grant, budget and rpm limit a
  call counts against is also taken from this replica's leased block of the limit's window, so replicas
  together stay within the limit; the bound is stated in ``docs/scale-out.md`` ("Limits across replicas").
  Without one (one gateway, the default), each process counts alone: N replicas could admit N times a limit.
- **After a restart:** rpm windows start empty; quotas, budgets and grants start from ``seed``, i.e. from what the
  caller read from the store. Usage still in the event log (not yet consumed) is only seen if the caller adds it.
- **Across policy reloads:** ``set_policies`` and ``seed`` never reset a counter that is counting: the counters of
  an account or key counted since its last seed (settled usage and reservations of calls in flight) are kept as
  they are, whatever else changed. Counters that start counting (a new account or key, an account back from the
  fast path) start from 0 when ``set_policies`` returns; ``seed`` then adds the stored usage to what they counted
  since, so calls admitted meanwhile keep their reservations. Until the seed, those counters miss the stored
  usage; a call admitted meanwhile whose usage reached the store before the caller read it is counted twice
  (conservative).
- **Budgets are estimates, never below the bill of a call when ``cost_of`` (or ``price_per_iu``) bounds the cost
  of its billable IU:** a call's billable IU are those beyond the account's remaining free IU (``included``, plus
  ``grant``); its cost is ``cost_of(billable IU)``, by default billable IU x ``price_per_iu``, in the account's
  currency (the caller converts, and picks the price: the gateway's ``Economy`` uses the plan's rate, enterprise
  ``rates`` or subscription ``overage``, when the plan has one, else the model's list price, and for tiers,
  packages and split token prices ``max_marginal(billable IU)`` x the dynamic factor). A cancelled call releases
  exactly what it reserved; a later call that was priced past the free IU while the cancelled one held them stays
  priced so (conservative).

Concurrency: the gateway calls ``admit``/``settle``/``cancel`` on its one event-loop thread, and none of them
awaits, so each runs whole; there are no locks. Do not call them from other threads.

Memory: counters exist only for accounts in the current policies (or seeded since the last ``set_policies``) and
for the keys their policies limit; a request adds nothing beyond an rpm window entry, and a window holds at most
``rpm`` entries. Day and month counters roll over when the ``day``/``period`` passed to ``admit`` move forward
(``period`` labels such as ``2024-05`` sort in time order); the old ones are dropped.

Speed: an account whose policy sets no limit at all (no rpm, quota, budget, hard-capped grant, nor any on a key)
takes a fast path that checks and counts nothing. Its usage is therefore not counted: if a later policy gives it
limits, ``set_policies`` names it among the accounts to ``seed`` again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from modelmarket.billing.leases import BUDGET, RPM, grant_limit, minute_window, quota_limit
from modelmarket.core.errors import InvariantViolated, QuotaExceeded, RateLimited, ensure
from modelmarket.core.money import exact_text, minor_units, round_minor
from modelmarket.gateway.leases import Held, LeaseBook, Need
from modelmarket.metering.units import UnitKind

__all__ = ["AccountPolicy", "LimitSet", "Limiter", "SeedUsage", "Ticket", "Usage"]

WINDOW_S = 60.0
"""The rpm window: a true sliding window of this many seconds of monotonic time."""

_ZERO = Fraction(0)
Scope = Literal["key", "account"]


@dataclass(frozen=True)
class LimitSet:
    """Limits of an account or of one key. None / no entry: no limit."""

    rpm: int | None = None
    iu_per_day: Mapping[UnitKind, Fraction] = field(default_factory=dict)
    """IU per unit kind per UTC day; a unit kind with no entry is not limited."""
    budget: Decimal | None = None
    """Spend per calendar month (UTC), in the account's plan currency."""

    def __post_init__(self) -> None:
        ensure(self.rpm is None or (type(self.rpm) is int and self.rpm >= 1), f"rpm must be >= 1: {self.rpm!r}")
        for kind, iu in self.iu_per_day.items():
            ensure(isinstance(iu, int | Fraction) and iu >= 0, f"iu_per_day[{kind}] must be >= 0: {iu!r}")
        ensure(
            self.budget is None or (self.budget.is_finite() and self.budget >= 0),
            f"budget must be a finite amount >= 0: {self.budget!r}",
        )

    @property
    def is_empty(self) -> bool:
        return self.rpm is None and not self.iu_per_day and self.budget is None

    @property
    def needs_counters(self) -> bool:
        """Whether enforcing these limits needs usage counted since the last seed (rpm does not)."""
        return bool(self.iu_per_day) or self.budget is not None


@dataclass(frozen=True)
class AccountPolicy:
    account_id: str
    currency: str
    """The plan currency: budgets are in it, and ``admit``'s ``price_per_iu`` must be too."""
    grant: Mapping[UnitKind, Fraction] = field(default_factory=dict)
    """IU per month the plan grants free; with ``hard_cap_grant`` also the most that may be used."""
    included: Mapping[UnitKind, Fraction] = field(default_factory=dict)
    """IU per month a subscription includes: usage within them costs nothing against a budget."""
    limits: LimitSet = field(default_factory=LimitSet)
    key_limits: Mapping[str, LimitSet] = field(default_factory=dict)
    hard_cap_grant: bool = False
    """True for free plans: past the grant a call is refused; a unit kind with no grant entry has a grant of 0."""

    def __post_init__(self) -> None:
        minor_units(self.currency)  # an unknown code raises here, not while refusing a call
        for name, amounts in (("grant", self.grant), ("included", self.included)):
            for kind, iu in amounts.items():
                ensure(isinstance(iu, int | Fraction) and iu >= 0, f"{name}[{kind}] must be >= 0: {iu!r}")

    @property
    def is_unlimited(self) -> bool:
        keys_unlimited = all(limits.is_empty for limits in self.key_limits.values())
        return self.limits.is_empty and keys_unlimited and not self.hard_cap_grant


@dataclass(frozen=True)
class Usage:
    """What one account or one key used: IU per unit kind today and this period, and spend this period.

    Spend is what counts against a budget: the amounts billed this period beyond the free IU, in the plan currency.
    """

    iu_today: Mapping[UnitKind, Fraction] = field(default_factory=dict)
    iu_period: Mapping[UnitKind, Fraction] = field(default_factory=dict)
    spend_period: Fraction = _ZERO


@dataclass(frozen=True)
class SeedUsage:
    """Stored usage of one account, and of each of its keys (a key with no entry used nothing)."""

    account: Usage = field(default_factory=Usage)
    keys: Mapping[str, Usage] = field(default_factory=dict)


def _base(kind: UnitKind, iu: Fraction | int) -> int:
    """IU as whole base units (images, tokens, seconds, requests): exact, as every metered quantity is."""
    base, remainder = divmod(iu.numerator * kind.divisor, iu.denominator)
    if remainder or base < 0:
        raise InvariantViolated(f"{iu} IU of {kind} is not a whole number >= 0 of {kind.base_unit}s")
    return base


def _cap_base(kind: UnitKind, iu: Fraction | int) -> int:
    """The most base units a limit of ``iu`` IU allows (whole base units: used + call > floor(limit) exactly)."""
    return (iu.numerator * kind.divisor) // iu.denominator


def _bases(amounts: Mapping[UnitKind, Fraction]) -> dict[UnitKind, int]:
    return {UnitKind(kind): _base(UnitKind(kind), iu) for kind, iu in amounts.items()}


def _add(into: dict[UnitKind, int], amounts: Mapping[UnitKind, Fraction]) -> None:
    for kind, base in _bases(amounts).items():
        into[kind] = into.get(kind, 0) + base


class _Day:
    __slots__ = ("base", "day")

    def __init__(self, day: date, base: dict[UnitKind, int] | None = None) -> None:
        self.day = day
        self.base: dict[UnitKind, int] = base or {}
        """Base units per unit kind counted this day."""


class _Month:
    __slots__ = ("base", "period", "spend")

    def __init__(self, period: str, base: dict[UnitKind, int] | None = None, spend: Fraction = _ZERO) -> None:
        self.period = period
        self.base: dict[UnitKind, int] = base or {}
        self.spend = spend


class _Counters:
    """One account's or one key's limits (IU ones in base units), rpm window and day/month counters."""

    __slots__ = ("budget", "counted", "day_cap_base", "limits", "month", "pending", "rpm", "today", "window")

    def __init__(self) -> None:
        self.today = _Day(date.min)
        self.month = _Month("")
        self.counted = False
        """True while every admitted call since the last seed was counted here (stored usage included)."""
        self.pending = False
        """True while not ``counted`` but every admitted call since ``start_counting`` was: awaits a seed."""
        self.limits = LimitSet()
        self.rpm: int | None = None
        self.window: deque[float] = deque(maxlen=0)
        """Monotonic times of the admissions in the last minute, oldest first; at most ``rpm`` of them."""
        self.day_cap_base: dict[UnitKind, int] = {}
        self.budget: Fraction | None = None

    def apply(self, limits: LimitSet) -> None:
        self.limits = limits
        self.rpm = limits.rpm
        maxlen = limits.rpm or 0
        if self.window.maxlen != maxlen:  # keeps the newest admissions
            self.window = deque(self.window, maxlen=maxlen)
        self.day_cap_base = {UnitKind(k): _cap_base(UnitKind(k), iu) for k, iu in limits.iu_per_day.items()}
        self.budget = None if limits.budget is None else Fraction(limits.budget)

    def start_counting(self) -> None:
        """Counters that miss calls (stale, or never counted) restart from 0 now; counting ones are kept."""
        if not self.counted and not self.pending:
            self.today = _Day(date.min)  # new objects: reservations made before do not touch them
            self.month = _Month("")
            self.pending = True

    def stop_counting(self) -> None:
        """Calls are no longer counted here (the fast path): the counters go stale until started again."""
        self.counted = self.pending = False

    def seed(self, day: date, period: str, usage: Usage) -> None:
        """Add stored usage to what was counted since ``start_counting`` (stale counters: from 0); kept if counted.

        Counts of a day or period before ``day``/``period`` are dropped (as at a rollover); stored usage of a day
        or period before the counted one is ignored.
        """
        if self.counted:
            return
        self.start_counting()
        if self.today.day < day:
            self.today = _Day(day)
        if self.today.day == day:
            _add(self.today.base, usage.iu_today)
        if self.month.period < period:
            self.month = _Month(period)
        if self.month.period == period:
            _add(self.month.base, usage.iu_period)
            self.month.spend += Fraction(usage.spend_period)
        self.counted, self.pending = True, False

    def usage(self) -> Usage:
        today = {kind: kind.iu(base) for kind, base in self.today.base.items()}
        return Usage(today, {kind: kind.iu(base) for kind, base in self.month.base.items()}, self.month.spend)

    def roll(self, day: date, period: str) -> None:
        if day > self.today.day:
            self.today = _Day(day)
        if period > self.month.period:
            self.month = _Month(period)


class _Account(_Counters):
    __slots__ = ("currency", "free_base", "grant_cap_base", "keys", "policy", "unlimited")

    def __init__(self) -> None:
        super().__init__()
        self.policy: AccountPolicy | None = None
        self.unlimited = True
        self.currency = ""
        self.free_base: dict[UnitKind, int] = {}
        """Base units per month that cost nothing against a budget: included plus granted."""
        self.grant_cap_base: dict[UnitKind, int] | None = None
        """Under a hard-capped grant, the most base units per unit kind per month; None without one."""
        self.keys: dict[str, _Counters] = {}

    def set_policy(self, policy: AccountPolicy) -> None:
        self.policy = policy
        self.unlimited = policy.is_unlimited
        self.currency = policy.currency
        self.apply(policy.limits)
        kinds = {UnitKind(k) for k in (*policy.grant, *policy.included)}
        free = {k: Fraction(policy.grant.get(k, 0)) + policy.included.get(k, 0) for k in kinds}
        self.free_base = {kind: _cap_base(kind, iu) for kind, iu in free.items()}
        caps = {UnitKind(k): _cap_base(UnitKind(k), iu) for k, iu in policy.grant.items()}
        self.grant_cap_base = caps if policy.hard_cap_grant else None
        keys: dict[str, _Counters] = {}
        for key_id, limits in policy.key_limits.items():
            if limits.is_empty:
                continue
            keys[key_id] = self.keys.get(key_id) or _Counters()
            keys[key_id].apply(limits)
        self.keys = keys

    def needs_seed(self) -> bool:
        if self.unlimited:
            return False
        stale_keys = (not c.counted and c.limits.needs_counters for c in self.keys.values())
        return not self.counted or any(stale_keys)

    def cost(
        self, kind: UnitKind, base: int, price_per_iu: Fraction, cost_of: Callable[[Fraction], Fraction] | None
    ) -> Fraction:
        """The estimated cost of a call: its base units beyond the free ones left this month, priced by ``cost_of``
        (else at ``price_per_iu``)."""
        free_left = self.free_base.get(kind, 0) - self.month.base.get(kind, 0)
        billable = base - free_left if free_left > 0 else base
        if billable <= 0:
            return _ZERO
        if cost_of is None:
            if not price_per_iu.numerator:
                return _ZERO
            return Fraction(billable * price_per_iu.numerator, price_per_iu.denominator * kind.divisor)
        cost = Fraction(cost_of(kind.iu(billable)))
        if cost < 0:
            raise InvariantViolated(f"a negative cost of {kind.iu(billable)} billable IU: {cost}")
        return cost


class Ticket:
    """An admitted call's reservation: ``settle`` it when the call was billed, ``cancel`` it when it failed."""

    __slots__ = ("_leased", "_open", "_scopes", "base", "cost", "unit_kind")

    def __init__(
        self,
        unit_kind: UnitKind,
        base: int,
        cost: Fraction,
        scopes: tuple[_Counters, ...],
        leased: tuple[tuple[Held, Fraction], ...] = (),
    ) -> None:
        self.unit_kind = unit_kind
        self.base = base
        """The call's size in base units (``unit_kind.iu(base)`` IU); 0 on the fast path (nothing counted)."""
        self.cost = cost
        """The estimated cost counted against budgets: 0 within free IU, at a price of 0, or on the fast path."""
        self._scopes = tuple((c.today, c.month) for c in scopes)
        self._leased = leased
        """What the call took from leased blocks (empty without a ``LeaseBook``)."""
        self._open = True

    @property
    def open(self) -> bool:
        """Neither settled nor cancelled yet."""
        return self._open


_NO_USAGE = Usage()
_UNCOUNTED = Ticket(UnitKind.REQUEST, 0, _ZERO, ())
"""The one ticket of every call on the fast path: nothing was reserved, so settling or cancelling it does nothing."""


class Limiter:
    """Admits or refuses calls against in-memory counters; see the module docstring for what it guarantees."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic, leases: LeaseBook | None = None) -> None:
        self._monotonic = monotonic
        self._accounts: dict[str, _Account] = {}
        self.leases = leases
        """Replicas: the blocks of allowance this gateway leased from the store; None: it counts alone."""

    def set_policies(self, policies: Mapping[str, AccountPolicy]) -> frozenset[str]:
        """Replace every policy (a snapshot reload); counters and rpm windows of kept accounts and keys are kept.

        Returns the ids of limited accounts whose counters miss stored usage (new accounts, accounts that were on
        the fast path, keys newly given a quota or budget): ``seed`` them. Those counters count from 0 from now
        on (and stay at what they count if never seeded); the counters of the other scopes of such an account,
        and of every other account, are not touched.
        """
        accounts: dict[str, _Account] = {}
        for account_id, policy in policies.items():
            ensure(policy.account_id == account_id, f"policy of {policy.account_id!r} filed under {account_id!r}")
            account = self._accounts.get(account_id) or _Account()
            account.set_policy(policy)
            if not account.unlimited:
                account.start_counting()
                for counters in account.keys.values():
                    counters.start_counting()
            accounts[account_id] = account
        self._accounts = accounts
        return frozenset(account_id for account_id, a in accounts.items() if a.needs_seed())

    def seed(self, day: date, period: str, used: Mapping[str, SeedUsage]) -> None:
        """Add stored usage (of ``day`` and ``period``) to the counters of the accounts in ``used`` and of their
        limited keys that miss it, and mark them counted.

        Give an entry (``SeedUsage()`` when nothing was used) for each account to mark as counted. Counters that
        are counted already (the account's, or a key's, when only another key was new) are kept as they are,
        reservations of calls in flight included: stored usage is not added to them. Counters that started
        counting at ``set_policies`` keep what they counted since (calls admitted while the caller read the
        store keep their reservations) plus the stored usage; stale ones (never counted, or missing fast-path
        calls) are set to it.
        """
        for account_id, usage in used.items():
            # An account with no policy yet is held until the next set_policies (dropped then if still none),
            # with all its seeded keys (set_policies keeps the limited ones).
            account = self._accounts.setdefault(account_id, _Account())
            if account.policy is None:
                for key_id in usage.keys:
                    account.keys.setdefault(key_id, _Counters())
            account.seed(day, period, usage.account)
            for key_id, counters in account.keys.items():
                counters.seed(day, period, usage.keys.get(key_id, _NO_USAGE))

    def admit(
        self,
        *,
        account_id: str,
        key_id: str | None,
        unit_kind: UnitKind,
        quantity_iu: Fraction,
        price_per_iu: Fraction,
        day: date,
        period: str,
        cost_of: Callable[[Fraction], Fraction] | None = None,
        count_rate: bool = True,
        now_s: float | None = None,
    ) -> Ticket:
        """Admit a call and reserve its IU and estimated cost, or raise ``RateLimited`` / ``QuotaExceeded``.

        The cost is that of the call's billable IU (those beyond the account's free IU left this month):
        ``cost_of(billable IU)`` when given (called only when there are billable IU; ``price_per_iu`` is then not
        used), else billable IU x ``price_per_iu``. Every limit is checked before anything is taken: a
        refused call uses no rpm slot and reserves nothing. Key limits are checked before account limits, rpm
        before quotas. ``count_rate`` False: a later attempt of a call already admitted (a route's retry or
        fallback) takes no second requests-per-minute slot; its IU and cost are checked as any call's.
        ``now_s``: wall-clock Unix time, the minute an rpm lease counts in (needed with a ``LeaseBook`` only).
        """
        account = self._accounts.get(account_id)
        if account is None or account.unlimited:
            if account is not None and (account.counted or account.pending):
                account.stop_counting()  # an unlimited account has no key counters
            return _UNCOUNTED
        base = _base(unit_kind, quantity_iu)
        if price_per_iu.numerator < 0:
            raise InvariantViolated(f"a negative price per IU: {price_per_iu}")
        key = account.keys.get(key_id) if key_id is not None else None
        scopes: tuple[_Counters, ...] = (account,) if key is None else (key, account)
        for counters in scopes:
            counters.roll(day, period)
        now = self._monotonic()
        if count_rate and key is not None and key.rpm is not None:
            _check_rate(key.window, key.rpm, "key", now)
        if count_rate and account.rpm is not None:
            _check_rate(account.window, account.rpm, "account", now)
        cost = account.cost(unit_kind, base, price_per_iu, cost_of)
        if key is not None:
            _check_quotas(key, "key", unit_kind, base, cost, account.currency)
        if account.grant_cap_base is not None:
            _check_grant(account, account.grant_cap_base, unit_kind, base)
        _check_quotas(account, "account", unit_kind, base, cost, account.currency)
        leased: tuple[tuple[Held, Fraction], ...] = ()
        if self.leases is not None:
            needs = _needs(account_id, account, key_id, key, unit_kind, base, cost, day, period, count_rate, now_s)
            leased, short = self.leases.take(needs)
            if short is not None:
                raise _lease_refusal(short, account, unit_kind, now_s)
        for counters in scopes:
            if count_rate and counters.rpm is not None:
                counters.window.append(now)
            today, month = counters.today.base, counters.month.base
            today[unit_kind] = today.get(unit_kind, 0) + base
            month[unit_kind] = month.get(unit_kind, 0) + base
            if cost:
                counters.month.spend += cost
        return Ticket(unit_kind, base, cost, scopes, leased)

    def settle(self, ticket: Ticket, base: int | None = None) -> None:
        """The call succeeded and was billed: its reservation stays counted as usage.

        ``base``: the call's actual size in base units when it differs from the reservation (a generation
        reserves its prompt estimate plus ``max_tokens`` and is billed for the tokens it processed). The counters
        move by the difference, and the reserved cost by the same proportion (exact for one price per IU; for
        tiers and split token prices the reservation was already the most the call could cost)."""
        if ticket is _UNCOUNTED:
            return
        ensure(ticket._open, "a ticket is settled or cancelled once")
        ticket._open = False
        if base is None or base == ticket.base:
            return
        ensure(base >= 0, "a call's size is not negative")
        kind, delta = ticket.unit_kind, base - ticket.base
        cost_delta = ticket.cost * Fraction(base, ticket.base) - ticket.cost if ticket.base else _ZERO
        for today, month in ticket._scopes:
            today.base[kind] = max(0, today.base.get(kind, 0) + delta)
            month.base[kind] = max(0, month.base.get(kind, 0) + delta)
            month.spend = max(_ZERO, month.spend + cost_delta)
        for held, _ in ticket._leased:  # a call bigger than reserved uses more of its block, and reports it
            if held.limit != RPM:
                held.used = max(_ZERO, held.used + (cost_delta if held.limit == BUDGET else delta))

    def cancel(self, ticket: Ticket) -> None:
        """The call failed: release its IU and cost (its rpm slot stays used). Old days and months are gone."""
        if ticket is _UNCOUNTED:
            return
        ensure(ticket._open, "a ticket is settled or cancelled once")
        ticket._open = False
        kind, base = ticket.unit_kind, ticket.base
        for today, month in ticket._scopes:
            today.base[kind] -= base
            month.base[kind] -= base
            month.spend -= ticket.cost
            ensure(today.base[kind] >= 0 and month.base[kind] >= 0 and month.spend >= 0, "a cancel released more")
        for held, amount in ticket._leased:  # its rpm slot stays taken, as in memory
            if held.limit != RPM:
                held.used -= amount

    def usage(self, account_id: str, key_id: str | None = None) -> Usage | None:
        """What an account (or one of its limited keys) has counted: settled plus in flight; None if not held."""
        account = self._accounts.get(account_id)
        counters = account if account is None or key_id is None else account.keys.get(key_id)
        return None if counters is None else counters.usage()

    def held_accounts(self) -> frozenset[str]:
        """Ids of the accounts the limiter holds counters for (the memory bound: no other ids are kept)."""
        return frozenset(self._accounts)


def _needs(
    account_id: str,
    account: _Account,
    key_id: str | None,
    key: _Counters | None,
    kind: UnitKind,
    base: int,
    cost: Fraction,
    day: date,
    period: str,
    count_rate: bool,
    now_s: float | None,
) -> list[Need]:
    """What a call takes from leased blocks: per scope its rpm slot, its IU against a daily quota or a grant, and
    its estimated cost against a budget."""
    scopes: list[tuple[str, _Counters]] = [] if key is None else [(f"key:{key_id}", key)]
    scopes.append((f"account:{account_id}", account))
    needs: list[Need] = []
    for scope, counters in scopes:
        if count_rate and counters.rpm is not None:
            ensure(now_s is not None, "a leased rpm limit needs the wall-clock time (now_s)")
            needs.append(Need(scope, RPM, minute_window(now_s or 0), Fraction(counters.rpm), Fraction(1), True, day))
        cap_base = counters.day_cap_base.get(kind)
        if cap_base is not None and base:
            needs.append(Need(scope, quota_limit(kind), day.isoformat(), Fraction(cap_base), Fraction(base), True, day))
        if counters.budget is not None and cost:
            needs.append(Need(scope, BUDGET, period, counters.budget, cost, False, day, account.currency))
    if account.grant_cap_base is not None and base:
        cap = Fraction(account.grant_cap_base.get(kind, 0))
        needs.append(Need(scopes[-1][0], grant_limit(kind), period, cap, Fraction(base), True, day))
    return needs


def _lease_refusal(need: Need, account: _Account, kind: UnitKind, now_s: float | None) -> RateLimited | QuotaExceeded:
    """The refusal of a call whose leased block could not cover it: the limit is used up across the replicas."""
    scope: Scope = "key" if need.scope.startswith("key:") else "account"
    across = "all of it is used or held by the gateways"
    if need.limit == RPM:
        wait_s = 60.0 - (now_s or 0) % 60
        exc = RateLimited("rate limit reached", scope=scope, allowed=int(need.cap), retry_after_s=wait_s)
        exc.message = (
            f"rate limit reached: {_whose(scope)} allows {int(need.cap)} requests per minute (rpm); {across} this "
            f"minute; retry in {exc.retry_after_whole_s} s"
        )
        exc.args = (exc.message,)
        return exc
    if need.limit == BUDGET:
        allowed = exact_text(need.cap)
        return QuotaExceeded(
            f"monthly budget reached: {_whose(scope)} has a budget of {allowed} {account.currency} per month "
            f"(budget); {across}; raise the budget or wait for the next month",
            limit="budget",
            scope=scope,
            currency=account.currency,
            allowed=allowed,
            used=allowed,
        )
    allowed = exact_text(kind.iu(int(need.cap)))
    if need.limit.startswith("grant:"):
        return QuotaExceeded(
            f"free plan limit reached: your plan grants {allowed} IU of {kind} per month (grant); {across}; "
            "upgrade the plan or wait for the next month",
            limit="grant",
            scope="account",
            unit_kind=str(kind),
            allowed=allowed,
            used=allowed,
        )
    return QuotaExceeded(
        f"daily quota reached: {_whose(scope)} allows {allowed} IU of {kind} per day (iu_per_day); {across}; "
        "the quota resets at 00:00 UTC",
        limit="iu_per_day",
        scope=scope,
        unit_kind=str(kind),
        allowed=allowed,
        used=allowed,
    )


def _whose(scope: Scope) -> str:
    return "this API key" if scope == "key" else "this account"


def _check_rate(window: deque[float], rpm: int, scope: Scope, now: float) -> None:
    horizon = now - WINDOW_S
    while window and window[0] <= horizon:
        window.popleft()
    if len(window) < rpm:
        return
    exc = RateLimited("rate limit reached", scope=scope, allowed=rpm, retry_after_s=window[0] + WINDOW_S - now)
    exc.message = (  # written once the error has rounded its wait, so the text and Retry-After agree
        f"rate limit reached: {_whose(scope)} allows {rpm} requests per minute (rpm); "
        f"retry in {exc.retry_after_whole_s} s"
    )
    exc.args = (exc.message,)
    raise exc


def _check_quotas(counters: _Counters, scope: Scope, kind: UnitKind, base: int, cost: Fraction, currency: str) -> None:
    cap_base = counters.day_cap_base.get(kind)
    if cap_base is not None:
        used_base = counters.today.base.get(kind, 0)
        if used_base + base > cap_base:
            allowed, used = exact_text(Fraction(counters.limits.iu_per_day[kind])), exact_text(kind.iu(used_base))
            raise QuotaExceeded(
                f"daily quota reached: {_whose(scope)} allows {allowed} IU of {kind} per day (iu_per_day); "
                f"{used} used today and this call needs {exact_text(kind.iu(base))}; the quota resets at 00:00 UTC",
                limit="iu_per_day",
                scope=scope,
                unit_kind=str(kind),
                allowed=allowed,
                used=used,
            )
    budget = counters.budget
    if budget is not None and cost and counters.month.spend + cost > budget:  # a free call spends nothing
        allowed = format(counters.limits.budget, "f")
        spent = str(round_minor(counters.month.spend, currency))
        raise QuotaExceeded(
            f"monthly budget reached: {_whose(scope)} has a budget of {allowed} {currency} per month (budget); "
            f"{spent} {currency} spent this month and this call would cost {_money(cost, currency)}; "
            "raise the budget or wait for the next month",
            limit="budget",
            scope=scope,
            currency=currency,
            allowed=allowed,
            used=spent,
        )


def _check_grant(account: _Account, caps_base: dict[UnitKind, int], kind: UnitKind, base: int) -> None:
    used_base = account.month.base.get(kind, 0)
    if used_base + base <= caps_base.get(kind, 0):
        return
    granted = Fraction(account.policy.grant.get(kind, 0)) if account.policy is not None else _ZERO
    used = exact_text(kind.iu(used_base))
    if kind not in caps_base:
        detail = f"your plan grants no IU of {kind} (a grant of 0 per month)"
    else:
        detail = (
            f"your plan grants {exact_text(granted)} IU of {kind} per month (grant); {used} used this month "
            f"and this call needs {exact_text(kind.iu(base))}"
        )
    raise QuotaExceeded(
        f"free plan limit reached: {detail}; upgrade the plan or wait for the next month",
        limit="grant",
        scope="account",
        unit_kind=str(kind),
        allowed=exact_text(granted),
        used=used,
    )


def _money(amount: Fraction, currency: str) -> str:
    rounded = round_minor(amount, currency)
    if rounded == 0 and amount > 0:
        return f"less than {Decimal(1).scaleb(-minor_units(currency))} {currency}"
    return f"{rounded} {currency}"
