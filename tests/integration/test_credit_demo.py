"""The two credit-approval demo packages against the bias gate's default policy: the fair model passes, the biased
one is blocked with its figures. Each model runs from its package with onnxruntime itself, on its own eval.csv."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelmarket.demo._credit import build_credit_approval, build_credit_approval_biased
from modelmarket.governance.bias import BiasReport, evaluate_bias, read_evaluation_set
from modelmarket.governance.policy import BiasPolicy
from modelmarket.registry.manifest import Manifest, load_manifest

FAIR, BIASED = "credit-approval", "credit-approval-biased"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("credit")
    assert build_credit_approval(out / FAIR, lambda _: None) == out / FAIR
    assert build_credit_approval_biased(out / BIASED, lambda _: None) == out / BIASED
    return out


def run_onnx(package: Path, manifest: Manifest, features: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    ev = manifest.evaluation
    assert ev is not None and ev.input is not None and ev.output is not None
    return np.asarray(session.run([ev.output], {ev.input: features.astype(np.float32)})[0])


def judged(package: Path) -> tuple[Manifest, BiasReport]:
    manifest = load_manifest(package)
    ev = manifest.evaluation
    assert ev is not None
    data = read_evaluation_set(package / ev.dataset, ev, BiasPolicy().max_rows)
    predicted = run_onnx(package, manifest, data.features)
    assert predicted.dtype == np.int64 and predicted.shape == (len(data.labels),)
    report = evaluate_bias(data.labels, [str(p) for p in predicted], data.groups, ev.positive_label, BiasPolicy())
    return manifest, report


def test_the_fair_model_passes_the_default_policy(packages: Path) -> None:
    manifest, report = judged(packages / FAIR)
    assert (manifest.modality, manifest.runtime, manifest.task) == ("tabular", "onnx", "tabular-classification")
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs] == [("features", "FP32", [-1, 5])]
    assert report.passed, report.failures
    assert report.summary().startswith("passed: DPD ")
    assert report.figures["rows"] == 2_000
    assert report.figures["accuracy"] > 0.8
    for feature in ("sex", "age_band"):
        figures = report.figures["sensitive_features"][feature]
        assert figures["demographic_parity_difference"] <= 0.05
        assert figures["equalized_odds_difference"] <= 0.05


def test_the_biased_demo_model_is_blocked_with_its_figures(packages: Path) -> None:
    manifest, report = judged(packages / BIASED)
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs] == [("features", "FP32", [-1, 6])]
    assert not report.passed
    sex = report.figures["sensitive_features"]["sex"]
    women, men = sex["groups"]["F"], sex["groups"]["M"]
    # far beyond the thresholds: women are approved at a third of the men's rate, creditworthy women mostly declined
    assert sex["demographic_parity_difference"] > 0.3
    assert sex["demographic_parity_ratio"] < 0.5
    assert sex["equalized_odds_difference"] > 0.3
    assert women["selection_rate"] < men["selection_rate"] / 2
    assert women["true_positive_rate"] < men["true_positive_rate"] - 0.3
    failures = dict(f.split(" is ", 1) for f in report.failures)
    assert failures["demographic_parity_difference for sex"] == f"{sex['demographic_parity_difference']:g} > 0.1"
    assert failures["demographic_parity_ratio for sex"] == f"{sex['demographic_parity_ratio']:g} < 0.8"
    assert failures["equalized_odds_difference for sex"] == f"{sex['equalized_odds_difference']:g} > 0.1"
    assert not any("age_band" in f for f in report.failures)  # judged on its own, age is not where the bias is
    assert report.summary().startswith("blocked: demographic_parity_difference for sex is ")
    assert report.summary().endswith(f"(+{len(report.failures) - 1} more)")


def test_cards_show_the_measured_figures(packages: Path) -> None:
    for name in (FAIR, BIASED):
        manifest, report = judged(packages / name)
        metrics = {m.name: m.value for m in manifest.card.metrics}
        assert metrics["accuracy"] == f"{report.figures['accuracy']:.4f}"
        for feature, figures in report.figures["sensitive_features"].items():
            for key in ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference"):
                assert metrics[f"{key} ({feature})"] == f"{figures[key]:.4f}"
    assert "blocked: demographic_parity_difference for sex" in (load_manifest(packages / BIASED).card.limitations or "")


def test_the_examples_give_their_expected_labels(packages: Path) -> None:
    for name in (FAIR, BIASED):
        manifest = load_manifest(packages / name)
        assert manifest.examples is not None and len(manifest.examples) == 2
        session = ort.InferenceSession(str(packages / name / "model.onnx"), providers=["CPUExecutionProvider"])
        for example in manifest.examples:
            (given,) = example.inputs
            assert given.shape is not None
            x = np.asarray(given.data, dtype=np.float32).reshape(given.shape)
            assert example.expect is not None
            assert session.run(["label"], {given.name: x})[0].tolist() == example.expect["label"]


def test_building_again_gives_the_same_bytes(packages: Path, tmp_path: Path) -> None:
    build_credit_approval(tmp_path / FAIR, lambda _: None)
    build_credit_approval_biased(tmp_path / BIASED, lambda _: None)

    def hashes(root: Path) -> dict[str, str]:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    first, second = hashes(packages), hashes(tmp_path)
    assert set(first) == {f"{n}/{f}" for n in (FAIR, BIASED) for f in ("eval.csv", "model.onnx", "modelmarket.yaml")}
    assert first == second
