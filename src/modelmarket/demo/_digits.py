"""The ``digits`` package: a scikit-learn classifier on the bundled digits images, exported to ONNX."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelmarket.demo._files import (
    decimal4,
    manifest,
    spec_for,
    tensor,
    write_bytes,
    write_json,
    write_manifest,
)
from modelmarket.demo._onnx import logistic_onnx, mlp_onnx, onnx_labels

DIGITS_SEED = 42
DIGITS_TEST_SIZE = 0.25
N_FEATURES = 64  # 8x8 pixels
N_CLASSES = 10
DATASET = "UCI Optical Recognition of Handwritten Digits (scikit-learn digits)"
DATASET_URI = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def digits_split() -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
    """``(X_train, X_test, y_train, y_test)``: the sklearn digits, 25% stratified hold-out, seed 42."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_all = np.asarray(digits.data, dtype=np.float64)
    y_all = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x_all, y_all, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SEED, stratify=y_all
    )
    return (
        np.asarray(x_train, dtype=np.float64),
        np.asarray(x_test, dtype=np.float64),
        np.asarray(y_train, dtype=np.int64),
        np.asarray(y_test, dtype=np.int64),
    )


def train_onnx(x_train: FloatArray, y_train: IntArray) -> bytes:
    """Fit scaler + logistic regression and return the ONNX model bytes (stable across runs)."""
    return logistic_onnx(x_train, y_train, name="digits", input_name="pixels", max_iter=2000)


@dataclass(frozen=True)
class _Measured:
    """A digits classifier's package manifest, before its card, and its figures on the hold-out images."""

    doc: dict[str, Any]
    accuracy: float
    per_class: dict[int, float]
    correct: npt.NDArray[np.bool_]
    x_test: FloatArray
    y_test: IntArray
    n_train: int


def _classifier(package_dir: Path, name: str, model: bytes, price: str, progress: Callable[[str], None]) -> _Measured:
    """Write ``model`` (ONNX) into the package, its manifest's contract, and measure it on the hold-out images."""
    _, x_test, y_train, y_test = digits_split()
    write_bytes(package_dir / "model.onnx", model)
    doc = manifest(
        name=name,
        task="image-classification",
        modality="image",
        runtime="onnx",
        license_id="BSD-3-Clause",
        artifacts=["model.onnx"],
        parameters={"model_file": "model.onnx"},
        inputs=[tensor("pixels", "FP32", [-1, 64])],
        outputs=[tensor("label", "INT64", [-1]), tensor("probabilities", "FP32", [-1, 10])],
        unit="image",
        price_per_iu=price,
    )
    predicted = onnx_labels(spec_for(package_dir, doc), "pixels", x_test)
    correct = predicted == y_test
    accuracy = float(np.mean(correct))
    progress(f"{name}: held-out accuracy of the exported ONNX model {accuracy:.4f}")
    per_class = {int(d): float(np.mean(correct[y_test == d])) for d in range(N_CLASSES)}
    return _Measured(doc, accuracy, per_class, correct, x_test, y_test, len(y_train))


def _holdout_example(m: _Measured) -> tuple[int, list[dict[str, Any]]]:
    """The first held-out image the model gets right, as the manifest's example (the gate's smoke test sends it
    and expects the same digit)."""
    row = int(np.flatnonzero(m.correct)[0])
    inputs = [{"name": "pixels", "shape": [1, N_FEATURES], "data": m.x_test[row].tolist()}]
    return row, [{"name": f"holdout-{row}", "inputs": inputs, "expect": {"label": [int(m.y_test[row])]}}]


