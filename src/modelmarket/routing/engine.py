"""The routing engine: which catalogue references one call to a route tries, in which order. Pure: no I/O, the
clock (``monotonic``), the random source and the price lookup are injected.

Per route and target (``(route name, reference)``) the router keeps what it measured: calls in flight, an
exponentially weighted moving average of the latency of successful calls (``LATENCY_ALPHA``) with its sample
count, and a circuit breaker. ``failures`` consecutive failed calls open a target's circuit for ``cooldown_s``;
after the cooldown the circuit is half-open and one trial call is let through (the first ``started`` after the
cooldown claims it): a success closes the circuit, a failure opens it for another cooldown. A route with a single
target cools down too: while every target and fallback is open, ``plan`` raises ``RouteUnavailable``.

Not thread-safe: the gateway calls it from its event loop only. Every ``started`` must be matched by one
``finished`` (in a ``finally``; ``ok=None`` for a call abandoned before it had an outcome), or the in-flight count
of the target stays high.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal, Protocol

from modelmarket.core.errors import NotFound, NotReady, ensure
from modelmarket.routing.spec import RouteSpec, Target

LATENCY_ALPHA = 0.3
"""Weight of the newest sample in a target's latency average: ``avg = alpha * sample + (1 - alpha) * avg``. With
0.3 a sample's influence halves in about two calls, so a slowed target is noticed within a handful of calls."""

BreakerState = Literal["closed", "open", "half-open"]
Role = Literal["target", "fallback"]
PriceOf = Callable[[str], Decimal | None]


class RandomSource(Protocol):
    def random(self) -> float:
        """A float in [0, 1)."""
        ...


class RouteUnavailable(NotReady):
    """Every target and fallback of a route has an open circuit; nothing was called."""

    def __init__(self, message: str, *, route: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.route = route
        self.retry_after_s = retry_after_s
        """Seconds until the first cooldown ends (0 when a trial call is already in flight)."""


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routes by name: what the gateway resolves a model name against before the catalogue."""

    routes: Mapping[str, RouteSpec]

    @classmethod
    def from_routes(cls, routes: Iterable[RouteSpec]) -> RouteTable:
        by_name: dict[str, RouteSpec] = {}
        for route in routes:
            ensure(route.name not in by_name, f"route {route.name!r} is in the table twice")
            by_name[route.name] = route
        return cls(MappingProxyType(dict(sorted(by_name.items()))))

    def get(self, name: str) -> RouteSpec | None:
        return self.routes.get(name)

    def names(self) -> list[str]:
        return list(self.routes)

    def __contains__(self, name: object) -> bool:
        return name in self.routes

    def __iter__(self) -> Iterator[RouteSpec]:
        return iter(self.routes.values())

    def __len__(self) -> int:
        return len(self.routes)


class _TargetState:
    """What the router measured of one target of one route (mutable; the router's own)."""

    __slots__ = ("failures", "in_flight", "latency_s", "open_until", "opened", "samples", "trial")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency_s: float | None = None
        self.samples = 0
        self.failures = 0
        """Consecutive failed calls."""
        self.opened = False
        self.open_until = 0.0
        self.trial = False
        """A half-open circuit's one trial call is in flight."""

    def state(self, now: float) -> BreakerState:
        if not self.opened:
            return "closed"
        return "open" if now < self.open_until else "half-open"

    def available(self, now: float) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half-open" and not self.trial)


@dataclass(frozen=True, slots=True)
class TargetStatus:
    ref: str
    role: Role
    weight: int | None
    """Weighted routes' targets only."""
    state: BreakerState
    open_for_s: float
    """Seconds until an open circuit turns half-open (0 otherwise)."""
    trial_in_flight: bool
    in_flight: int
    latency_s: float | None
    """The moving average of successful calls' latency; None before the first."""
    samples: int
    failures: int
    """Consecutive failed calls."""

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "role": self.role,
            "weight": self.weight,
            "state": self.state,
            "open_for_s": round(self.open_for_s, 3),
            "trial_in_flight": self.trial_in_flight,
            "in_flight": self.in_flight,
            "latency_s": None if self.latency_s is None else round(self.latency_s, 6),
            "samples": self.samples,
            "failures": self.failures,
        }


@dataclass(frozen=True, slots=True)
class RouteStatus:
    name: str
    strategy: str
    targets: tuple[TargetStatus, ...]
    """The targets in declared order, then the fallbacks."""

    def to_json(self) -> dict[str, Any]:
        return {"route": self.name, "strategy": self.strategy, "targets": [t.to_json() for t in self.targets]}


def _sticky_point(route: str, key: str, pick: int, total: int) -> int:
    """A point in [0, total) from a hash of (route, key, pick): uniform over keys, the same for one key."""
    digest = hashlib.blake2b(f"{route}\0{key}\0{pick}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") * total) >> 64


