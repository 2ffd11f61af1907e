"""The publish gate's figures as a model card shows them (``VersionRecord.evaluation``).

A version published through the gate keeps ``{"submission": id, "smoke_test": {"summary"}, "benchmark": {...},
"bias": {"passed", "failures", "figures"}}`` (each stage only when it passed and was not skipped; see
``governance/gate.py``, ``governance/trials.py`` and ``governance/bias.py``). These helpers read that shape and
fall back to listing any other mapping's values, so a card never fails on figures it does not know. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_LINES = 200
"""Lines of figures shown per stage; the JSON card keeps them all."""
BENCHMARK_FIGURES = (
    ("p50_ms", "latency p50", "ms"),
    ("p95_ms", "latency p95", "ms"),
    ("throughput_rps", "throughput", "calls/s"),
    ("rss_mb", "resident memory", "MB"),
)
_BENCHMARK_CONTEXT = ("example", "calls", "profile")
THRESHOLDS = (
    ("max_demographic_parity_difference", "demographic parity difference at most"),
    ("min_demographic_parity_ratio", "demographic parity ratio at least"),
    ("max_equalized_odds_difference", "equalized odds difference at most"),
    ("min_group_accuracy", "each group's accuracy at least"),
    ("min_group_size", "each group's size at least"),
)


def gate_group(evaluation: Mapping[str, Any] | None, name: str) -> Any:
    """One stage's figures (``benchmark``, ``bias``, ``smoke_test``) or None."""
    return None if evaluation is None else evaluation.get(name)


def flat_figures(doc: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """The scalar values of nested mappings and lists as ``(dotted.key, value)``, at most ``MAX_LINES``."""
    out: list[tuple[str, Any]] = []
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            out.extend(flat_figures(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(doc, list | tuple):
        for i, value in enumerate(doc):
            out.extend(flat_figures(value, f"{prefix}[{i}]"))
    elif doc is not None or prefix:
        out.append((prefix, doc))
    return out[:MAX_LINES]


def _shown(value: Any) -> str:
    return "undefined" if value is None else str(value)


def smoke_test_line(evaluation: Mapping[str, Any] | None) -> str:
    smoke = gate_group(evaluation, "smoke_test")
    return str(smoke.get("summary", "")) if isinstance(smoke, Mapping) else ""


def benchmark_lines(bench: Any) -> list[str]:
    """``latency p50: 1.2 ms`` ... and how it was measured; other keys as ``key = value``."""
    if not isinstance(bench, Mapping):
        return []
    lines = [f"{label}: {bench[key]} {unit}" for key, label, unit in BENCHMARK_FIGURES if bench.get(key) is not None]
    if bench.get("calls") is not None:
        example = f" of example {bench['example']!r}" if bench.get("example") else ""
        profile = f" in the {bench['profile']!r} sandbox" if bench.get("profile") else ""
        lines.append(f"measured over {bench['calls']} calls{example}{profile}, one at a time")
    known = {key for key, _, _ in BENCHMARK_FIGURES} | set(_BENCHMARK_CONTEXT)
    rest = {k: v for k, v in bench.items() if k not in known}
    lines += [f"{key} = {value}" for key, value in flat_figures(rest)]
    return lines[:MAX_LINES]


def benchmark_metrics(bench: Any) -> list[tuple[str, str, str]]:
    """``(type, value, slice)`` of each numeric benchmark figure, for a CycloneDX performance metric."""
    if not isinstance(bench, Mapping):
        return []
    where = "publish gate benchmark" + (f", {bench['calls']} calls" if bench.get("calls") is not None else "")
    return [
        (f"benchmark_{key}", str(value), where)
        for key, value in flat_figures(bench)
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in _BENCHMARK_CONTEXT
    ]


def _bias_figures(bias: Any) -> Mapping[str, Any] | None:
    figures = bias.get("figures") if isinstance(bias, Mapping) else None
    if isinstance(figures, Mapping) and isinstance(figures.get("sensitive_features"), Mapping):
        return figures
    return None


def bias_lines(bias: Any) -> list[str]:
    """The bias gate's verdict figures: overall accuracy, each sensitive feature's disparities and groups, and
    the thresholds they were held to."""
    figures = _bias_figures(bias)
    if figures is None:
        return [f"{key} = {value}" for key, value in flat_figures(bias)] if bias else []
    rows = figures.get("rows")
    lines = [
        f"overall accuracy {_shown(figures.get('accuracy'))}"
        + (f" on {rows:,} rows" if isinstance(rows, int) else "")
        + (f" (favourable label {figures['positive_label']!r})" if figures.get("positive_label") else "")
    ]
    for name, feature in figures["sensitive_features"].items():
        lines.append(f"{name}: {_disparity_text(feature)}")
        for group, g in (feature.get("groups") or {}).items():
            lines.append(f"{name}={group}: {_group_text(g)}")
    thresholds = figures.get("thresholds")
    if isinstance(thresholds, Mapping):
        held = [f"{label} {thresholds[key]}" for key, label in THRESHOLDS if key in thresholds]
        lines.append("held to: " + ", ".join(held))
    return lines[:MAX_LINES]


def _disparity_text(feature: Mapping[str, Any]) -> str:
    return (
        f"demographic parity difference {_shown(feature.get('demographic_parity_difference'))}, "
        f"ratio {_shown(feature.get('demographic_parity_ratio'))}, "
        f"equalized odds difference {_shown(feature.get('equalized_odds_difference'))}"
    )


def _group_text(g: Any) -> str:
    if not isinstance(g, Mapping):
        return _shown(g)
    return (
        f"{_shown(g.get('count'))} rows, accuracy {_shown(g.get('accuracy'))}, selection rate "
        f"{_shown(g.get('selection_rate'))}, TPR {_shown(g.get('true_positive_rate'))}, FPR "
        f"{_shown(g.get('false_positive_rate'))}"
    )


def fairness_assessments(bias: Any, sensitive_features: list[str]) -> list[dict[str, str]]:
    """CycloneDX ``fairnessAssessments``: one per sensitive feature the bias gate judged."""
    figures = _bias_figures(bias)
    if figures is None:
        if not bias:
            return []
        shown = "; ".join(f"{k} = {v}" for k, v in flat_figures(bias))
        names = sensitive_features or ["the evaluation set's groups"]
        return [
            {"groupAtRisk": f"groups by {name}", "harms": f"Measured by the publish gate: {shown}"} for name in names
        ]
    given = figures.get("thresholds")
    thresholds: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    held = ", ".join(f"{label} {thresholds[key]}" for key, label in THRESHOLDS if key in thresholds)
    out = []
    for name, feature in figures["sensitive_features"].items():
        groups = feature.get("groups") or {}
        out.append(
            {
                "groupAtRisk": f"groups by {name}: {', '.join(map(str, groups))}" if groups else f"groups by {name}",
                "harms": f"Differences in outcomes and errors between the groups: {_disparity_text(feature)}"
                + "".join(f"; {name}={k}: {_group_text(g)}" for k, g in groups.items()),
                "mitigationStrategy": "Published through the publish gate's bias stage, which blocks a version "
                + (f"outside these thresholds: {held}" if held else "outside the operator's thresholds"),
            }
        )
    return [{k: v for k, v in item.items() if v} for item in out]
