"""Leases of allowance: how one limit holds across gateway replicas (``docs/scale-out.md``, "Limits across
replicas").

A replica admits calls from a block of a limit's allowance it leased from the store, with no store round trip per
call, and leases the next block when its block runs low. A grant is one short write transaction under
``Lock.LEASES`` (keyed by scope), so two replicas leasing at once are checked one after the other. What a window has
consumed is counted two ways, and the larger is believed (both never count less than what was really used and held,
except for the holes each names):

- **by leases:** the baseline (usage stored before the window's first lease) plus, per replica, what it holds
  (``max(granted, used)``) while its lease is live, or only what it reported used once its lease expired (a dead
  replica: its unused allowance comes back; calls it admitted after its last report are missed here);
- **by stored usage** (account limits only: usage is stored per account, not per key): the usage metered so far
  plus the unused part of every live lease (calls not yet metered are missed here).

The pure half (``room``, ``block``) is tested without a database; ``LeaseService`` runs it in a transaction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from fractions import Fraction

from modelmarket.billing.enforcement import used as stored_used
from modelmarket.billing.ports import LeasesUnitOfWork, StoredLease
from modelmarket.core.errors import ensure
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.metering.units import UnitKind

__all__ = [
    "BUDGET",
    "RPM",
    "LeaseAsk",
    "LeaseService",
    "block",
    "grant_limit",
    "quota_limit",
    "room",
]

BUDGET = "budget"
RPM = "rpm"
_ZERO = Fraction(0)


def quota_limit(kind: UnitKind) -> str:
    return f"iu_per_day:{kind}"


def grant_limit(kind: UnitKind) -> str:
    return f"grant:{kind}"


def minute_window(unix_s: float) -> str:
    """The fixed wall-clock minute an rpm lease counts in (zero-padded: windows sort in time order)."""
    return f"m{int(unix_s // 60):014d}"


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """A replica's request: ``want`` more of ``limit`` (capped at ``cap``) in ``window``, having used ``used``."""

    scope: str
    limit: str
    window: str
    cap: Fraction
    want: Fraction
    used: Fraction
    day: date
    """The day the call was admitted on: the stored usage of its day and period is read for account limits."""
    currency: str = ""
    """The plan currency (a budget's stored spend is summed in it)."""


def live(lease: StoredLease, now_ms: int) -> bool:
    return lease.expires_ms > now_ms


def room(cap: Fraction, rows: Sequence[StoredLease], stored: Fraction | None, now_ms: int) -> Fraction:
    """How much of ``cap`` no lease holds and no usage consumed: what may be granted now (>= 0).

    ``rows``: every row of the window, the asking replica's included as it will be written (live). ``stored``:
    the usage stored for the window, or None where usage is not stored (key limits, rpm)."""
    by_leases = sum((max(r.granted, r.used) if live(r, now_ms) else r.used for r in rows), _ZERO)
    consumed = by_leases
    if stored is not None:
        unused = sum((max(_ZERO, r.granted - r.used) for r in rows if live(r, now_ms)), _ZERO)
        consumed = max(by_leases, stored + unused)
    return max(_ZERO, cap - consumed)


def block(cap: Fraction, fraction: Fraction, need: Fraction, whole: bool) -> Fraction:
    """The size of the next lease: ``fraction`` of the limit (rounded up to a whole unit for counted limits), and
    never less than the call that asks for it."""
    size = cap * fraction
    if whole:
        size = Fraction(max(1, math.ceil(size)))
    return max(size, need)


class LeaseService:
    """Grants, renews and takes back leases in the store; every method is one or more short write transactions."""

    def __init__(self, store: UnitOfWorkFactory[LeasesUnitOfWork], ttl_s: float) -> None:
        ensure(ttl_s > 0, f"a lease TTL must be > 0 s: {ttl_s}")
        self.store = store
        self.ttl_ms = int(ttl_s * 1000)

    def grant(self, replica: str, ask: LeaseAsk, now_ms: int) -> Fraction:
        """Lease up to ``ask.want`` more to ``replica``; returns everything it now holds in the window (granted in
        all). A lease of the replica that expired was forfeited: it restarts from what it reports used."""
        ensure(ask.want >= 0 and ask.used >= 0, f"a lease ask is not negative: {ask}")
        with self.store.write(Lock.LEASES, ask.scope) as uow:
            repo = uow.leases
            repo.drop_before(ask.scope, ask.limit, ask.window)
            rows = repo.leases(ask.scope, ask.limit, ask.window)
            stored = _stored(uow, ask)
            if not any(r.replica == "" for r in rows):
                baseline = stored or _ZERO
                base_row = StoredLease(ask.scope, ask.limit, ask.window, "", baseline, baseline, 0)
                repo.put_lease(base_row)
                rows.append(base_row)
            mine = next((r for r in rows if r.replica == replica), None)
            held = mine.granted if mine is not None and live(mine, now_ms) else ask.used
            expires = now_ms + self.ttl_ms
            me = StoredLease(ask.scope, ask.limit, ask.window, replica, max(held, ask.used), ask.used, expires)
            others = [r for r in rows if r.replica != replica]
            give = min(ask.want, room(ask.cap, [*others, me], stored, now_ms))
            me = replace(me, granted=me.granted + give)
            repo.put_lease(me)
            return me.granted

    def renew(self, replica: str, ask: LeaseAsk, now_ms: int) -> Fraction:
        """Report what is used and extend the lease by the TTL (a heartbeat): ``grant`` of nothing."""
        return self.grant(replica, replace(ask, want=_ZERO), now_ms)

    def give_back(self, replica: str, asks: Sequence[LeaseAsk], now_ms: int) -> None:
        """A replica stopping returns what it did not use: each of its leases keeps only what it used."""
        for ask in asks:
            with self.store.write(Lock.LEASES, ask.scope) as uow:
                mine = [r for r in uow.leases.leases(ask.scope, ask.limit, ask.window) if r.replica == replica]
                for row in mine:
                    uow.leases.put_lease(replace(row, granted=ask.used, used=ask.used, expires_ms=0))

    def held(self, replica: str) -> list[StoredLease]:
        with self.store.read() as uow:
            return uow.leases.held(replica)


def _stored(uow: LeasesUnitOfWork, ask: LeaseAsk) -> Fraction | None:
    """The usage stored for an account limit's window, in the limit's unit; None for keys and rpm."""
    if not ask.scope.startswith("account:") or ask.limit == RPM:
        return None
    account_id = ask.scope.removeprefix("account:")
    found = stored_used(uow, [account_id], ask.day, {account_id: ask.currency} if ask.currency else None)[account_id]
    if ask.limit == BUDGET:
        return found.spend_period
    name, _, kind_text = ask.limit.partition(":")
    kind = UnitKind(kind_text)
    amounts = found.iu_today if name == "iu_per_day" else found.iu_period
    return Fraction(amounts.get(kind, _ZERO)) * kind.divisor


Grant = Callable[[str, LeaseAsk, int], Fraction]
"""``LeaseService.grant``'s shape: what a replica calls to lease."""
