"""The bias gate: a model's predictions on the provider's labelled evaluation set, judged group by group.

The package declares the set (``evaluation:`` in ``modelmarket.yaml``, ``registry/declarations.py``): a CSV file
with a header row, its label column, the feature columns that form one row of the input tensor, and the sensitive
feature columns. ``read_evaluation_set`` reads it (bounded); the gate runs the model on the features;
``evaluate_bias`` compares predictions and labels with Fairlearn, each sensitive feature on its own, against the
operator's ``BiasPolicy`` (``governance/policy.py``):

- ``demographic_parity_difference``: the largest minus the smallest selection rate (the share of a group predicted
  ``positive_label``), at most ``max_demographic_parity_difference``;
- ``demographic_parity_ratio``: the smallest over the largest selection rate (1 when no group is selected at all),
  at least ``min_demographic_parity_ratio``;
- ``equalized_odds_difference``: the larger of the spread of the groups' true positive rates and the spread of
  their false positive rates, at most ``max_equalized_odds_difference``; undefined (a failure) when a group has no
  row labelled positive or none labelled otherwise;
- each group's ``accuracy`` (predicted label equal to the label), at least ``min_group_accuracy``;
- each group's ``count``, at least ``min_group_size`` ("too few rows to judge").

Figures are rounded to ``DECIMALS`` places and the thresholds are compared with the rounded figures, so the report
and its verdict always agree. docs/bias.md describes the gate and the demo models it passes and blocks.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from modelmarket.core.errors import InvalidInput, InvariantViolated
from modelmarket.governance.policy import BiasPolicy
from modelmarket.registry.declarations import EvaluationDecl

__all__ = [
    "DECIMALS",
    "MAX_EVALUATION_BYTES",
    "MAX_GROUPS",
    "MAX_LINE_CHARS",
    "BiasReport",
    "EvaluationSet",
    "evaluate_bias",
    "read_evaluation_set",
]

MAX_EVALUATION_BYTES = 64 * 1024 * 1024
"""The largest evaluation CSV read (``BiasPolicy.max_rows`` bounds its rows)."""
MAX_LINE_CHARS = 1024 * 1024
"""The longest line of an evaluation CSV."""
MAX_GROUPS = 100
"""Distinct values a sensitive feature may take in the evaluation set; more cannot be judged group by group."""
DECIMALS = 4
_SHOWN_CHARS = 40
_DISPARITIES = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")
_THRESHOLDS = (
    "max_demographic_parity_difference",
    "min_demographic_parity_ratio",
    "max_equalized_odds_difference",
    "min_group_accuracy",
    "min_group_size",
)


# --- reading the evaluation set


@dataclass(frozen=True)
class EvaluationSet:
    features: npt.NDArray[np.float64]
    """Shape ``(rows, len(decl.features))``, the rows in file order."""
    labels: list[str]
    """The label column as text."""
    groups: dict[str, list[str]]
    """Sensitive feature column -> its value in each row, as text."""


def read_evaluation_set(path: Path, decl: EvaluationDecl, max_rows: int) -> EvaluationSet:
    """The CSV at ``path`` (the package's ``decl.dataset``) read as ``decl`` says, at most ``max_rows`` data rows.

    ``InvalidInput`` naming the file, the row (the header is row 1, as in a spreadsheet) and the column for a
    missing column, a value that is not a finite number in a feature column, an empty label or group, more than
    ``max_rows`` rows, an empty file, or a file larger than ``MAX_EVALUATION_BYTES``.
    """
    where = f"evaluation.dataset {decl.dataset}"
    try:
        size_bytes = path.stat().st_size
    except OSError as exc:
        raise InvalidInput(f"{where}: cannot be read ({exc.strerror})") from None
    if size_bytes > MAX_EVALUATION_BYTES:
        raise InvalidInput(f"{where}: {size_bytes:,} bytes; an evaluation set is at most {MAX_EVALUATION_BYTES:,}")
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            return _read_csv(csv.reader(_bounded_lines(handle, where), strict=True), decl, max_rows, where)
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"{where}: cannot be read ({exc.strerror})") from None


def _bounded_lines(handle: IO[str], where: str) -> Iterator[str]:
    """The file's lines, refusing a line longer than ``MAX_LINE_CHARS`` or more than ``MAX_EVALUATION_BYTES``
    characters in all (the file may have grown since its size was checked)."""
    total_chars = 0
    line_number = 0
    while True:
        line = handle.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        line_number += 1
        if len(line) > MAX_LINE_CHARS:
            raise InvalidInput(f"{where}: line {line_number} is longer than {MAX_LINE_CHARS:,} characters")
        total_chars += len(line)
        if total_chars > MAX_EVALUATION_BYTES:
            raise InvalidInput(f"{where}: larger than {MAX_EVALUATION_BYTES:,} bytes")
        yield line


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def _column(header: list[str], name: str, role: str, where: str) -> int:
    found = [i for i, column in enumerate(header) if column.strip() == name]
    if not found:
        columns = ", ".join(_shown(c.strip()) for c in header[:20]) + (", ..." if len(header) > 20 else "")
        raise InvalidInput(f"{where}: row 1 (the header) has no column {name!r} ({role}); its columns: {columns}")
    if len(found) > 1:
        raise InvalidInput(f"{where}: row 1 (the header) has column {name!r} ({role}) {len(found)} times")
    return found[0]


def _header(reader: Any, decl: EvaluationDecl, where: str) -> tuple[list[str], list[int], int, dict[str, int]]:
    """``(column names, feature columns, label column, sensitive columns)`` from the header row."""
    header: list[str] | None = next(reader, None)
    if header is None or not any(c.strip() for c in header):
        raise InvalidInput(f"{where}: the file is empty; row 1 must be a header naming the columns")
    features = [_column(header, name, "a feature", where) for name in decl.features]
    label = _column(header, decl.label, "the label", where)
    sensitive = {name: _column(header, name, "a sensitive feature", where) for name in decl.sensitive_features}
    return [c.strip() for c in header], features, label, sensitive


def _read_csv(reader: Any, decl: EvaluationDecl, max_rows: int, where: str) -> EvaluationSet:
    start = 1
    try:
        header, feature_columns, label_column, sensitive_columns = _header(reader, decl, where)
        values = array("d")
        labels: list[str] = []
        groups: dict[str, list[str]] = {name: [] for name in sensitive_columns}
        while True:
            start = reader.line_num + 1  # where the next record begins (a quoted field may span lines)
            record = next(reader, None)
            if record is None:
                break
            if not record:
                continue  # a blank line
            row = reader.line_num
            if len(labels) == max_rows:
                raise InvalidInput(
                    f"{where}: more than {max_rows:,} rows (the operator's bias.max_rows); send a sample of them"
                )
            _check_width(record, header, row, where)
            for name, column in zip(decl.features, feature_columns, strict=True):
                values.append(_number(record[column], name, row, where))
            labels.append(_text(record[label_column], decl.label, "the label is empty", row, where))
            for name, column in sensitive_columns.items():
                groups[name].append(_text(record[column], name, "empty: every row needs its group", row, where))
    except csv.Error as exc:
        raise InvalidInput(f"{where}: row {start}: not valid CSV ({exc})") from None
    if not labels:
        raise InvalidInput(f"{where}: no data rows after the header")
    features = np.frombuffer(values, dtype=np.float64).reshape(len(labels), len(decl.features))
    return EvaluationSet(features=features, labels=labels, groups=groups)


def _check_width(record: list[str], header: list[str], row: int, where: str) -> None:
    """A row has as many fields as the header: a short one names its first missing column."""
    if len(record) < len(header):
        raise InvalidInput(
            f"{where}: row {row}, column {header[len(record)]!r}: missing (the row has {len(record)} fields, "
            f"the header {len(header)})"
        )
    if len(record) > len(header):
        raise InvalidInput(f"{where}: row {row} has {len(record)} fields but the header has {len(header)}")


def _number(text: str, column: str, row: int, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{where}: row {row}, column {column!r}: {_shown(text)} is not a number") from None
    if not math.isfinite(value):
        raise InvalidInput(f"{where}: row {row}, column {column!r}: {_shown(text)} is not a finite number")
    return value


MAX_CELL_CHARS = 100
"""Longest label or group name: they are shown in reports and stored in stage summaries."""


def _text(text: str, column: str, problem: str, row: int, where: str) -> str:
    value = text.strip()
    if not value:
        raise InvalidInput(f"{where}: row {row}, column {column!r}: {problem}")
    if len(value) > MAX_CELL_CHARS:
        raise InvalidInput(f"{where}: row {row}, column {column!r}: longer than {MAX_CELL_CHARS} characters")
    if not value.isprintable():
        raise InvalidInput(f"{where}: row {row}, column {column!r}: holds a control character (a line break, NUL...)")
    return value


# --- judging the predictions


@dataclass(frozen=True)
class BiasReport:
    passed: bool
    failures: tuple[str, ...]
    """Each names the metric, the sensitive feature (and group), the figure and the threshold."""
    figures: dict[str, Any]
    """JSON values: ``rows``, ``accuracy``, ``positive_label``, ``thresholds`` and, under ``sensitive_features``,
    each feature's ``demographic_parity_difference``, ``demographic_parity_ratio``, ``equalized_odds_difference``
    and ``groups`` (per group: ``count``, ``selection_rate``, ``accuracy``, ``true_positive_rate``,
    ``false_positive_rate``; a rate is null when undefined)."""

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": list(self.failures), "figures": self.figures}

    def summary(self) -> str:
        """One line: the headline figures when passed, else the first failure and how many more."""
        if not self.passed:
            more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            return f"blocked: {self.failures[0]}{more}"
        parts = [
            f"DPD {_fmt(f['demographic_parity_difference'])}, DPR {_fmt(f['demographic_parity_ratio'])}, "
            f"EOD {_fmt(f['equalized_odds_difference'])} ({name})"
            for name, f in self.figures["sensitive_features"].items()
        ]
        tail = f"accuracy {_fmt(self.figures['accuracy'])} on {self.figures['rows']:,} rows"
        return "passed: " + "; ".join([*parts, tail])


def _fmt(value: float | int | None) -> str:
    return "undefined" if value is None else format(value, "g")


def _round(value: float) -> float:
    return round(float(value), DECIMALS) + 0.0  # + 0.0: no "-0.0"


def evaluate_bias(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    positive_label: str,
    policy: BiasPolicy,
) -> BiasReport:
    """Judge predictions against labels for each sensitive feature in ``groups`` (in its order) on its own.

    ``InvalidInput`` when the lengths differ or there are no rows or no sensitive features.
    """
    rows = len(y_true)
    if len(y_pred) != rows:
        raise InvalidInput(f"the model gave {len(y_pred):,} predictions for {rows:,} rows of the evaluation set")
    if rows == 0:
        raise InvalidInput("the evaluation set has no rows")
    if not groups:
        raise InvalidInput("evaluation.sensitive_features: no sensitive feature to judge")
    for name, values in groups.items():
        if len(values) != rows:
            raise InvalidInput(f"sensitive feature {name!r} has {len(values):,} values for {rows:,} rows")
    true_text = np.asarray(list(y_true), dtype=object)
    pred_text = np.asarray(list(y_pred), dtype=object)
    failures: list[str] = []
    by_feature: dict[str, Any] = {}
    for name, values in groups.items():
        group = np.asarray(list(values), dtype=object)
        by_feature[name], found = _judge_feature(name, true_text, pred_text, group, positive_label, policy)
        failures.extend(found)
    figures = {
        "rows": rows,
        "accuracy": _round(float(np.mean(true_text == pred_text))),
        "positive_label": positive_label,
        "thresholds": {key: getattr(policy, key) for key in _THRESHOLDS},
        "sensitive_features": by_feature,
    }
    return BiasReport(passed=not failures, failures=tuple(failures), figures=figures)


def _judge_feature(
    name: str,
    true_text: npt.NDArray[Any],
    pred_text: npt.NDArray[Any],
    group: npt.NDArray[Any],
    positive_label: str,
    policy: BiasPolicy,
) -> tuple[dict[str, Any], list[str]]:
    """One sensitive feature's figures and failures."""
    distinct = len(set(group.tolist()))
    if distinct > MAX_GROUPS:
        return {"groups_count": distinct}, [
            f"{name} has {distinct:,} groups in the evaluation set; at most {MAX_GROUPS} can be judged"
        ]
    truth = (true_text == positive_label).astype(np.int64)
    pred = (pred_text == positive_label).astype(np.int64)
    per_group = _per_group(truth, pred, true_text, pred_text, group)
    figures = _disparities(truth, pred, group, per_group)
    figures["groups"] = per_group
    return figures, _failures(name, figures, positive_label, policy)


def _per_group(
    truth: npt.NDArray[np.int64],
    pred: npt.NDArray[np.int64],
    true_text: npt.NDArray[Any],
    pred_text: npt.NDArray[Any],
    group: npt.NDArray[Any],
) -> dict[str, dict[str, Any]]:
    """Each group's count, selection rate, accuracy, true and false positive rates (Fairlearn's ``MetricFrame``);
    a rate is None when the group has no row to compute it on."""
    from fairlearn.metrics import (
        MetricFrame,
        count,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    rates = MetricFrame(
        metrics={
            "count": count,
            "selection_rate": selection_rate,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
        },
        y_true=truth,
        y_pred=pred,
        sensitive_features=group,
    ).by_group
    accuracy = MetricFrame(
        metrics=accuracy_score, y_true=true_text, y_pred=pred_text, sensitive_features=group
    ).by_group
    out: dict[str, dict[str, Any]] = {}
    for value in rates.index:
        in_group = group == value
        positives = int(truth[in_group].sum())
        negatives = int(in_group.sum()) - positives
        out[str(value)] = {
            "count": int(rates.loc[value, "count"]),
            "selection_rate": _round(rates.loc[value, "selection_rate"]),
            "accuracy": _round(accuracy.loc[value]),
            "true_positive_rate": _round(rates.loc[value, "true_positive_rate"]) if positives else None,
            "false_positive_rate": _round(rates.loc[value, "false_positive_rate"]) if negatives else None,
        }
    return out


def _disparities(
    truth: npt.NDArray[np.int64],
    pred: npt.NDArray[np.int64],
    group: npt.NDArray[Any],
    per_group: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Fairlearn's demographic parity difference and ratio and equalized odds difference for one feature."""
    from fairlearn.metrics import (
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
    )

    dpd = demographic_parity_difference(truth, pred, sensitive_features=group)
    if max(g["selection_rate"] for g in per_group.values()) == 0:
        dpr = 1.0  # no group selected at all: the rates are equal (Fairlearn's 0/0 is NaN)
    else:
        dpr = demographic_parity_ratio(truth, pred, sensitive_features=group)
    rates_defined = all(
        g["true_positive_rate"] is not None and g["false_positive_rate"] is not None for g in per_group.values()
    )
    eod = equalized_odds_difference(truth, pred, sensitive_features=group) if rates_defined else None
    return {
        "demographic_parity_difference": _round(dpd),
        "demographic_parity_ratio": _round(dpr),
        "equalized_odds_difference": None if eod is None else _round(eod),
    }


def _failures(name: str, figures: dict[str, Any], positive_label: str, policy: BiasPolicy) -> list[str]:
    failures: list[str] = []
    dpd, dpr, eod = (figures[k] for k in _DISPARITIES)
    if dpd > policy.max_demographic_parity_difference:
        limit = _fmt(policy.max_demographic_parity_difference)
        failures.append(f"demographic_parity_difference for {name} is {_fmt(dpd)} > {limit}")
    if dpr < policy.min_demographic_parity_ratio:
        limit = _fmt(policy.min_demographic_parity_ratio)
        failures.append(f"demographic_parity_ratio for {name} is {_fmt(dpr)} < {limit}")
    if eod is None:
        failures.append(_undefined_odds(name, figures["groups"], positive_label))
    elif eod > policy.max_equalized_odds_difference:
        limit = _fmt(policy.max_equalized_odds_difference)
        failures.append(f"equalized_odds_difference for {name} is {_fmt(eod)} > {limit}")
    for value, g in figures["groups"].items():
        if g["count"] < policy.min_group_size:
            failures.append(
                f"group size for {name}={value} is {g['count']} < {policy.min_group_size}: too few rows to judge"
            )
        if g["accuracy"] < policy.min_group_accuracy:
            limit = _fmt(policy.min_group_accuracy)
            failures.append(f"accuracy for {name}={value} is {_fmt(g['accuracy'])} < {limit}")
    return failures


def _undefined_odds(name: str, groups: dict[str, dict[str, Any]], positive_label: str) -> str:
    """Why the equalized odds difference is undefined: the first group without a true or false positive rate."""
    for value, g in groups.items():
        missing = None
        if g["true_positive_rate"] is None:
            missing = f"no row labelled {positive_label!r}"
        elif g["false_positive_rate"] is None:
            missing = f"no row labelled other than {positive_label!r}"
        if missing is not None:
            return f"equalized_odds_difference for {name} is undefined: group {name}={value} has {missing}"
    raise InvariantViolated(f"equalized odds difference for {name} undefined, yet every group has its rates")
