"""The routing engine (pure): weighted splits and stickiness, each strategy, fallbacks, circuit breakers on a fake
clock, the all-open error, and measurements kept across a reload."""

from __future__ import annotations

import ast
import math
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from modelmarket.core.errors import NotFound, NotReady
from modelmarket.routing.engine import LATENCY_ALPHA, Router, RouteTable, RouteUnavailable, weighted_order
from modelmarket.routing.spec import RouteSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def route(name: str = "chat", *targets: str | tuple[str, int], **fields: Any) -> RouteSpec:
    items = [{"model": t} if isinstance(t, str) else {"model": t[0], "weight": t[1]} for t in targets]
    return RouteSpec.model_validate({"name": name, "targets": items or [{"model": "a"}], **fields})


def router(*routes: RouteSpec, **kwargs: Any) -> Router:
    return Router(RouteTable.from_routes(routes), **kwargs)


def fail(r: Router, name: str, ref: str, times: int = 1) -> None:
    for _ in range(times):
        r.started(name, ref)
        r.finished(name, ref, ok=False)


def succeed(r: Router, name: str, ref: str, latency_s: float = 0.1) -> None:
    r.started(name, ref)
    r.finished(name, ref, ok=True, latency_s=latency_s)


# -- weighted ------------------------------------------------------------------------------------------------


def test_sticky_split_over_many_keys_holds_the_weights() -> None:
    """10,000 keys with weights 80/20: each key is an independent Bernoulli(0.8) draw (a uniform hash onto the
    cumulative weights), so the share of 'a' has standard deviation sqrt(0.8 * 0.2 / 10000) = 0.004; we require
    |observed - 0.8| < 4 standard deviations (0.016), which a correct split fails with probability ~6e-5."""
    r = router(route("chat", ("a", 80), ("b", 20)))
    n = 10_000
    first = [r.plan("chat", f"key-{i}")[0] for i in range(n)]
    share = first.count("a") / n
    sd = math.sqrt(0.8 * 0.2 / n)
    assert abs(share - 0.8) < 4 * sd, share
    assert set(first) == {"a", "b"}


def test_a_key_keeps_its_target_while_the_weights_are_unchanged() -> None:
    r = router(route("chat", ("a", 50), ("b", 30), ("c", 20)))
    plans = {f"key-{i}": r.plan("chat", f"key-{i}") for i in range(200)}
    for _ in range(3):
        assert {k: r.plan("chat", k) for k in plans} == plans
    # a reload with the same weights (a new table, the same spec) keeps every key on its target
    r.update(RouteTable.from_routes([route("chat", ("a", 50), ("b", 30), ("c", 20))]))
    assert {k: r.plan("chat", k) for k in plans} == plans
    # and the full order is a permutation of the targets
    assert all(sorted(p) == ["a", "b", "c"] for p in plans.values())


def test_sticky_keys_spread_over_every_target_and_the_second_choice_follows_the_weights() -> None:
    """With 3 targets 50/30/20, the second choice of the keys that drew 'a' first is 'b' with chance 30/50."""
    r = router(route("chat", ("a", 50), ("b", 30), ("c", 20)))
    n = 10_000
    plans = [r.plan("chat", f"k{i}") for i in range(n)]
    after_a = [p[1] for p in plans if p[0] == "a"]
    share = after_a.count("b") / len(after_a)
    sd = math.sqrt(0.6 * 0.4 / len(after_a))
    assert abs(share - 0.6) < 4 * sd, share


def test_unsticky_weighted_is_random_per_call_with_a_seeded_rng() -> None:
    spec = route("chat", ("a", 80), ("b", 20), sticky=False)
    r1, r2 = router(spec, rng=random.Random(7)), router(spec, rng=random.Random(7))
    draws1 = [r1.plan("chat", "the-same-key")[0] for _ in range(2000)]
    draws2 = [r2.plan("chat", "the-same-key")[0] for _ in range(2000)]
    assert draws1 == draws2  # the seed decides, not the key
    assert set(draws1) == {"a", "b"}  # one key gets both targets: not sticky
    sd = math.sqrt(0.8 * 0.2 / 2000)
    assert abs(draws1.count("a") / 2000 - 0.8) < 4 * sd


def test_a_call_without_a_key_on_a_sticky_route_is_drawn_at_random() -> None:
    r = router(route("chat", ("a", 1), ("b", 1)), rng=random.Random(1))
    assert {r.plan("chat")[0] for _ in range(100)} == {"a", "b"}


