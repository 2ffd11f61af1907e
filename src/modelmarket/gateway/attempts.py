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

from modelmarket.core.errors import DomainError, InvalidInput, NotFound, NotReady
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

    def available(self, route_name: str, ref: str) -> bool: ...

    def started(self, route_name: str, ref: str) -> None: ...

    def finished(self, route_name: str, ref: str, ok: bool | None, latency_s: float | None = None) -> None: ...


@dataclass(slots=True)
class Attempt:
    version: VersionRecord
    route: str
    """What ``x-modelmarket-route`` says: ``model@version``, or ``route->model@version``."""
    ref: str | None = None
    """The reference tried (a route target's, for the breaker)."""
    deadline: float | None = None
    """``loop.time()`` by which the backend must have answered (a route's ``timeout_s``); None: no route bound.
    It bounds the call to the backend only, never the commit of its usage event (see ``backend_bound``)."""
    first: bool = True
    """The call's first attempt: only it takes a requests-per-minute slot (one call, one slot)."""

    def backend_bound(self) -> asyncio.Timeout:
        """The context that bounds waiting for the backend by the route's timeout (``TimeoutError``)."""
        return asyncio.timeout_at(self.deadline)


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
    """Serve a call to ``name``: a route's attempts when ``name`` is a route, else one attempt of ``name``.

    The route's timeout is the attempt's ``deadline``, which ``call`` applies to its backend request only: once a
    usage event is being committed the call is answered (or fails) as it is, never tried again, so a call is
    never billed twice."""
    spec = router.route(name) if router is not None and is_route(router, name) else None
    if spec is None or router is None:
        version = await resolve(name)
        return await call(Attempt(version, f"{version.model_name}@{version.version}", name))
    loop = asyncio.get_running_loop()
    last: BaseException | None = None
    first = True
    for ref in router.plan(name, key_id):
        try:
            version = await resolve(ref)
        except (NotFound, InvalidInput) as exc:  # a target that is gone or cannot serve this: the next one
            last = exc
            continue
        label = f"{name}->{version.model_name}@{version.version}"
        for n in range(1 + spec.retries.attempts):
            if n:
                if not router.available(name, ref):  # its circuit opened: no retry into a target that is down
                    break
                await sleep(spec.backoff_s(n))
            attempt = Attempt(version, label, ref, loop.time() + float(spec.timeout_s), first)
            first = False
            started = time.perf_counter()
            router.started(name, ref)
            outcome: bool | None = None
            try:
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
