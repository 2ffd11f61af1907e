"""Canary releases that roll themselves back: ``modelmarket lab canary M --to VERSION --steps 5,25,50,100``.

A canary is an experiment of two variants, ``stable`` (the model's ``latest`` when it starts) and ``canary`` (the
new version), whose split moves through the steps. At each step below 100% the controller watches the canary's
calls made since the step began: once ``min_calls`` of them have come, a guardrail broken by them (an error rate
above ``max_error_rate``, a 95th-percentile latency above ``max_p95_ms``) rolls back at once; a step whose time is
up with its guardrails holding moves on. A step that sees fewer than ``min_calls`` canary calls within
``max_wait_s`` rolls back too: a canary nobody called proved nothing. After the last step below 100 the canary is
promoted: ``latest`` moves to it and the experiment stops.

A rollback stops the experiment without promoting (every call goes to ``stable`` again, as before the canary), and
is audited as ``canary.rollback`` with its reason and the step's figures; a promotion as ``canary.promoted``. The
split changes are audited as ``experiment.split``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelmarket.core.errors import InvalidInput
from modelmarket.lab.experiments import ExperimentService, Variant
from modelmarket.lab.ports import Observation

POLL_S = 0.5
CANARY, STABLE = "canary", "stable"


@dataclass(frozen=True)
class Guardrails:
    max_error_rate: float | None
    max_p95_ms: float | None
    min_calls: int = 20

    def broken(self, calls: int, errors: int, p95_ms: float | None) -> str | None:
        """The guardrail the figures break, said in words; None when they hold (or are too few to judge)."""
        if calls < self.min_calls:
            return None
        rate = errors / calls
        if self.max_error_rate is not None and rate > self.max_error_rate:
            return f"error rate {rate:.3f} ({errors} of {calls} calls) is above {self.max_error_rate}"
        if self.max_p95_ms is not None and p95_ms is not None and p95_ms > self.max_p95_ms:
            return f"p95 latency {p95_ms:.1f} ms is above {self.max_p95_ms} ms"
        return None


@dataclass
class Step:
    percent: int
    calls: int = 0
    errors: int = 0
    p95_ms: float | None = None
    verdict: str = "running"

    def to_json(self) -> dict[str, Any]:
        return {
            "percent": self.percent,
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": None if not self.calls else round(self.errors / self.calls, 4),
            "p95_ms": None if self.p95_ms is None else round(self.p95_ms, 2),
            "verdict": self.verdict,
        }


@dataclass
class CanaryResult:
    experiment: str
    model: str
    stable: str
    canary: str
    outcome: str = "running"
    """``promoted`` or ``rolled back``."""
    reason: str | None = None
    steps: list[Step] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "model": self.model,
            "stable": self.stable,
            "canary": self.canary,
            "outcome": self.outcome,
            "reason": self.reason,
            "steps": [s.to_json() for s in self.steps],
        }


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(p) for p in text.split(",")]
    except ValueError:
        raise InvalidInput(f"--steps: whole percentages separated by commas (5,25,50,100), got {text[:60]!r}") from None
    if len(steps) < 2 or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
        raise InvalidInput(
            "--steps: increasing percentages from 1 to 100, at least one below 100, ending with 100 (e.g. 5,25,50,100)"
        )
    return steps


def p95(observations: Sequence[Observation]) -> float | None:
    latencies = sorted(o.latency_us / 1000 for o in observations if o.ok)
    if not latencies:
        return None
    return latencies[min(len(latencies) - 1, max(0, math.ceil(0.95 * len(latencies)) - 1))]


class CanaryController:
    def __init__(
        self,
        experiments: ExperimentService,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.experiments = experiments
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic

    def run(
        self,
        model: str,
        to_version: str,
        steps: list[int],
        guard: Guardrails,
        step_s: float,
        max_wait_s: float,
        progress: Callable[[str], None] = lambda _: None,
        actor: str = "cli",
    ) -> CanaryResult:
        stable = self.experiments.current_version(model)
        if stable == to_version:
            raise InvalidInput(f"{model}@{to_version} is already its latest version: nothing to canary")
        stamp = self.clock().astimezone(UTC).strftime("%Y%m%d%H%M%S")
        name = f"canary-{model[:40]}-{stamp}"
        first = steps[0]
        variants = (Variant(STABLE, stable, 100 - first), Variant(CANARY, to_version, first))
        self.experiments.start(name, model, variants, "error_rate", actor=actor)
        result = CanaryResult(name, model, stable, to_version)
        try:
            progress(f"canary {name}: {model}@{to_version} against {model}@{stable}")
            for percent in steps:
                if percent == 100:
                    break
                step = Step(percent)
                result.steps.append(step)
                if len(result.steps) > 1:
                    self.experiments.set_split(name, {STABLE: 100 - percent, CANARY: percent}, actor=actor)
                reason = self._watch(name, step, guard, step_s, max_wait_s, progress)
                if reason is not None:
                    step.verdict = "broken"
                    return self._roll_back(result, reason, actor, progress)
                step.verdict = "held"
                progress(f"  {percent:>3}%: held ({step.calls} canary calls, {step.errors} errors)")
            self.experiments.stop(name, promote=CANARY, actor=actor)
            result.outcome = "promoted"
        except BaseException:
            # Interrupted (Ctrl-C, an error, a failed promotion): traffic goes back to stable, never left split with
            # nobody watching. A rollback that itself fails leaves the outcome "running" and the error raised.
            if result.outcome == "running":
                self._roll_back(result, "the canary was interrupted", actor, progress)
            raise
        self.experiments.note("canary.promoted", name, result.to_json(), actor)
        progress(f"promoted: {model}@latest -> {to_version}")
        return result

    def _watch(
        self,
        name: str,
        step: Step,
        guard: Guardrails,
        step_s: float,
        max_wait_s: float,
        progress: Callable[[str], None],
    ) -> str | None:
        since = self.clock().astimezone(UTC).isoformat()
        began = self.monotonic()
        while True:
            self.sleep(POLL_S)
            canary = [o for o in self.experiments.observations(name, since) if o.variant == CANARY]
            step.calls, step.errors, step.p95_ms = len(canary), sum(1 for o in canary if not o.ok), p95(canary)
            broken = guard.broken(step.calls, step.errors, step.p95_ms)
            if broken is not None:
                return broken
            waited = self.monotonic() - began
            if waited >= step_s and step.calls >= guard.min_calls:
                return None
            if waited >= max_wait_s:
                return (
                    f"only {step.calls} canary calls in {waited:.0f} s at {step.percent}% "
                    f"(at least {guard.min_calls} are needed to judge it)"
                )

    def _roll_back(
        self, result: CanaryResult, reason: str, actor: str, progress: Callable[[str], None]
    ) -> CanaryResult:
        self.experiments.stop(result.experiment, promote=None, actor=actor)
        result.outcome, result.reason = "rolled back", reason  # only once every call goes to stable again
        self.experiments.note("canary.rollback", result.experiment, result.to_json(), actor)
        progress(f"rolled back: {reason}; every call goes to {result.model}@{result.stable} again")
        return result