def test_weighted_order_never_repeats_a_target() -> None:
    spec = route("chat", *[(f"m{i}", i + 1) for i in range(16)])
    rng = random.Random(3)
    for i in range(200):
        assert sorted(t.model for t in weighted_order(spec, f"k{i}", rng)) == sorted(f"m{j}" for j in range(16))
        assert len(weighted_order(spec, None, rng)) == 16


# -- plans, fallbacks, strategies ------------------------------------------------------------------------------


def test_plan_lists_the_chosen_target_then_the_others_then_the_fallbacks_in_order() -> None:
    spec = route("chat", ("a", 1), ("b", 1), fallbacks=["f1@1.0.0", "f2", "f3@stable"])
    r = router(spec)
    for i in range(50):
        plan = r.plan("chat", f"k{i}")
        assert sorted(plan[:2]) == ["a", "b"]
        assert plan[2:] == ["f1@1.0.0", "f2", "f3@stable"]


def test_an_unknown_route_is_not_found() -> None:
    with pytest.raises(NotFound, match="no route named 'nope'"):
        router(route()).plan("nope")


def test_lowest_latency_measures_every_target_first_then_prefers_the_fastest() -> None:
    r = router(route("fast", "a", "b", "c", strategy="lowest-latency"))
    assert r.plan("fast") == ["a", "b", "c"]  # nothing measured: declared order
    succeed(r, "fast", "a", 0.5)
    assert r.plan("fast") == ["b", "c", "a"]  # the unmeasured ones first, so each gets measured
    succeed(r, "fast", "b", 0.2)
    succeed(r, "fast", "c", 0.9)
    assert r.plan("fast") == ["b", "a", "c"]
    for _ in range(10):  # b slows down: its average follows
        succeed(r, "fast", "b", 2.0)
    assert r.plan("fast") == ["a", "c", "b"]


def test_latency_is_an_exponentially_weighted_average_of_successful_calls() -> None:
    r = router(route("fast", "a", "b", strategy="lowest-latency"))
    succeed(r, "fast", "a", 1.0)
    succeed(r, "fast", "a", 2.0)
    fail(r, "fast", "a")  # a failure records no latency
    (status,) = r.snapshot()
    a = status.targets[0]
    assert a.samples == 2
    assert a.latency_s == pytest.approx(LATENCY_ALPHA * 2.0 + (1 - LATENCY_ALPHA) * 1.0)


def test_lowest_price_uses_the_injected_prices_unknown_last_ties_by_order() -> None:
    prices = {"a": Decimal("0.003"), "b": Decimal("0.001"), "c": None, "d": Decimal("0.001")}
    r = router(route("cheap", "a", "b", "c", "d", strategy="lowest-price"), price_of=prices.get)
    assert r.plan("cheap") == ["b", "d", "a", "c"]
    prices["a"] = Decimal("0.0001")  # read per call
    assert r.plan("cheap") == ["a", "b", "d", "c"]


def test_lowest_price_without_a_price_source_keeps_the_declared_order() -> None:
    assert router(route("cheap", "a", "b", strategy="lowest-price")).plan("cheap") == ["a", "b"]


def test_least_busy_prefers_the_fewest_calls_in_flight() -> None:
    r = router(route("idle", "a", "b", "c", strategy="least-busy"))
    assert r.plan("idle") == ["a", "b", "c"]
    r.started("idle", "a")
    r.started("idle", "a")
    r.started("idle", "b")
    assert r.plan("idle") == ["c", "b", "a"]
    r.finished("idle", "a", ok=True, latency_s=0.1)
    r.finished("idle", "a", ok=None)  # abandoned: still leaves the in-flight count
    assert r.plan("idle") == ["a", "c", "b"]
    assert [t.in_flight for t in r.snapshot()[0].targets] == [0, 1, 0]


# -- circuit breaker -------------------------------------------------------------------------------------------


def breaker_route(*targets: str | tuple[str, int], **fields: Any) -> RouteSpec:
    return route("chat", *targets, circuit_breaker={"failures": 3, "cooldown_s": 30}, **fields)


