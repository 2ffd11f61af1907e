"""The ``credit-approval`` and ``credit-approval-biased`` packages: two credit-approval classifiers on a generated
data set, one the bias gate passes and one it blocks (docs/bias.md).

The data set (``credit_data``): ``CREDIT_ROWS`` applicants drawn with ``numpy.random.default_rng(CREDIT_SEED)``,
one column at a time in this order:

1. ``sex``: ``F`` when a uniform draw is below 0.5, else ``M``;
2. ``age_band``: ``18-29``, ``30-49`` or ``50+`` with probabilities 0.3, 0.4, 0.3;
3. ``income_k`` (yearly income in thousands): ``exp(Normal(ln 45, 0.45))``, one decimal;
4. ``debt_ratio`` (debt payments over income): ``Beta(2, 5)``, three decimals;
5. ``credit_history_years``: ``floor(Gamma(shape 2, scale 4))``, at most 40;
6. ``late_payments`` (in the last two years): ``Poisson(0.8)``, at most 10;
7. ``employment_years``: ``Gamma(shape 2, scale 3)``, at most 40, one decimal;
8. ``noise``: ``Normal(0, 0.8)``;
9. ``cut``: a uniform draw.

No feature depends on ``sex`` or ``age_band``. The true outcome ``good_credit`` is 1 when

    0.035 (income_k - 45) - 5 (debt_ratio - 0.3) + 0.1 (credit_history_years - 8) - 0.7 late_payments
    + 0.06 (employment_years - 6) + 0.9 + noise > 0

and 0 otherwise: a formula of the non-sensitive features only. ``approved_historically`` is the past lender's
decision: ``good_credit``, except that half of the approvals of women were cut (0 when ``sex`` is ``F`` and
``cut`` < ``HISTORICAL_CUT``).

The first ``TRAIN_ROWS`` rows train the models; the remaining rows are ``eval.csv`` in both packages, labelled
with the true outcome. ``credit-approval`` is trained on ``good_credit`` from the five non-sensitive features;
``credit-approval-biased`` on ``approved_historically`` from the same features plus ``sex_female`` (1 for ``F``).
Both are a standardisation and a logistic regression (scikit-learn) exported to ONNX. Every figure written into a
card is measured here: the exported model runs through the onnx runtime on ``eval.csv`` and ``evaluate_bias``
judges its predictions against the default ``BiasPolicy``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelmarket.demo._files import decimal4, manifest, spec_for, tensor, write_bytes, write_manifest
from modelmarket.demo._onnx import logistic_onnx, onnx_labels
from modelmarket.governance.bias import BiasReport, evaluate_bias, read_evaluation_set
from modelmarket.governance.policy import BiasPolicy
from modelmarket.registry.declarations import EvaluationDecl

CREDIT_SEED = 2024
CREDIT_ROWS = 6_000
TRAIN_ROWS = 4_000
HISTORICAL_CUT = 0.5
"""The share of women's approvals the historical decisions withdrew."""
FEATURES: tuple[str, ...] = ("income_k", "debt_ratio", "credit_history_years", "late_payments", "employment_years")
BIASED_FEATURES: tuple[str, ...] = (*FEATURES, "sex_female")
SENSITIVE_FEATURES: tuple[str, ...] = ("sex", "age_band")
LABEL = "good_credit"
EVAL_FILE = "eval.csv"
CSV_COLUMNS: tuple[str, ...] = (*BIASED_FEATURES, *SENSITIVE_FEATURES, LABEL)
AGE_BANDS: tuple[str, ...] = ("18-29", "30-49", "50+")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
TextArray = npt.NDArray[np.str_]


@dataclass(frozen=True)
class CreditData:
    """Applicants, one row each: the features, the sensitive attributes and both labels."""

    features: FloatArray
    """``FEATURES`` columns."""
    sex: TextArray
    age_band: TextArray
    good_credit: IntArray
    """The true outcome: a formula of the features plus noise."""
    approved_historically: IntArray
    """The past decisions: ``good_credit`` with half of the women's approvals cut."""

    def matrix(self, *, with_sex: bool) -> FloatArray:
        """The input rows: ``FEATURES``, and ``sex_female`` last when ``with_sex``."""
        if not with_sex:
            return self.features
        return np.column_stack([self.features, (self.sex == "F").astype(np.float64)])

    def rows(self, start: int, stop: int) -> CreditData:
        part = slice(start, stop)
        return CreditData(
            self.features[part], self.sex[part], self.age_band[part], self.good_credit[part],
            self.approved_historically[part],
        )  # fmt: skip


