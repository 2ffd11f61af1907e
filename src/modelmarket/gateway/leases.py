"""A replica's side of leased limits: the blocks of allowance it holds, taken from in memory on every call.

``LeaseBook.take`` runs inside ``Limiter.admit`` (on the event-loop thread, never awaiting): each limit the call
counts against takes its amount from the replica's block of that limit's window. A block below half its size is
refilled in the background (``spawn``: a lease transaction in a worker thread); a block too small for the call
is refilled at once, synchronously (the one store round trip on the hot path, only when the prefetch fell behind
or the allowance is nearly gone). A grant that gave nothing (the limit is used up, or held by other replicas) is
not asked again for ``DRY_RETRY_S``: calls meanwhile are refused from memory. ``heartbeat`` reports what each
block used and extends its lease; blocks untouched since the last heartbeat are given back. ``give_back`` (at
shutdown) returns every unused allowance; a replica that dies instead leaves it until its leases expire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction

from modelmarket.billing.leases import Grant, LeaseAsk, block

log = logging.getLogger(__name__)

DRY_RETRY_S = 1.0
"""After a grant that gave nothing, how long a replica refuses from memory before it asks the store again."""

Spawn = Callable[[Callable[[], Fraction], Callable[[Fraction | None], None]], None]
"""Run ``work`` off the hot path and hand its result (None if it failed) to ``done`` on the event-loop thread."""
_ZERO = Fraction(0)


@dataclass(frozen=True, slots=True)
class Need:
    """What one call takes from one limit: ``amount`` of ``limit`` (capped at ``cap``) in ``window``."""

    scope: str
    limit: str
    window: str
    cap: Fraction
    amount: Fraction
    whole: bool
    """Counted in whole units (base units, requests): blocks are rounded up to a whole number."""
    day: date
    currency: str = ""


@dataclass(eq=False, slots=True)
class Held:
    """The replica's lease of one limit in one window, as it knows it."""

    scope: str
    limit: str
    window: str
    cap: Fraction
    whole: bool
    day: date
    currency: str
    granted: Fraction = _ZERO
    """Everything the store granted this replica in the window (its last answer)."""
    used: Fraction = _ZERO
    """Taken by admitted calls (in flight included), net of cancels and settle corrections."""
    pending: bool = False
    touched: bool = True
    dry_until_ms: int = 0
    sent: int = 0
    applied: int = 0
    """Requests sent and the newest one whose answer was applied (an older answer never overwrites a newer)."""
    key: tuple[str, str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.scope, self.limit, self.window)

    @property
    def left(self) -> Fraction:
        return self.granted - self.used


class LeaseBook:
    """The blocks one replica holds; see the module docstring."""

    def __init__(
        self,
        replica: str,
        grant: Grant,
        fraction: Fraction,
        now_ms: Callable[[], int],
        spawn: Spawn | None = None,
    ) -> None:
        self.replica = replica
        self._grant = grant
        self.fraction = fraction
        self._now_ms = now_ms
        self.spawn = spawn
        self._held: dict[tuple[str, str, str], Held] = {}
        self._newest: dict[tuple[str, str], str] = {}

    def take(self, needs: Sequence[Need]) -> tuple[tuple[tuple[Held, Fraction], ...], Need | None]:
        """Take every need from its block, or none of them: returns what was taken, or the first need that the
        replica's block could not cover even after asking the store."""
        helds = [self._hold(need) for need in needs]
        for held, need in zip(helds, needs, strict=True):
            held.touched = True
            if held.used + need.amount > held.granted:
                self._grant_now(held, need.amount)
                if held.used + need.amount > held.granted:
                    return (), need
        taken = tuple((held, need.amount) for held, need in zip(helds, needs, strict=True))
        for held, amount in taken:
            held.used += amount
        self._prefetch(helds)
        return taken, None

    def held(self) -> list[Held]:
        return list(self._held.values())

    def _hold(self, need: Need) -> Held:
        held = self._held.get((need.scope, need.limit, need.window))
        if held is None:
            held = Held(need.scope, need.limit, need.window, need.cap, need.whole, need.day, need.currency)
            newest = self._newest.get((need.scope, need.limit))
            if newest is not None and newest < need.window:  # a new day, period or minute: the old one is over
                self._held.pop((need.scope, need.limit, newest), None)
            if newest is None or newest <= need.window:
                self._newest[(need.scope, need.limit)] = need.window
            self._held[held.key] = held
        held.cap, held.currency = need.cap, need.currency  # a policy reload may move a limit
        return held

    def _block(self, held: Held, need: Fraction) -> Fraction:
        return block(held.cap, self.fraction, need, held.whole)

    def ask(self, held: Held, want: Fraction) -> tuple[int, LeaseAsk]:
        held.sent += 1
        ask = LeaseAsk(held.scope, held.limit, held.window, held.cap, want, held.used, held.day, held.currency)
        return held.sent, ask

    def apply(self, held: Held, sent: int, granted: Fraction | None, before: Fraction | None = None) -> None:
        """The store's answer to request ``sent``: what the replica holds now (ignored if a newer one came).
        ``before``: what it held when it asked for more (a grant that added nothing makes the block dry)."""
        if sent > held.applied and granted is not None:
            held.applied = sent
            if before is not None and granted <= before:
                held.dry_until_ms = self._now_ms() + int(DRY_RETRY_S * 1000)
            held.granted = granted

    def _grant_now(self, held: Held, amount: Fraction) -> None:
        now_ms = self._now_ms()
        if now_ms < held.dry_until_ms:
            return
        before = held.granted
        sent, ask = self.ask(held, self._block(held, held.used + amount - held.granted))
        self.apply(held, sent, self._grant(self.replica, ask, now_ms), before)

    def _prefetch(self, helds: Sequence[Held]) -> None:
        spawn = self.spawn
        if spawn is None:
            return
        for held in helds:
            size = self._block(held, _ZERO)
            if held.pending or held.left * 2 >= size or self._now_ms() < held.dry_until_ms:
                continue
            held.pending = True
            sent, ask = self.ask(held, size)
            spawn(self._work(ask), self._done(held, sent, held.granted))

    def _work(self, ask: LeaseAsk) -> Callable[[], Fraction]:
        return lambda: self._grant(self.replica, ask, self._now_ms())

    def _done(self, held: Held, sent: int, before: Fraction) -> Callable[[Fraction | None], None]:
        def done(granted: Fraction | None) -> None:
            held.pending = False
            self.apply(held, sent, granted, before)

        return done

    def idle(self) -> list[Held]:
        """Blocks no call took from since the last call of ``idle`` (to give back); the others are marked."""
        idle = [held for held in self._held.values() if not held.touched and not held.pending]
        for held in self._held.values():
            held.touched = False
        return idle

    def forget(self, held: Held) -> None:
        if self._held.get(held.key) is held:
            del self._held[held.key]