def test_consecutive_failures_open_the_circuit_and_the_target_is_left_out() -> None:
    clock = FakeClock()
    r = router(breaker_route("a", "b", strategy="least-busy", fallbacks=["f"]), monotonic=clock)
    fail(r, "chat", "a", 2)
    succeed(r, "chat", "a")  # a success resets the count
    fail(r, "chat", "a", 2)
    assert r.plan("chat") == ["a", "b", "f"]
    fail(r, "chat", "a")
    assert r.plan("chat") == ["b", "f"]
    a = r.snapshot()[0].targets[0]
    assert (a.state, a.failures, a.open_for_s) == ("open", 3, 30.0)


def test_after_the_cooldown_one_trial_call_goes_through_and_success_closes_the_circuit() -> None:
    clock = FakeClock()
    r = router(breaker_route("a", "b", strategy="least-busy"), monotonic=clock)
    fail(r, "chat", "a", 3)
    clock.advance(29.9)
    assert r.plan("chat") == ["b"]
    clock.advance(0.1)
    assert r.snapshot()[0].targets[0].state == "half-open"
    assert r.plan("chat") == ["a", "b"]
    r.started("chat", "a")  # the trial
    assert r.plan("chat") == ["b"]  # only one trial at a time
    assert r.snapshot()[0].targets[0].trial_in_flight
    r.finished("chat", "a", ok=True, latency_s=0.2)
    a = r.snapshot()[0].targets[0]
    assert (a.state, a.failures, a.trial_in_flight) == ("closed", 0, False)
    assert r.plan("chat") == ["a", "b"]


def test_a_failed_trial_opens_the_circuit_for_another_cooldown() -> None:
    clock = FakeClock()
    r = router(breaker_route("a", "b", strategy="least-busy"), monotonic=clock)
    fail(r, "chat", "a", 3)
    clock.advance(30)
    fail(r, "chat", "a")  # the trial fails
    a = r.snapshot()[0].targets[0]
    assert (a.state, a.open_for_s) == ("open", 30.0)
    assert r.plan("chat") == ["b"]
    clock.advance(30)
    assert r.plan("chat") == ["a", "b"]


def test_an_abandoned_trial_lets_another_trial_through() -> None:
    clock = FakeClock()
    r = router(breaker_route("a", "b", strategy="least-busy"), monotonic=clock)
    fail(r, "chat", "a", 3)
    clock.advance(30)
    r.started("chat", "a")
    assert r.plan("chat") == ["b"]
    r.finished("chat", "a", ok=None)
    assert r.plan("chat") == ["a", "b"]


def test_a_single_target_route_cools_down_and_then_recovers() -> None:
    """LiteLLM users report a deployment group of one never cooling down; here it does."""
    clock = FakeClock()
    r = router(breaker_route("solo"), monotonic=clock)
    fail(r, "chat", "solo", 3)
    with pytest.raises(RouteUnavailable) as caught:
        r.plan("chat", "key")
    assert caught.value.retry_after_s == pytest.approx(30)
    clock.advance(30)
    assert r.plan("chat", "key") == ["solo"]
    succeed(r, "chat", "solo")
    assert r.plan("chat", "key") == ["solo"]


def test_when_every_target_and_fallback_is_open_the_error_names_the_route_and_the_first_cooldown_end() -> None:
    clock = FakeClock()
    r = router(breaker_route("a", "b", fallbacks=["f"]), monotonic=clock)
    fail(r, "chat", "a", 3)
    clock.advance(10)
    fail(r, "chat", "b", 3)
    fail(r, "chat", "f", 3)
    clock.advance(5)  # a reopens in 15 s, b and f in 25 s
    with pytest.raises(RouteUnavailable) as caught:
        r.plan("chat", "key")
    error = caught.value
    assert isinstance(error, NotReady)
    assert error.route == "chat"
    assert error.retry_after_s == pytest.approx(15)
    assert "route 'chat'" in error.message
    assert "the first cooldown ends in 15.0 s" in error.message


def test_all_trials_in_flight_is_unavailable_with_no_wait() -> None:
    clock = FakeClock()
    r = router(breaker_route("solo"), monotonic=clock)
    fail(r, "chat", "solo", 3)
    clock.advance(30)
    r.started("chat", "solo")
    with pytest.raises(RouteUnavailable, match="a trial call is in flight") as caught:
        r.plan("chat")
    assert caught.value.retry_after_s == 0


def test_breakers_are_per_route() -> None:
    r = router(breaker_route("a", "b", strategy="least-busy"), route("other", "a", "b", strategy="least-busy"))
    fail(r, "chat", "a", 3)
    assert r.plan("chat") == ["b"]
    assert r.plan("other") == ["a", "b"]


# -- reload and status ---------------------------------------------------------------------------------------