def credit_data(rows: int = CREDIT_ROWS, seed: int = CREDIT_SEED) -> CreditData:
    """The generated applicants (see the module docstring for every draw and the label formula)."""
    rng = np.random.default_rng(seed)
    sex = np.where(rng.random(rows) < 0.5, "F", "M")
    age_band = rng.choice(np.array(AGE_BANDS), size=rows, p=[0.3, 0.4, 0.3])
    income_k = np.round(np.exp(rng.normal(np.log(45.0), 0.45, rows)), 1)
    debt_ratio = np.round(rng.beta(2.0, 5.0, rows), 3)
    credit_history_years = np.minimum(np.floor(rng.gamma(2.0, 4.0, rows)), 40.0)
    late_payments = np.minimum(rng.poisson(0.8, rows), 10).astype(np.float64)
    employment_years = np.round(np.minimum(rng.gamma(2.0, 3.0, rows), 40.0), 1)
    noise = rng.normal(0.0, 0.8, rows)
    cut = rng.random(rows) < HISTORICAL_CUT
    score = (
        0.035 * (income_k - 45.0)
        - 5.0 * (debt_ratio - 0.3)
        + 0.1 * (credit_history_years - 8.0)
        - 0.7 * late_payments
        + 0.06 * (employment_years - 6.0)
        + 0.9
        + noise
    )
    good_credit = (score > 0).astype(np.int64)
    approved_historically = np.where((sex == "F") & cut, 0, good_credit).astype(np.int64)
    features = np.column_stack([income_k, debt_ratio, credit_history_years, late_payments, employment_years])
    return CreditData(features, sex, age_band, good_credit, approved_historically)


def credit_split() -> tuple[CreditData, CreditData]:
    """``(train, eval)``: the first ``TRAIN_ROWS`` rows and the rest."""
    data = credit_data()
    return data.rows(0, TRAIN_ROWS), data.rows(TRAIN_ROWS, CREDIT_ROWS)


def eval_csv(data: CreditData) -> bytes:
    """The evaluation set as CSV: ``CSV_COLUMNS``, numbers written as generated (stable text)."""
    out = io.StringIO()
    out.write(",".join(CSV_COLUMNS) + "\n")
    x = data.matrix(with_sex=True)
    for i in range(len(data.good_credit)):
        income, debt, history, late, employment, female = x[i]
        out.write(
            f"{income:.1f},{debt:.3f},{history:.0f},{late:.0f},{employment:.1f},{female:.0f},"
            f"{data.sex[i]},{data.age_band[i]},{data.good_credit[i]}\n"
        )
    return out.getvalue().encode("utf-8")


def train_onnx(x_train: FloatArray, y_train: IntArray, name: str) -> bytes:
    """Fit scaler + logistic regression and return the ONNX model bytes (stable across runs): input ``features``
    FP32 ``[-1, k]``, outputs ``label`` INT64 and ``probabilities`` FP32 ``[-1, 2]`` (no ZipMap)."""
    return logistic_onnx(x_train, y_train, name=name, input_name="features", max_iter=1000)


def build_credit_approval(package_dir: Path, progress: Callable[[str], None]) -> Path:
    """The fair model: trained on the true outcome, without the sensitive attributes."""
    return _build(package_dir, progress, biased=False)


def build_credit_approval_biased(package_dir: Path, progress: Callable[[str], None]) -> Path:
    """The biased model: trained on the historical decisions, with ``sex_female`` among its inputs."""
    return _build(package_dir, progress, biased=True)


def _build(package_dir: Path, progress: Callable[[str], None], *, biased: bool) -> Path:
    name = "credit-approval-biased" if biased else "credit-approval"
    features = BIASED_FEATURES if biased else FEATURES
    progress(f"{name}: training a logistic regression on {TRAIN_ROWS:,} generated applicants (seed {CREDIT_SEED})")
    train, held_out = credit_split()
    target = train.approved_historically if biased else train.good_credit
    model = train_onnx(train.matrix(with_sex=biased), target, name.replace("-", "_"))
    write_bytes(package_dir / "model.onnx", model)
    write_bytes(package_dir / EVAL_FILE, eval_csv(held_out))
    doc = manifest(
        name=name,
        task="tabular-classification",
        modality="tabular",
        runtime="onnx",
        license_id="MIT",
        artifacts=["model.onnx", EVAL_FILE],
        parameters={"model_file": "model.onnx"},
        inputs=[tensor("features", "FP32", [-1, len(features)])],
        outputs=[tensor("label", "INT64", [-1]), tensor("probabilities", "FP32", [-1, 2])],
        unit="request",
        price_per_iu="0.0005",
    )
    evaluation = {
        "dataset": EVAL_FILE,
        "label": LABEL,
        "features": list(features),
        "sensitive_features": list(SENSITIVE_FEATURES),
        "input": "features",
        "output": "label",
        "positive_label": "1",
    }
    eval_set = read_evaluation_set(
        package_dir / EVAL_FILE, EvaluationDecl.model_validate(evaluation), len(held_out.sex)
    )
    predicted = onnx_labels(spec_for(package_dir, doc), "features", eval_set.features)
    report = evaluate_bias(eval_set.labels, [str(p) for p in predicted], eval_set.groups, "1", BiasPolicy())
    progress(f"{name}: on {EVAL_FILE} against the default bias policy, {report.summary()}")
    doc["card"] = _card(report, biased=biased, n_train=TRAIN_ROWS, n_eval=len(held_out.sex))
    doc["evaluation"] = evaluation
    doc["examples"] = _examples(eval_set.features, eval_set.labels, predicted)
    write_manifest(package_dir, doc)
    return package_dir


