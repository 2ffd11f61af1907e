"""The bandit (lab.bandit), pure: it converges to the better variant within the operator's bounds, and turns
calls into successes and failures the way its text says."""

from __future__ import annotations

import random

import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.lab.bandit import Arm, arms, best_probabilities, bounded_weights
from modelmarket.lab.ports import Observation


def test_the_bandit_converges_to_the_better_variant_within_its_bounds() -> None:
    truth = {"A": 0.30, "B": 0.45}  # B is better; nobody tells the bandit
    counts = {"A": [0, 0], "B": [0, 0]}
    rng, world = random.Random(3), random.Random(4)
    weights = {"A": 500, "B": 500}
    history = []
    for _ in range(40):  # 40 rounds of 200 calls, each shared by the split in force
        for _ in range(200):
            variant = "A" if world.random() * 1000 < weights["A"] else "B"
            counts[variant][0 if world.random() < truth[variant] else 1] += 1
        found = [Arm(n, s, f) for n, (s, f) in counts.items()]
        weights = dict(zip(counts, bounded_weights(best_probabilities(found, rng), 0.05, 0.95), strict=True))
        history.append(weights["B"])
    assert history[-1] == 950  # all the bounds allow
    assert all(w == 950 for w in history[-10:])  # and it stays there
    assert counts["B"][0] + counts["B"][1] > 4 * (counts["A"][0] + counts["A"][1])  # most calls went to B


def test_an_even_race_keeps_an_even_split_and_the_bounds_are_checked() -> None:
    found = [Arm("A", 0, 0), Arm("B", 0, 0)]
    p = best_probabilities(found, random.Random(1))
    assert abs(p[0] - 0.5) < 0.03
    assert bounded_weights([0.999, 0.001], 0.1, 0.9) == [900, 100]
    assert bounded_weights([0.7, 0.2, 0.1], 0.2, 0.6) == [600, 200, 200]
    with pytest.raises(InvalidInput, match="shares"):
        bounded_weights([0.5, 0.5], 0.6, 0.9)


def _o(variant: str, ok: bool = True, latency_us: int = 1000, score: int | None = None) -> Observation:
    return Observation(variant, ok, latency_us, "7", score, None, None)


def test_calls_become_successes_and_failures_per_metric() -> None:
    obs = [_o("A", score=5), _o("A", score=2), _o("B", score=4), _o("B"), _o("B", ok=False)]
    assert arms("feedback", ["A", "B"], obs) == [Arm("A", 1, 1), Arm("B", 1, 0)]  # unscored calls do not count
    assert arms("error_rate", ["A", "B"], obs) == [Arm("A", 2, 0), Arm("B", 2, 1)]
    fast_slow = [_o("A", latency_us=1), _o("A", latency_us=2), _o("B", latency_us=9), _o("B", latency_us=8)]
    assert arms("latency_p95", ["A", "B"], fast_slow) == [Arm("A", 2, 0), Arm("B", 0, 2)]  # median cut: 5
