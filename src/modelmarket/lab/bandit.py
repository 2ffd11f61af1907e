"""Self-optimization, opt-in per experiment or per weighted route: a Thompson-sampling bandit that shifts the split
toward the variant (the target) that does better, within the shares the operator allows (``modelmarket lab
bandit``). A route's targets are judged by their versions' feedback (``route_round``); an experiment's variants
by its metric, as follows.

Each call is a success or a failure for its variant: ``feedback`` a score of 4 or 5; ``accuracy`` a feedback label
equal to the prediction; ``error_rate`` a call served; ``latency_p95`` a call served within the median latency of
all the experiment's served calls; ``revenue_per_call`` a call billed more than the median amount. A variant's
posterior is Beta(1 + successes, 1 + failures). A round draws from every posterior ``DRAWS`` times and gives each
variant the share of draws it won (the probability that it is the best), clipped to ``[min_share, max_share]``
and made whole per-mille weights. A round whose weights differ from the split in force sets them; the change is
audited (``experiment.split``) with the figures that caused it (``bandit.shift``: successes, failures and the
probability of being best, per variant).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any, Protocol

from modelmarket.core.errors import InvalidInput
from modelmarket.lab.experiments import SHADOW, ExperimentService
from modelmarket.lab.feedback import VersionFeedback
from modelmarket.lab.ports import Observation

DRAWS = 4000
WEIGHT_SCALE = 1000


@dataclass(frozen=True)
class Arm:
    name: str
    successes: int
    failures: int

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.name, "successes": self.successes, "failures": self.failures}


def arms(metric: str, names: Sequence[str], observations: Sequence[Observation]) -> list[Arm]:
    """Each variant's successes and failures on ``metric`` (see the module's text)."""
    served = [o for o in observations if o.ok]
    latency_cut = median(o.latency_us for o in served) if served else 0
    amounts = [float(o.amount) for o in observations if o.amount is not None]
    amount_cut = median(amounts) if amounts else 0.0

    def outcome(o: Observation) -> bool | None:
        if metric == "feedback":
            return None if o.score is None else o.score >= 4
        if metric == "accuracy":
            return None if o.label is None else o.prediction == o.label
        if metric == "error_rate":
            return o.ok
        if metric == "latency_p95":
            return o.ok and o.latency_us <= latency_cut
        if o.ok and o.amount is None:  # revenue_per_call: not rated yet, no outcome yet
            return None
        return o.amount is not None and float(o.amount) > amount_cut

    counts = {n: [0, 0] for n in names}
    for o in observations:
        if o.variant in counts and (won := outcome(o)) is not None:
            counts[o.variant][0 if won else 1] += 1
    return [Arm(n, s, f) for n, (s, f) in counts.items()]


def best_probabilities(found: Sequence[Arm], rng: random.Random, draws: int = DRAWS) -> list[float]:
    """Per arm, the share of ``draws`` joint posterior draws in which it is the best."""
    wins = [0] * len(found)
    for _ in range(draws):
        samples = [rng.betavariate(1 + a.successes, 1 + a.failures) for a in found]
        wins[samples.index(max(samples))] += 1
    return [w / draws for w in wins]


def bounded_weights(shares: Sequence[float], min_share: float, max_share: float) -> list[int]:
    """Shares clipped to ``[min_share, max_share]`` (renormalised, clipped again until they hold), as per-mille
    weights of at least 1."""
    n = len(shares)
    if not 0 <= min_share <= 1 / n <= max_share <= 1:
        raise InvalidInput(f"shares: need 0 <= min ({min_share}) <= 1/{n} <= max ({max_share}) <= 1")
    current = list(shares)
    for _ in range(50):
        clipped = [min(max(s, min_share), max_share) for s in current]
        total = sum(clipped)
        current = [s / total for s in clipped]
        if all(min_share - 1e-9 <= s <= max_share + 1e-9 for s in current):
            break
    return [max(1, round(s * WEIGHT_SCALE)) for s in current]


@dataclass
class Round:
    arms: list[Arm]
    probabilities: list[float]
    weights: dict[str, int]
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "arms": [
                {**a.to_json(), "p_best": f"{p:.4f}", "weight": self.weights[a.name]}
                for a, p in zip(self.arms, self.probabilities, strict=True)
            ],
            "changed": self.changed,
        }


class RouteWeights(Protocol):
    """What a route's bandit needs: its weighted targets, and a way to set their weights (audited)."""

    def targets(self, route: str) -> dict[str, tuple[str, str, int]]:
        """Target reference -> (model, version it resolves to, weight)."""
        ...

    def set_weights(self, route: str, weights: dict[str, int], actor: str) -> None: ...


class BanditController:
    def __init__(
        self,
        experiments: ExperimentService,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        routes: RouteWeights | None = None,
        feedback: Callable[[str], list[VersionFeedback]] | None = None,
    ) -> None:
        """``routes`` and ``feedback`` (per version of a model): for a route's bandit (``route_round``)."""
        self.experiments = experiments
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.routes = routes
        self.feedback = feedback

    def route_round(self, route: str, min_share: float, max_share: float, actor: str = "bandit") -> Round:
        """One round over a weighted route: each target's successes are the calls of the version it resolves to
        scored 4 or 5 (``POST /api/feedback``), its failures those scored 1 to 3; the route's weights are set
        when they change (a new revision of the route, audited), with the figures (``bandit.shift``)."""
        if self.routes is None or self.feedback is None:
            raise InvalidInput("routes are not available here")
        targets = self.routes.targets(route)
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        for model in {m for m, _, _ in targets.values()}:
            for v in self.feedback(model):
                counts[(v.model, v.version)] = (v.histogram[3] + v.histogram[4], sum(v.histogram[:3]))
        found = [Arm(ref, *counts.get((m, ver), (0, 0))) for ref, (m, ver, _) in targets.items()]
        probabilities = best_probabilities(found, self.rng)
        weights = dict(zip(targets, bounded_weights(probabilities, min_share, max_share), strict=True))
        changed = weights != {ref: w for ref, (_, _, w) in targets.items()}
        result = Round(found, probabilities, weights, changed)
        if changed:
            self.routes.set_weights(route, weights, actor)
            self.experiments.note(
                "bandit.shift", route, {"route": route, "metric": "feedback", **result.to_json()}, actor
            )
        return result

    def round(self, name: str, min_share: float, max_share: float, actor: str = "bandit") -> Round:
        """One round: read the experiment's calls, draw, set the split if it changed (audited with the figures)."""
        experiment = self.experiments.get(name)
        if experiment.status != "running" or experiment.metric == SHADOW:
            raise InvalidInput(f"{name!r} is not a running experiment")
        found = arms(experiment.metric, experiment.names, self.experiments.observations(name))
        probabilities = best_probabilities(found, self.rng)
        weights = dict(zip(experiment.names, bounded_weights(probabilities, min_share, max_share), strict=True))
        changed = weights != {v.name: v.weight for v in experiment.variants}
        result = Round(found, probabilities, weights, changed)
        if changed:
            self.experiments.set_split(name, weights, actor=actor)
            self.experiments.note("bandit.shift", name, {"metric": experiment.metric, **result.to_json()}, actor)
        return result

    def run(
        self,
        name: str,
        rounds: int,
        every_s: float,
        min_share: float,
        max_share: float,
        progress: Callable[[Round], None] = lambda _: None,
    ) -> list[Round]:
        out = []
        for i in range(rounds):
            if i:
                self.sleep(every_s)
            found = self.round(name, min_share, max_share)
            progress(found)
            out.append(found)
        return out
