"""The lab's statistics and experiment assignment, pure: figures checked against textbook values worked out by
hand in the comments."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.lab import stats
from modelmarket.lab.experiments import Experiment, Variant, parse_variants


def test_a_wilson_interval() -> None:
    est = stats.estimate("error_rate", [1.0] * 10 + [0.0] * 90)
    # p = 0.1, n = 100, z = 1.96: centre (0.1 + 0.019208) / 1.038416 = 0.114799; half-width
    # 1.96 * sqrt(0.0009 + 0.00009604) / 1.038416 = 0.059572 -> [0.0552, 0.1744]
    assert est.value == pytest.approx(0.1)
    assert (est.low, est.high) == (pytest.approx(0.0552, abs=1e-4), pytest.approx(0.1744, abs=1e-4))


def test_two_proportions_p_value_and_the_sample_still_needed() -> None:
    control = [1.0] * 50 + [0.0] * 50  # 0.5
    variant = [1.0] * 60 + [0.0] * 40  # 0.6
    c = stats.compare("accuracy", control, variant)
    # pooled 0.55: se = sqrt(0.55 * 0.45 * 0.02) = 0.070356, z = 1.4213, two-sided p = 0.1552
    assert c.p_value == pytest.approx(0.1552, abs=1e-4)
    assert not c.significant and c.better is True
    # n = (1.96 sqrt(2 x 0.55 x 0.45) + 0.8416 sqrt(0.25 + 0.24))^2 / 0.1^2 = 387.3 -> 388 per variant
    assert c.required_per_variant == 388 and c.still_needed == 288


def test_means_by_welch_and_a_lower_latency_is_better() -> None:
    c = stats.compare("feedback", [5.0, 4.0, 5.0, 4.0] * 10, [2.0, 1.0, 2.0, 1.0] * 10)
    assert c.significant and c.p_value is not None and c.p_value < 1e-10 and c.better is False
    assert c.still_needed == 0  # 2 per variant would do: the difference is 3 points against a spread of 0.5
    fast, slow = [10.0 + i % 3 for i in range(30)], [20.0 + i % 3 for i in range(30)]
    latency = stats.compare("latency_p95", slow, fast)
    assert latency.test == "Mann-Whitney U" and latency.significant and latency.better is True


def test_the_95th_percentile_and_no_difference_needs_no_finite_sample() -> None:
    est = stats.estimate("latency_p95", [float(i) for i in range(1, 101)])
    assert est.value == 95.0 and est.low is not None and est.high is not None and est.low <= 95.0 <= est.high
    same = stats.compare("feedback", [3.0, 4.0] * 5, [3.0, 4.0] * 5)
    assert (same.required_per_variant, same.still_needed, same.better, same.significant) == (None, None, None, False)
    assert stats.compare("feedback", [], [1.0]).p_value is None
    assert stats.estimate("revenue_per_call", []).value is None


def test_assignment_is_sticky_weighted_and_independent_per_experiment() -> None:
    variants = (Variant("A", "1.0.0", 20), Variant("B", "2.0.0", 80))
    first = Experiment("one", "digits", variants, "feedback", "running", "2026-01-01T00:00:00+00:00")
    keys = [f"key_{i}" for i in range(10_000)]
    shares = Counter(first.assign(k).name for k in keys)
    assert abs(shares["A"] / 10_000 - 0.2) < 0.02  # 20/80, within 2 points over 10,000 keys
    assert all(first.assign(k) == first.assign(k) for k in keys[:100])  # sticky
    second = Experiment("two", "digits", variants, "feedback", "running", "2026-01-01T00:00:00+00:00")
    moved = sum(first.assign(k) != second.assign(k) for k in keys)
    assert moved > 2_000  # another experiment shuffles keys afresh (independent: 2 x 0.2 x 0.8 = 32% differ)
    assert math.isclose(moved / 10_000, 0.32, abs_tol=0.03)


@pytest.mark.parametrize(
    ("variants", "split", "named"),
    [
        ("A=1.0.0", None, "2 to 4"),
        ("A=1.0.0,B=2.0.0", "50/50/0", "--split"),
        ("A=1.0.0,B=2.0.0", "0/100", "--split"),
        ("A=1.0.0,A=2.0.0", None, "its own name"),
        ("A=1.0.0,B=1.0.0", None, "its own version"),
        ("A=1.0.0,9=2.0.0", None, "NAME=VERSION"),
        ("A=1.0.0,B", None, "NAME=VERSION"),
    ],
)
def test_bad_variants_are_refused_naming_the_option(variants: str, split: str | None, named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        parse_variants(variants, split)
