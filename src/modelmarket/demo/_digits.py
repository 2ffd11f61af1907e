"""The ``digits`` package: a scikit-learn classifier on the bundled digits images, exported to ONNX."""

from __future__ import annotations

from collections.abc import Callable
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
from modelmarket.runtime.base import ModelSpec, Tensor

DIGITS_SEED = 42
DIGITS_TEST_SIZE = 0.25

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
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = LogisticRegression(max_iter=2000)
    pipeline = Pipeline([("scale", StandardScaler()), ("classify", classifier)])
    pipeline.fit(x_train, y_train)
    model = convert_sklearn(
        pipeline,
        name="digits",
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        final_types=[("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, 10]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx lists opset imports in set order, which changes with the hash seed; sort them for stable bytes.
    opsets = sorted((entry.domain, entry.version) for entry in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    return bytes(model.SerializeToString())


def onnx_labels(spec: ModelSpec, x: FloatArray) -> IntArray:
    """Digits predicted by the packaged ONNX model, run through the onnx runtime plug-in."""
    from modelmarket.runtime.runtimes.onnx import OnnxRuntime

    runtime = OnnxRuntime(spec)
    runtime.load()
    pixels = x.astype(np.float32)
    outputs = runtime.predict([Tensor("pixels", "FP32", list(pixels.shape), pixels)], {})
    return np.asarray(next(t.data for t in outputs if t.name == "label"), dtype=np.int64)


def build_digits(package_dir: Path, examples_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package and ``examples/digit.json``; the card accuracy is measured on the exported model."""
    progress("digits: training a logistic regression on the sklearn digits and exporting it to ONNX")
    x_train, x_test, y_train, y_test = digits_split()
    write_bytes(package_dir / "model.onnx", train_onnx(x_train, y_train))
    doc = manifest(
        name="digits",
        task="image-classification",
        modality="image",
        runtime="onnx",
        license_id="BSD-3-Clause",
        artifacts=["model.onnx"],
        parameters={"model_file": "model.onnx"},
        inputs=[tensor("pixels", "FP32", [-1, 64])],
        outputs=[tensor("label", "INT64", [-1]), tensor("probabilities", "FP32", [-1, 10])],
        unit="image",
        price_per_iu="0.0010",
    )
    correct = onnx_labels(spec_for(package_dir, doc), x_test) == y_test
    accuracy = float(np.mean(correct))
    progress(f"digits: held-out accuracy of the exported ONNX model {accuracy:.4f}")
    doc["card"] = _card(accuracy, n_train=len(y_train), n_test=len(y_test))
    write_manifest(package_dir, doc)
    # The example is the first held-out image the model gets right, so the demo shows a sensible answer.
    row = int(np.flatnonzero(correct)[0])
    example = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x_test[row].tolist()}
    write_json(examples_dir / "digit.json", {"id": f"digits-holdout-{row}", "inputs": [example]})
    return package_dir


def _card(accuracy: float, *, n_train: int, n_test: int) -> dict[str, Any]:
    split = f"sklearn digits, {DIGITS_TEST_SIZE:.0%} stratified hold-out, seed {DIGITS_SEED}"
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
    }