def _random_point(rng: RandomSource, total: int) -> int:
    return min(int(rng.random() * total), total - 1)


def weighted_order(route: RouteSpec, sticky_key: str | None, rng: RandomSource) -> list[Target]:
    """Every target, drawn one after another by weight without replacement: the first is the chosen one (its
    chance is weight / total), the rest are the order to fail over in. Sticky with a key: each draw is a hash of
    (route, key, draw) onto the cumulative weights, so a key gets the same order while the weights are unchanged;
    otherwise random per call."""
    remaining = list(route.targets)
    order: list[Target] = []
    pick = 0
    while len(remaining) > 1:
        total = sum(t.weight for t in remaining)
        if route.sticky and sticky_key is not None:
            point = _sticky_point(route.name, sticky_key, pick, total)
        else:
            point = _random_point(rng, total)
        cumulative = 0
        for index, target in enumerate(remaining):
            cumulative += target.weight
            if point < cumulative:
                order.append(remaining.pop(index))
                break
        pick += 1
    return order + remaining


class Router:
    """Plans the targets of each call to a route and keeps per-target measurements and circuit breakers."""

    def __init__(
        self,
        table: RouteTable | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: RandomSource | None = None,
        price_of: PriceOf | None = None,
    ) -> None:
        self._monotonic = monotonic
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._price_of = price_of
        self._table = RouteTable.from_routes(())
        self._states: dict[tuple[str, str], _TargetState] = {}
        self.update(table if table is not None else self._table)

    @property
    def table(self) -> RouteTable:
        return self._table

    def route(self, name: str) -> RouteSpec:
        """The route's data (retries, backoff_s(attempt), timeout_s, ...). NotFound when there is none."""
        spec = self._table.get(name)
        if spec is None:
            raise NotFound(f"no route named {name!r}")
        return spec

    def update(self, table: RouteTable) -> None:
        """Swap in new routes; the measurements and breakers of (route, target) pairs that still exist are kept."""
        states: dict[tuple[str, str], _TargetState] = {}
        for spec in table:
            for ref in spec.refs:
                states[(spec.name, ref)] = self._states.get((spec.name, ref)) or _TargetState()
        self._table, self._states = table, states

    # -- planning ----------------------------------------------------------------------------------------------

    def plan(self, route_name: str, sticky_key: str | None = None) -> list[str]:
        """The references to try for one call, in order: the chosen target, the other targets in the strategy's
        order, then the fallbacks in declared order; targets with an open circuit left out. ``sticky_key``: what
        identifies the caller for a sticky weighted route (the API key's id, never the key itself).

        Raises ``NotFound`` for an unknown route and ``RouteUnavailable`` when every circuit is open."""
        spec = self.route(route_name)
        now = self._monotonic()
        ordered = [*self._order(spec, sticky_key), *spec.fallbacks]
        refs = [ref for ref in ordered if self._states[(spec.name, ref)].available(now)]
        if not refs:
            raise self._unavailable(spec, now)
        return refs

    def _order(self, spec: RouteSpec, sticky_key: str | None) -> list[str]:
        if spec.strategy == "weighted":
            return [t.model for t in weighted_order(spec, sticky_key, self._rng)]
        refs = [t.model for t in spec.targets]
        if spec.strategy == "lowest-latency":  # unmeasured first (so each gets measured), then fastest; ties: order
            states = [self._states[(spec.name, ref)] for ref in refs]
            by_latency = sorted(range(len(refs)), key=lambda i: (states[i].samples > 0, states[i].latency_s or 0.0, i))
            return [refs[i] for i in by_latency]
        if spec.strategy == "lowest-price":  # cheapest first, an unknown price last; ties: declared order
            prices = [self._price_of(ref) if self._price_of else None for ref in refs]
            by_price = sorted(range(len(refs)), key=lambda i: (prices[i] is None, prices[i] or Decimal(0), i))
            return [refs[i] for i in by_price]
        ensure(spec.strategy == "least-busy", f"unknown strategy {spec.strategy!r}")
        busy = [self._states[(spec.name, ref)].in_flight for ref in refs]
        return [refs[i] for i in sorted(range(len(refs)), key=lambda i: (busy[i], i))]

    def _unavailable(self, spec: RouteSpec, now: float) -> RouteUnavailable:
        states = [self._states[(spec.name, ref)] for ref in spec.refs]
        waits = [s.open_until - now for s in states if s.state(now) == "open"]
        if waits:
            wait = min(waits)
            when = f"the first cooldown ends in {wait:.1f} s"
        else:
            wait = 0.0
            when = "a trial call is in flight to each of them"
        return RouteUnavailable(
            f"route {spec.name!r} is unavailable: every target and fallback failed repeatedly and its circuit is "
            f"open; {when}",
            route=spec.name,
            retry_after_s=max(wait, 0.0),
        )

    # -- measurements ------------------------------------------------------------------------------------------

    def available(self, route_name: str, ref: str) -> bool:
        """Whether ``ref``'s circuit on the route lets a call through now (closed, or half-open with no trial in
        flight); a retry asks before it goes."""
        state = self._states.get((route_name, ref))
        return state is not None and state.available(self._monotonic())

    def started(self, route_name: str, ref: str) -> None:
        """A call to ``ref`` for ``route_name`` begins (after the cooldown, the first one is the trial call)."""
        state = self._states.get((route_name, ref))
        if state is None:  # the route changed since the plan: nothing to count
            return
        state.in_flight += 1
        if state.state(self._monotonic()) == "half-open" and not state.trial:
            state.trial = True

    def finished(self, route_name: str, ref: str, ok: bool | None, latency_s: float | None = None) -> None:
        """The call ended: ``ok`` True (latency recorded), False (a failure: counts towards opening the circuit;
        a failed trial re-opens it), or None (abandoned, e.g. the client went away: neither)."""
        state = self._states.get((route_name, ref))
        spec = self._table.get(route_name)
        if state is None or spec is None:
            return
        state.in_flight = max(0, state.in_flight - 1)
        now = self._monotonic()
        if ok is None:
            state.trial = False
            return
        if ok:
            if latency_s is not None and math.isfinite(latency_s) and latency_s >= 0:
                average = state.latency_s
                state.latency_s = (
                    latency_s if average is None else LATENCY_ALPHA * latency_s + (1 - LATENCY_ALPHA) * average
                )
                state.samples += 1
            state.failures = 0
            if state.opened and now >= state.open_until:  # the half-open circuit's call succeeded: close it
                state.opened = state.trial = False
            return
        state.failures += 1
        breaker = spec.circuit_breaker
        if state.opened:
            if now >= state.open_until:  # the trial failed: another cooldown
                state.open_until, state.trial = now + breaker.cooldown_s, False
            return
        if state.failures >= breaker.failures:
            state.opened, state.open_until, state.trial = True, now + breaker.cooldown_s, False

    # -- status ------------------------------------------------------------------------------------------------

    def snapshot(self) -> list[RouteStatus]:
        """Per route (by name) and target: weight, breaker state (seconds left when open), in flight, latency,
        consecutive failures."""
        now = self._monotonic()
        out = []
        for spec in self._table:
            weighted = spec.strategy == "weighted"
            rows = [(t.model, "target", t.weight if weighted else None) for t in spec.targets]
            rows += [(ref, "fallback", None) for ref in spec.fallbacks]
            statuses = []
            for ref, role, weight in rows:
                s = self._states[(spec.name, ref)]
                state = s.state(now)
                statuses.append(
                    TargetStatus(
                        ref=ref,
                        role="target" if role == "target" else "fallback",
                        weight=weight,
                        state=state,
                        open_for_s=max(0.0, s.open_until - now) if state == "open" else 0.0,
                        trial_in_flight=s.trial,
                        in_flight=s.in_flight,
                        latency_s=s.latency_s,
                        samples=s.samples,
                        failures=s.failures,
                    )
                )
            out.append(RouteStatus(spec.name, spec.strategy, tuple(statuses)))
        return out
