"""How one call is tried: directly on a model, or over a route's attempts (``routing.Router``).

A route's targets and fallbacks come in the order the router planned; each is tried ``1 + retries`` times with
backoff, bounded by the route's timeout; the router hears every outcome, which feeds its circuit breakers and
latency figures. A failure that is the target's (``RETRIABLE``: a model failure, an unreachable or busy backend,
a timeout) moves on to the next attempt; any other (a bad request, a refused limit) ends the call at once. Used
by the OIP data plane and by the OpenAI plane alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from modelmarket.core.errors import DomainError, NotReady
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.runtime.pool import RunnerUnavailable

T = TypeVar("T")


class ModelFailed(DomainError):
    """The runner (or the provider's server) answered that the model itself failed on this input (its 5xx)."""


class UpstreamBusy(DomainError):
    """The backend answered 429 (too many requests) and no other target could take the call."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


RETRIABLE = (ModelFailed, RunnerUnavailable, UpstreamBusy, NotReady, TimeoutError)
"""Failures that move a call on to its next attempt (and count against the target's circuit breaker)."""


class RouterLike(Protocol):
    """The routing engine as the planes use it (``routing.Router``)."""

    @property
    def table(self) -> Any: ...

    def plan(self, route_name: str, sticky_key: str | None = None) -> list[str]: ...

    def route(self, name: str) -> Any: ...

    def started(self, route_name: str, ref: str) -> None: ...

    def finished(self, route_name: str, ref: str, ok: bool | None, latency_s: float | None = None) -> None: ...


@dataclass(slots=True)
class Attempt:
    version: VersionRecord
    route: str
    """What ``x-modelmarket-route`` says: ``model@version``, or ``route->model@version``."""
    ref: str | None = None
    """The reference tried (a route target's, for the breaker)."""


def is_route(router: RouterLike | None, name: str) -> bool:
    return router is not None and name in router.table


async def run_attempts(
    router: RouterLike | None,
    name: str,
    key_id: str | None,
    resolve: Callable[[str], Awaitable[VersionRecord]],
    call: Callable[[Attempt], Awaitable[T]],
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Serve a call to ``name``: a route's attempts when ``name`` is a route, else one attempt of ``name``."""
    spec = router.route(name) if router is not None and is_route(router, name) else None
    refs = router.plan(name, key_id) if spec is not None and router is not None else [name]
    last: BaseException | None = None
    for ref in refs:
        version = await resolve(ref)
        label = f"{version.model_name}@{version.version}"
        attempt = Attempt(version, f"{name}->{label}" if spec is not None else label, ref)
        if spec is None or router is None:
            return await call(attempt)
        for n in range(1 + spec.retries.attempts):
            if n:
                await sleep(spec.backoff_s(n))
            started = time.perf_counter()
            router.started(name, ref)
            outcome: bool | None = None
            try:
                async with asyncio.timeout(float(spec.timeout_s)):
                    result = await call(attempt)
                outcome = True
                return result
            except RETRIABLE as exc:
                outcome, last = False, exc
            finally:
                router.finished(name, ref, outcome, time.perf_counter() - started if outcome else None)
    assert last is not None
    if isinstance(last, TimeoutError):
        raise ModelFailed(f"model {name!r}: no target answered within the route's timeout") from None
    raise last