def _examples(x: FloatArray, labels: Sequence[str], predicted: IntArray) -> list[dict[str, Any]]:
    """Two smoke-test calls: the first held-out applicant predicted approved and the first predicted declined,
    each where the prediction matches the true outcome."""
    examples = []
    for outcome, title in ((1, "approved-applicant"), (0, "declined-applicant")):
        row = next(i for i in range(len(labels)) if predicted[i] == outcome and labels[i] == str(outcome))
        values = [float(v) for v in x[row]]
        examples.append(
            {
                "name": title,
                "inputs": [{"name": "features", "shape": [1, len(values)], "data": [values]}],
                "expect": {"label": [outcome]},
            }
        )
    return examples


def _metrics(report: BiasReport) -> list[dict[str, str]]:
    dataset = f"{EVAL_FILE}, held-out generated applicants (seed {CREDIT_SEED})"
    metrics = [{"name": "accuracy", "value": decimal4(report.figures["accuracy"]), "dataset": dataset}]
    for feature, figures in report.figures["sensitive_features"].items():
        for key in ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference"):
            metrics.append({"name": f"{key} ({feature})", "value": decimal4(figures[key]), "dataset": dataset})
    return metrics


def _card(report: BiasReport, *, biased: bool, n_train: int, n_eval: int) -> dict[str, Any]:
    generated = (
        f"{n_train:,} synthetic applicants generated by modelmarket.demo._credit with seed {CREDIT_SEED} "
        "(income, debt ratio, credit history, late payments, employment; sex and age band drawn independently "
        "of them; docs/bias.md gives every draw and the formula)"
    )
    evaluation_data = (
        f"{EVAL_FILE}: {n_eval:,} further applicants from the same generator, never seen in training, labelled "
        f"with the true outcome ({LABEL}) and carrying the sensitive columns sex and age_band."
    )
    if biased:
        return {
            "summary": "Credit approval learned from historically biased decisions: the bias gate blocks it.",
            "description": (
                "Standardised applicant features plus sex_female fed to a logistic regression (scikit-learn), "
                "exported to ONNX. It learned past decisions that withdrew half of the approvals of women, and "
                "it repeats them: it approves far fewer creditworthy women than men. Input: one row of "
                f"{len(BIASED_FEATURES)} numbers per applicant ({', '.join(BIASED_FEATURES)}); output: 1 to approve, "
                "0 to decline, and the probability of each."
            ),
            "intended_use": "Demonstrating the publish gate's bias evaluation only; never for credit decisions.",
            "limitations": (
                "Deliberately unfair: takes the applicant's sex as an input and was trained on decisions biased "
                "against women. Synthetic data; " + report.summary()
            ),
            "training_data": f"{generated}; labelled with the historical decisions (approved_historically).",
            "evaluation_data": evaluation_data,
            "metrics": _metrics(report),
        }
    return {
        "summary": "Credit approval from five financial features; no sensitive attribute among its inputs.",
        "description": (
            "Standardised applicant features fed to a logistic regression (scikit-learn), exported to ONNX. "
            f"Input: one row of {len(FEATURES)} numbers per applicant ({', '.join(FEATURES)}); output: 1 to "
            "approve, 0 to decline, and the probability of each."
        ),
        "intended_use": "Demonstrating a tabular model on the marketplace and the bias gate it passes.",
        "limitations": (
            "Trained and evaluated on synthetic applicants whose outcome is a known formula plus noise; not "
            "calibrated for, and not to be used on, real credit applications."
        ),
        "training_data": f"{generated}; labelled with the true outcome ({LABEL}).",
        "evaluation_data": evaluation_data,
        "metrics": _metrics(report),
    }