def test_update_keeps_the_measurements_of_targets_that_still_exist() -> None:
    clock = FakeClock()
    r = router(breaker_route("a", "b", strategy="lowest-latency"), monotonic=clock)
    succeed(r, "chat", "a", 0.3)
    succeed(r, "chat", "b", 0.1)
    fail(r, "chat", "a", 3)
    r.started("chat", "b")
    r.update(RouteTable.from_routes([breaker_route("b", "c", strategy="lowest-latency", timeout_s=5)]))
    assert r.route("chat").timeout_s == 5
    (status,) = r.snapshot()
    b, c = status.targets
    assert (b.ref, b.samples, b.latency_s, b.in_flight) == ("b", 1, 0.1, 1)
    assert (c.ref, c.samples, c.in_flight) == ("c", 0, 0)
    r.finished("chat", "b", ok=True, latency_s=0.1)  # a call started before the reload still counts
    assert r.snapshot()[0].targets[0].in_flight == 0
    # 'a' was dropped: bringing it back starts it fresh (closed), and a stale finish for it is ignored
    r.finished("chat", "a", ok=False)
    r.update(RouteTable.from_routes([breaker_route("a", "b", strategy="lowest-latency")]))
    a = r.snapshot()[0].targets[0]
    assert (a.ref, a.state, a.failures, a.samples) == ("a", "closed", 0, 0)


def test_update_removes_routes() -> None:
    r = router(route("chat", "a"), route("other", "b"))
    r.update(RouteTable.from_routes([route("other", "b")]))
    assert r.table.names() == ["other"]
    with pytest.raises(NotFound):
        r.plan("chat")
    r.started("chat", "a")  # the route went away between plan and call: ignored
    r.finished("chat", "a", ok=False)


def test_snapshot_reports_weights_states_in_flight_latency_and_failures() -> None:
    clock = FakeClock()
    r = router(
        breaker_route(("a", 3), ("b", 1), fallbacks=["f"]),
        route("fast", "x", strategy="lowest-latency"),
        monotonic=clock,
    )
    fail(r, "chat", "b", 3)
    clock.advance(12)
    r.started("chat", "a")
    doc = [s.to_json() for s in r.snapshot()]
    assert doc == [
        {
            "route": "chat",
            "strategy": "weighted",
            "targets": [
                {
                    "ref": "a",
                    "role": "target",
                    "weight": 3,
                    "state": "closed",
                    "open_for_s": 0.0,
                    "trial_in_flight": False,
                    "in_flight": 1,
                    "latency_s": None,
                    "samples": 0,
                    "failures": 0,
                },
                {
                    "ref": "b",
                    "role": "target",
                    "weight": 1,
                    "state": "open",
                    "open_for_s": 18.0,
                    "trial_in_flight": False,
                    "in_flight": 0,
                    "latency_s": None,
                    "samples": 0,
                    "failures": 3,
                },
                {
                    "ref": "f",
                    "role": "fallback",
                    "weight": None,
                    "state": "closed",
                    "open_for_s": 0.0,
                    "trial_in_flight": False,
                    "in_flight": 0,
                    "latency_s": None,
                    "samples": 0,
                    "failures": 0,
                },
            ],
        },
        {
            "route": "fast",
            "strategy": "lowest-latency",
            "targets": [
                {
                    "ref": "x",
                    "role": "target",
                    "weight": None,
                    "state": "closed",
                    "open_for_s": 0.0,
                    "trial_in_flight": False,
                    "in_flight": 0,
                    "latency_s": None,
                    "samples": 0,
                    "failures": 0,
                }
            ],
        },
    ]


def test_backoff_doubles_per_attempt() -> None:
    spec = route("chat", "a", retries={"attempts": 3, "backoff_ms": 100})
    r = router(spec)
    assert [r.route("chat").backoff_s(n) for n in range(4)] == [0.0, 0.1, 0.2, 0.4]


def test_the_engine_does_no_io() -> None:
    """engine.py imports nothing that reaches a file, a socket, a process or a database."""
    path = Path(__file__).resolve().parents[2] / "src" / "modelmarket" / "routing" / "engine.py"
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    forbidden = {"os", "socket", "subprocess", "asyncio", "sqlalchemy", "httpx", "pathlib", "io", "threading"}
    assert not names & forbidden, names & forbidden
    assert not [n for n in names if n.startswith(("modelmarket.adapters", "modelmarket.gateway"))]
