"""The statistics of an experiment, pure: a metric per variant with its 95% confidence interval, a test of each
variant against the first (the control) with its p-value, and the sample each variant still needs.

- Proportions (``error_rate``, ``accuracy``): Wilson score intervals; the two-proportion z-test (pooled); the
  sample size of a two-sided test at the observed rates.
- Means (``feedback``, ``revenue_per_call``): t intervals; Welch's t-test; the sample size of a two-sided test at
  the observed difference and variances.
- ``latency_p95``: the 95th percentile with a distribution-free interval from order statistics (binomial); the
  Mann-Whitney U test on the latencies (a shift of the distribution); the sample size of a t-test on their means.

The required sample is for ``ALPHA`` = 0.05 (two-sided) and ``POWER`` = 0.8 to detect the difference observed so
far; "still needed" is what each variant lacks of it (0 when it has it; None when no difference is observed, so
no finite sample would detect it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats as sp

Metric = Literal["latency_p95", "error_rate", "feedback", "accuracy", "revenue_per_call"]
METRICS: tuple[Metric, ...] = ("latency_p95", "error_rate", "feedback", "accuracy", "revenue_per_call")
PROPORTIONS = ("error_rate", "accuracy")
LOWER_IS_BETTER = ("latency_p95", "error_rate")
ALPHA = 0.05
POWER = 0.8
Z_ALPHA = float(sp.norm.ppf(1 - ALPHA / 2))
Z_POWER = float(sp.norm.ppf(POWER))


@dataclass(frozen=True)
class Estimate:
    """A variant's metric: its value, 95% interval, and the number of observations it rests on."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"value": _r(self.value), "ci95": [_r(self.low), _r(self.high)], "n": self.n}


@dataclass(frozen=True)
class Comparison:
    """A variant against the control: the test, its p-value, significance, and the sample still needed."""

    test: str
    p_value: float | None
    significant: bool
    better: bool | None
    """Whether the variant is better than the control on this metric (None: no difference or no data)."""
    required_per_variant: int | None
    still_needed: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "p_value": _r(self.p_value, 6),
            "significant": self.significant,
            "better_than_control": self.better,
            "required_per_variant": self.required_per_variant,
            "still_needed": self.still_needed,
        }


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) else round(x, digits)


def estimate(metric: Metric, values: Sequence[float]) -> Estimate:
    """``values``: per observation, 0/1 for a proportion, the number for a mean or a latency."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, None, 0)
    if metric in PROPORTIONS:
        return _wilson(sum(values), n)
    if metric == "latency_p95":
        return _percentile(values, 0.95)
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, None, None, n)
    sd = _sd(values, mean)
    half = float(sp.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def compare(metric: Metric, control: Sequence[float], variant: Sequence[float]) -> Comparison:
    """The variant's observations against the control's."""
    n1, n2 = len(control), len(variant)
    if metric in PROPORTIONS:
        test = "two-proportion z-test"
        p_value, required = _proportions(control, variant)
    elif metric == "latency_p95":
        test = "Mann-Whitney U"
        p_value = None
        if n1 and n2:
            p_value = float(sp.mannwhitneyu(control, variant, alternative="two-sided").pvalue)
        required = _means_required(control, variant)
    else:
        test = "Welch's t-test"
        p_value = None
        if n1 >= 2 and n2 >= 2:
            result = sp.ttest_ind(control, variant, equal_var=False)
            p_value = None if math.isnan(result.pvalue) else float(result.pvalue)
        required = _means_required(control, variant)
    e1, e2 = estimate(metric, control), estimate(metric, variant)
    better = None
    if e1.value is not None and e2.value is not None and e1.value != e2.value:
        better = (e2.value < e1.value) if metric in LOWER_IS_BETTER else (e2.value > e1.value)
    still = None if required is None else max(0, required - min(n1, n2))
    significant = p_value is not None and p_value < ALPHA
    return Comparison(test, p_value, significant, better, required, still)


def _wilson(successes: float, n: int) -> Estimate:
    p = successes / n
    z = Z_ALPHA
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def _percentile(values: Sequence[float], q: float) -> Estimate:
    ordered = sorted(values)
    n = len(ordered)
    value = ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]
    # A distribution-free 95% interval: the order statistics between which the q-quantile lies with probability
    # >= 0.95 (binomial(n, q)); at the ends when the sample is too small.
    lo_rank = int(sp.binom.ppf(ALPHA / 2, n, q))
    hi_rank = int(sp.binom.ppf(1 - ALPHA / 2, n, q)) + 1
    return Estimate(value, ordered[max(0, lo_rank - 1)], ordered[min(n - 1, hi_rank - 1)], n)


def _sd(values: Sequence[float], mean: float) -> float:
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _proportions(control: Sequence[float], variant: Sequence[float]) -> tuple[float | None, int | None]:
    n1, n2 = len(control), len(variant)
    if not n1 or not n2:
        return None, None
    p1, p2 = sum(control) / n1, sum(variant) / n2
    pooled = (sum(control) + sum(variant)) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = None if se == 0 else float(2 * sp.norm.sf(abs(p1 - p2) / se))
    if se == 0 and p1 != p2:
        p_value = 0.0
    delta = abs(p1 - p2)
    if delta == 0:
        return p_value, None
    mean_p = (p1 + p2) / 2
    root = Z_ALPHA * math.sqrt(2 * mean_p * (1 - mean_p)) + Z_POWER * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return p_value, math.ceil(root * root / (delta * delta))


def _means_required(control: Sequence[float], variant: Sequence[float]) -> int | None:
    n1, n2 = len(control), len(variant)
    if n1 < 2 or n2 < 2:
        return None
    m1, m2 = sum(control) / n1, sum(variant) / n2
    delta = abs(m1 - m2)
    if delta == 0:
        return None
    var = _sd(control, m1) ** 2 + _sd(variant, m2) ** 2
    return max(2, math.ceil((Z_ALPHA + Z_POWER) ** 2 * var / (delta * delta)))