def build_digits(package_dir: Path, examples_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package and ``examples/digit.json``; the card's figures are measured on the exported model."""
    progress("digits: training a logistic regression on the sklearn digits and exporting it to ONNX")
    x_train, _, y_train, _ = digits_split()
    m = _classifier(package_dir, "digits", train_onnx(x_train, y_train), "0.0010", progress)
    doc, x_test, y_test = m.doc, m.x_test, m.y_test
    doc["card"] = _card(m.accuracy, m.per_class, n_train=m.n_train, n_test=len(y_test))
    doc["lineage"] = _lineage(n_train=m.n_train, n_test=len(y_test))
    # The example is the first held-out image the model gets right, so the demo shows a sensible answer; the
    # publish gate's smoke test sends the same image and expects the same digit.
    row, doc["examples"] = _holdout_example(m)
    pixels = x_test[row].tolist()
    write_manifest(package_dir, doc)
    example = {"name": "pixels", "datatype": "FP32", "shape": [1, N_FEATURES], "data": pixels}
    write_json(examples_dir / "digit.json", {"id": f"digits-holdout-{row}", "inputs": [example]})
    write_holdout(examples_dir / HOLDOUT_FILE, x_test, y_test)
    return package_dir


HOLDOUT_FILE = "digits-holdout.jsonl"
MLP_HIDDEN = 32


def write_holdout(path: Path, x_test: FloatArray, y_test: IntArray) -> None:
    """The held-out images as a bake-off dataset (``lab bakeoff --dataset``): one JSON line per image, its OIP
    inputs and its label. The cards' test accuracies are measured on exactly these."""
    lines = []
    for pixels, label in zip(x_test.tolist(), y_test.tolist(), strict=True):
        inputs = [{"name": "pixels", "datatype": "FP32", "shape": [1, N_FEATURES], "data": pixels}]
        lines.append(json.dumps({"inputs": inputs, "label": str(label)}, separators=(",", ":")))
    write_bytes(path, ("\n".join(lines) + "\n").encode())


def build_digits_mlp(package_dir: Path, progress: Callable[[str], None]) -> Path:
    """``digits-mlp``: the same task, data and split as ``digits``, another classifier (a small neural network),
    so a bake-off has two models to compare."""
    progress("digits-mlp: training a one-hidden-layer perceptron on the sklearn digits and exporting it to ONNX")
    x_train, _, y_train, _ = digits_split()
    model = mlp_onnx(x_train, y_train, name="digits-mlp", input_name="pixels", hidden=MLP_HIDDEN, seed=DIGITS_SEED)
    m = _classifier(package_dir, "digits-mlp", model, "0.0020", progress)
    doc = m.doc
    card = _card(m.accuracy, m.per_class, n_train=m.n_train, n_test=len(m.y_test))
    card["summary"] = "Handwritten digit classifier (0-9) for 8x8 grey-level images, a small neural network."
    card["description"] = (
        f"Standardised pixels fed to a perceptron with one hidden layer of {MLP_HIDDEN} ReLU units (scikit-learn), "
        "exported to ONNX. The same input and outputs as `digits`, learned from the same images: the demo's "
        "second digits model, for bake-offs."
    )
    card["tags"] = ["scikit-learn", "onnx", "mlp", "neural-network", "digits"]
    card["details"] = {
        **card["details"],
        "model_type": f"Multi-layer perceptron, one hidden layer of {MLP_HIDDEN} ReLU units",
        "architecture": (
            f"A scikit-learn Pipeline: StandardScaler, then MLPClassifier (64 inputs, {MLP_HIDDEN} ReLU units, "
            f"10 softmax outputs; adam, seed {DIGITS_SEED}, at most 1,000 iterations). Exported with skl2onnx "
            "without a ZipMap."
        ),
        "parameter_count": N_FEATURES * MLP_HIDDEN + MLP_HIDDEN + MLP_HIDDEN * N_CLASSES + N_CLASSES,
    }
    card["training"] = {
        **card["training"],
        "methodology": (
            f"The split of `digits` ({DIGITS_TEST_SIZE:.0%} stratified hold-out, seed {DIGITS_SEED}); the scaler is "
            f"fitted on the training part only; adam minimises the cross-entropy with the seed {DIGITS_SEED}. No "
            "hyper-parameter search; the same seed gives the same model bytes."
        ),
    }
    doc["card"] = card
    doc["lineage"] = _lineage(n_train=m.n_train, n_test=len(m.y_test))
    doc["examples"] = _holdout_example(m)[1]
    write_manifest(package_dir, doc)
    return package_dir


def _lineage(*, n_train: int, n_test: int) -> dict[str, Any]:
    about = "the copy bundled with scikit-learn (sklearn.datasets.load_digits), read from the installed package"
    return {
        "datasets": [
            {"name": DATASET, "role": "training", "uri": DATASET_URI, "description": f"{n_train} images; {about}"},
            {"name": DATASET, "role": "evaluation", "uri": DATASET_URI, "description": f"{n_test} held-out images"},
        ]
    }


def _card(accuracy: float, per_class: dict[int, float], *, n_train: int, n_test: int) -> dict[str, Any]:
    split = f"sklearn digits, {DIGITS_TEST_SIZE:.0%} stratified hold-out, seed {DIGITS_SEED}"
    by_class = ", ".join(f"{digit}: {decimal4(value)}" for digit, value in per_class.items())
    return {
        "summary": "Handwritten digit classifier (0-9) for 8x8 grey-level images.",
        "description": (
            "Standardised pixels fed to a multinomial logistic regression (scikit-learn), exported to "
            "ONNX. Input is one row of 64 pixel intensities per image (8x8, row-major, values 0..16); "
            "output is the predicted digit and the probability of each of the ten classes."
        ),
        "intended_use": "Demonstrating the marketplace end to end; classifying small centred 8x8 digits.",
        "limitations": (
            "Learned from the digits of 13 writers; the hold-out images come from the same writers, so "
            "accuracy on new handwriting will be lower. Inputs must be 8x8 block counts with values 0..16, "
            "as produced by the NIST preprocessing. Not suitable for real document processing."
        ),
        "training_data": (
            "scikit-learn's bundled digits data set (the test part of the UCI Optical Recognition of "
            f"Handwritten Digits data, 1,797 images), {n_train} images after the split ({split})."
        ),
        "evaluation_data": f"The {n_test} held-out images of the same split, never seen in training.",
        "metrics": [{"name": "test_accuracy", "value": decimal4(accuracy), "dataset": split}],
        "tags": ["scikit-learn", "onnx", "logistic-regression", "digits"],
        "library_name": "onnx",
        "details": {
            "developers": ["The modelmarket demo build (modelmarket.demo._digits), with scikit-learn and skl2onnx"],
            "contact": "The demo-provider account of this marketplace",
            "model_type": "Multinomial logistic regression on standardised pixels",
            "architecture": (
                "A scikit-learn Pipeline: StandardScaler (each pixel's mean and scale from the training images), "
                "then LogisticRegression (lbfgs solver, L2 penalty with C=1.0, at most 2,000 iterations), one "
                "weight per pixel and class plus one intercept per class. Exported with skl2onnx (opsets ai.onnx 17 "
                "and ai.onnx.ml 3) without a ZipMap, so the probabilities are a plain [n, 10] tensor."
            ),
            "parameter_count": N_CLASSES * N_FEATURES + N_CLASSES,
        },
        "primary_users": ["Developers trying out the marketplace", "Operators checking that a deployment serves"],
        "out_of_scope_uses": [
            "Reading digits from photographs, scans or forms (other sizes, resolutions and preprocessing)",
            "Any decision about a person, such as grading, identity checks or reading amounts on cheques",
        ],
        "intended_tasks": [
            "Classify one 8x8 image of a single handwritten digit (64 values 0..16) as 0-9, with class probabilities",
            "Serve as the image model of the marketplace demo: publish, serve, meter and bill an image call",
        ],
        "acceptable_use_policy": (
            "For demonstrations and tests of the marketplace. Do not use it to process real documents or to make "
            "or support decisions about people."
        ),
        "factors": {
            "relevant": (
                "The writer's handwriting style, the digit class, stroke thickness and centring, and the "
                "preprocessing: the NIST 32x32 bitmaps reduced to 8x8 counts of set pixels per 4x4 block."
            ),
            "evaluation": (
                "Accuracy is reported overall and per digit class on the stratified hold-out; writer identities "
                "are not in the data set, so no per-writer analysis is possible."
            ),
        },
        "quantitative_analyses": f"Held-out accuracy per digit class ({split}): {by_class}.",
        "ethical_considerations": (
            "The data are handwriting samples contributed to a public research data set; they hold no names or "
            "other personal data. The model makes no decisions about people; a digit reader used on real "
            "documents could (a misread amount or identifier), which is out of scope here."
        ),
        "caveats_and_recommendations": (
            "Preprocess inputs exactly like the training data (8x8 block counts, 0..16). Check the returned "
            "probabilities and send low-confidence images to a person. Retrain on your own writers and forms before "
            "any real use."
        ),
        "training": {
            "methodology": (
                f"A {DIGITS_TEST_SIZE:.0%} stratified hold-out split with seed {DIGITS_SEED}; the scaler is fitted on "
                "the training part only; the logistic regression minimises the L2-regularised multinomial "
                "cross-entropy with lbfgs. No hyper-parameter search; the same seed gives the same model bytes."
            ),
            "data_type": "8x8 grey-level images of isolated handwritten digits (64 integers 0..16) with labels 0-9.",
            "data_provenance": (
                "The UCI Optical Recognition of Handwritten Digits data (E. Alpaydin and C. Kaynak, 1998), made "
                "with NIST's preprocessing programs; the 1,797-image copy bundled with scikit-learn, read from the "
                "installed package (nothing is downloaded)."
            ),
            "data_curation": "None beyond NIST's preprocessing and the split: no filtering, cleaning or relabelling.",
            "data_size": f"{n_train:,} training images and {n_test:,} held-out images",
        },
        "compute": {
            "hardware": "One CPU core of the machine that builds the demo; no accelerator",
            "training_time": "A few seconds, the ONNX export included",
        },
        "energy": {
            "notes": (
                "Not measured: training takes a few seconds on one CPU core, so its energy is negligible (well "
                "under 0.001 kWh)."
            ),
        },
    }
