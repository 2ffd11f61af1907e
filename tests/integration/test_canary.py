"""The canary controller (lab.canary) on SQLite and PostgreSQL, its traffic played by the test: calls recorded as
the gateway records them, step by step. A healthy canary is promoted through every step; one whose calls fail is
rolled back at the step where its guardrail broke; one nobody calls is rolled back too. Each outcome is audited
with its reason and figures, and `latest` moves only on promotion."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from economy_helpers import Economy, copy_package, make_economy

from modelmarket.adapters.store import SqlStore
from modelmarket.core.errors import InvalidInput
from modelmarket.lab.canary import CanaryController, Guardrails, parse_steps
from modelmarket.lab.ports import ExperimentCall

pytestmark = pytest.mark.timeout(120)
_ids = itertools.count()


def _platform(store: SqlStore, tmp_path: Path, demo_dir: Path) -> Economy:
    eco = make_economy(store, tmp_path / "home", demo_dir)
    eco.platform.registry.publish(copy_package(demo_dir, "digits", tmp_path / "pkgs", "digits", {"version": "2.0.0"}))
    eco.platform.registry.move_alias("digits", "latest", "1.0.0")
    return eco


def _traffic(eco: Economy, fails_from_step: int | None, latency_us: int = 2000) -> Callable[[float], None]:
    """A ``sleep`` for the controller: each poll moves the clock on 1 s and records 10 calls of the running
    canary's traffic (its variant's share of them), failing from step ``fails_from_step`` (1-based) on."""
    p = eco.platform
    polls = itertools.count()

    def sleep(_: float) -> None:
        eco.clock.now += timedelta(seconds=1)
        (experiment,) = p.experiments.running().values()
        canary = experiment.variant("canary")
        step = {5: 1, 25: 2, 50: 3}.get(canary.weight, 0)
        ok = fails_from_step is None or step < fails_from_step
        at = eco.clock().astimezone(UTC).isoformat()
        calls = [
            ExperimentCall(
                f"xc_{next(_ids)}", experiment.name, "canary", canary.version, "acct", ok, latency_us, None, None, at
            )
            for _ in range(10)
        ]
        p.experiments.record_calls(calls)
        next(polls)

    return sleep


def _controller(eco: Economy, sleep: Callable[[float], None]) -> CanaryController:
    ticks = itertools.count()
    return CanaryController(eco.platform.experiments, eco.clock, sleep=sleep, monotonic=lambda: float(next(ticks)))


def _actions(eco: Economy) -> list[str]:
    return [r.action for r in eco.platform.audit.list(500)]


def test_a_healthy_canary_is_promoted_through_every_step(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = _platform(store, tmp_path, demo_dir)
    guard = Guardrails(max_error_rate=0.05, max_p95_ms=100, min_calls=20)
    result = _controller(eco, _traffic(eco, None)).run("digits", "2.0.0", parse_steps("5,25,50,100"), guard, 3, 30)
    assert result.outcome == "promoted" and result.reason is None
    assert [(s.percent, s.verdict) for s in result.steps] == [(5, "held"), (25, "held"), (50, "held")]
    assert all(s.calls >= 20 and s.errors == 0 and s.p95_ms == 2.0 for s in result.steps)
    assert eco.platform.registry.catalogue().resolve("digits").version == "2.0.0"
    actions = _actions(eco)
    assert actions.count("experiment.split") == 2 and "canary.promoted" in actions and "canary.rollback" not in actions


def test_a_canary_that_fails_is_rolled_back_at_that_step(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = _platform(store, tmp_path, demo_dir)
    guard = Guardrails(max_error_rate=0.05, max_p95_ms=None, min_calls=20)
    said: list[str] = []
    result = _controller(eco, _traffic(eco, fails_from_step=2)).run(
        "digits", "2.0.0", [5, 25, 50, 100], guard, 3, 30, said.append
    )
    assert result.outcome == "rolled back"
    assert [(s.percent, s.verdict) for s in result.steps] == [(5, "held"), (25, "broken")]
    assert result.reason is not None and "error rate 1.000 (20 of 20 calls) is above 0.05" in result.reason
    assert "rolled back" in said[-1] and "digits@1.0.0" in said[-1]
    assert eco.platform.registry.catalogue().resolve("digits").version == "1.0.0"  # latest never moved
    assert eco.platform.experiments.running() == {}  # every call goes to stable again
    rollback = [r for r in eco.platform.audit.list(500) if r.action == "canary.rollback"]
    assert len(rollback) == 1 and "error rate" in rollback[0].payload["reason"]


def test_a_slow_canary_breaks_its_latency_guardrail(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = _platform(store, tmp_path, demo_dir)
    guard = Guardrails(max_error_rate=None, max_p95_ms=50, min_calls=10)
    result = _controller(eco, _traffic(eco, None, latency_us=80_000)).run("digits", "2.0.0", [10, 100], guard, 3, 30)
    assert result.outcome == "rolled back" and result.reason == "p95 latency 80.0 ms is above 50 ms"


def test_a_canary_nobody_calls_is_rolled_back_and_bad_steps_are_refused(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = _platform(store, tmp_path, demo_dir)

    def quiet(_: float) -> None:
        eco.clock.now += timedelta(seconds=1)

    guard = Guardrails(max_error_rate=0.1, max_p95_ms=None, min_calls=5)
    result = _controller(eco, quiet).run("digits", "2.0.0", [50, 100], guard, 2, 10)
    assert result.outcome == "rolled back" and result.reason is not None and "only 0 canary calls" in result.reason
    for bad in ("100", "5,25", "25,5,100", "0,100", "a,100"):
        with pytest.raises(InvalidInput, match="--steps"):
            parse_steps(bad)
    with pytest.raises(InvalidInput, match="already its latest"):
        _controller(eco, quiet).run("digits", "1.0.0", [50, 100], guard, 2, 10)
    assert datetime.now(UTC) > eco.clock()  # (the pinned clock only moved by the polls)
