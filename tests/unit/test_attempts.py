"""``gateway.attempts.run_attempts`` over the real routing engine: fallbacks on the target's failures only,
retries with backoff, the route's timeout, the circuit breaker hearing every outcome, and the route label."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from modelmarket.core.errors import InvalidInput, NotReady, QuotaExceeded
from modelmarket.gateway.attempts import Attempt, ModelFailed, UpstreamBusy, run_attempts
from modelmarket.routing import Router, RouteTable, RouteUnavailable, parse_routes
from modelmarket.runtime.pool import RunnerUnavailable

ROUTES = """
routes:
  - name: chat
    strategy: weighted
    sticky: false
    targets: [{model: a}]
    fallbacks: [b, c]
    retries: {attempts: 1, backoff_ms: 10}
    timeout_s: 0.2
    circuit_breaker: {failures: 2, cooldown_s: 30}
"""


class Version:
    def __init__(self, ref: str) -> None:
        self.model_name, _, version = ref.partition("@")
        self.version = version or "1.0.0"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _router(clock: Clock) -> Router:
    return Router(RouteTable.from_routes(parse_routes(ROUTES)), monotonic=clock)


async def _resolve(ref: str) -> Any:
    return Version(ref)


def _run(router: Router | None, name: str, behaviour: dict[str, Callable[[], Any]], log: list[str]) -> Any:
    sleeps: list[float] = []

    async def call(attempt: Attempt) -> str:
        log.append(attempt.version.model_name)
        async with attempt.backend_bound():  # as the planes do: the route's timeout bounds the backend only
            result = behaviour.get(attempt.version.model_name, lambda: "ok")()
            if asyncio.iscoroutine(result):
                result = await result
        return str(result) + " via " + attempt.route

    async def sleep(s: float) -> None:
        sleeps.append(s)

    return asyncio.run(run_attempts(router, name, "key_1", _resolve, call, sleep)), sleeps  # type: ignore[arg-type]


def _raise(exc: Exception) -> Callable[[], Any]:
    def go() -> Any:
        raise exc

    return go


@pytest.mark.parametrize(
    "failure",
    [ModelFailed("boom"), RunnerUnavailable("gone"), UpstreamBusy("429"), NotReady("starting")],
    ids=["5xx", "unreachable", "429", "not-ready"],
)
def test_a_target_failure_retries_with_backoff_then_falls_back(failure: Exception) -> None:
    log: list[str] = []
    (answer, sleeps) = _run(_router(Clock()), "chat", {"a": _raise(failure)}, log)
    assert answer == "ok via chat->b@1.0.0"
    assert log == ["a", "a", "b"]  # one retry on a, then the first fallback
    assert sleeps == [0.01]


def test_the_callers_fault_ends_the_call_at_once() -> None:
    for error in (InvalidInput("bad"), QuotaExceeded("budget", limit="budget", scope="account", allowed="1", used="1")):
        log: list[str] = []
        with pytest.raises(type(error)):
            _run(_router(Clock()), "chat", {"a": _raise(error)}, log)
        assert log == ["a"]


def test_a_slow_target_times_out_and_the_next_answers() -> None:
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    log: list[str] = []
    (answer, _) = _run(_router(Clock()), "chat", {"a": slow}, log)
    assert answer == "ok via chat->b@1.0.0"


def test_the_route_timeout_never_cuts_a_call_whose_usage_is_being_committed() -> None:
    """What follows the backend's answer (the usage event's commit) is outside the deadline: a slow commit is
    not a timeout, so the call is not tried again and billed twice."""
    committed: list[str] = []

    async def call(attempt: Attempt) -> str:
        async with attempt.backend_bound():
            await asyncio.sleep(0.15)  # the backend answers within the 0.2 s timeout
        await asyncio.sleep(0.2)  # a slow commit, past the deadline
        committed.append(attempt.version.model_name)
        return "billed once"

    async def sleep(_: float) -> None: ...

    router = _router(Clock())
    assert asyncio.run(run_attempts(router, "chat", None, _resolve, call, sleep)) == "billed once"
    assert committed == ["a"]


def test_only_the_first_attempt_takes_a_rate_slot() -> None:
    firsts: list[bool] = []

    async def call(attempt: Attempt) -> str:
        firsts.append(attempt.first)
        if attempt.version.model_name != "c":
            raise ModelFailed("x")
        return "ok"

    async def sleep(_: float) -> None: ...

    asyncio.run(run_attempts(_router(Clock()), "chat", None, _resolve, call, sleep))
    assert firsts == [True, False, False, False, False]


def test_a_target_that_cannot_be_resolved_moves_on_to_the_next() -> None:
    async def resolve(ref: str) -> Any:
        if ref == "a":
            raise InvalidInput("model 'a' does not serve chat/completions")
        return Version(ref)

    async def call(attempt: Attempt) -> str:
        return attempt.route

    async def sleep(_: float) -> None: ...

    assert asyncio.run(run_attempts(_router(Clock()), "chat", None, resolve, call, sleep)) == "chat->b@1.0.0"


def test_when_every_attempt_fails_the_last_failure_is_raised() -> None:
    log: list[str] = []
    with pytest.raises(UpstreamBusy):
        _run(_router(Clock()), "chat", {m: _raise(UpstreamBusy("busy")) for m in "abc"}, log)
    assert log == ["a", "a", "b", "b", "c", "c"]


def test_the_breaker_opens_after_consecutive_failures_and_cools_down() -> None:
    clock = Clock()
    router = _router(clock)
    log: list[str] = []
    _run(router, "chat", {"a": _raise(ModelFailed("x"))}, log)  # two failures of a: its circuit opens
    log.clear()
    (answer, _) = _run(router, "chat", {}, log)
    assert log == ["b"] and answer == "ok via chat->b@1.0.0"  # a is left out while open
    clock.now += 31
    log.clear()
    (answer, _) = _run(router, "chat", {}, log)
    assert log == ["a"]  # after the cooldown, a trial call goes to a again and closes it


def test_a_route_whose_every_circuit_is_open_is_unavailable() -> None:
    clock = Clock()
    router = _router(clock)
    with pytest.raises(ModelFailed):
        _run(router, "chat", {m: _raise(ModelFailed("x")) for m in "abc"}, [])
    with pytest.raises(RouteUnavailable):
        _run(router, "chat", {}, [])


def test_a_name_that_is_not_a_route_is_one_direct_attempt() -> None:
    log: list[str] = []
    (answer, _) = _run(_router(Clock()), "a@2.0.0", {}, log)
    assert answer == "ok via a@2.0.0" and log == ["a"]
    with pytest.raises(ModelFailed):
        _run(None, "a", {"a": _raise(ModelFailed("x"))}, [])


def test_no_retry_goes_to_a_target_whose_circuit_just_opened() -> None:
    routes = ROUTES.replace("retries: {attempts: 1, backoff_ms: 10}", "retries: {attempts: 3, backoff_ms: 10}")
    routes = routes.replace("failures: 2", "failures: 1")
    router = Router(RouteTable.from_routes(parse_routes(routes)), monotonic=Clock())
    log: list[str] = []
    (answer, _) = _run(router, "chat", {"a": _raise(ModelFailed("x"))}, log)
    assert log == ["a", "b"]  # a failed once, its circuit opened: the next attempt is b, not a retry of a
    assert answer == "ok via chat->b@1.0.0"
