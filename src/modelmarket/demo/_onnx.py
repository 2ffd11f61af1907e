"""Scikit-learn classifiers of the demo catalogue as ONNX bytes, and their labels through the onnx runtime."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from modelmarket.runtime.base import ModelSpec, Tensor

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def logistic_onnx(x_train: FloatArray, y_train: IntArray, *, name: str, input_name: str, max_iter: int) -> bytes:
    """Fit a scaler + logistic regression and return its ONNX bytes, the same bytes every run: input
    ``input_name`` FP32 ``[-1, k]``, outputs ``label`` INT64 and ``probabilities`` FP32 ``[-1, classes]`` (no
    ZipMap)."""
    from sklearn.linear_model import LogisticRegression

    return classifier_onnx(LogisticRegression(max_iter=max_iter), x_train, y_train, name=name, input_name=input_name)


def mlp_onnx(x_train: FloatArray, y_train: IntArray, *, name: str, input_name: str, hidden: int, seed: int) -> bytes:
    """``logistic_onnx``'s contract, with a scaler + a one-hidden-layer perceptron (ReLU, adam, fixed seed)."""
    from sklearn.neural_network import MLPClassifier

    classifier = MLPClassifier(hidden_layer_sizes=(hidden,), random_state=seed, max_iter=1000)
    return classifier_onnx(classifier, x_train, y_train, name=name, input_name=input_name)


def classifier_onnx(classifier: object, x_train: FloatArray, y_train: IntArray, *, name: str, input_name: str) -> bytes:
    """Fit a scaler + ``classifier`` and return the ONNX bytes (stable across runs)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = Pipeline([("scale", StandardScaler()), ("classify", classifier)])
    pipeline.fit(x_train, y_train)
    classes = len(np.unique(y_train))
    model = convert_sklearn(
        pipeline,
        name=name,
        initial_types=[(input_name, FloatTensorType([None, x_train.shape[1]]))],
        final_types=[("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, classes]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx lists opset imports in set order, which changes with the hash seed; sort them for stable bytes.
    opsets = sorted((entry.domain, entry.version) for entry in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    return bytes(model.SerializeToString())


def onnx_labels(spec: ModelSpec, input_name: str, x: FloatArray) -> IntArray:
    """Labels predicted by the packaged ONNX model, run through the onnx runtime plug-in."""
    from modelmarket.runtime.runtimes.onnx import OnnxRuntime

    runtime = OnnxRuntime(spec)
    runtime.load()
    rows = x.astype(np.float32)
    outputs = runtime.predict([Tensor(input_name, "FP32", list(rows.shape), rows)], {})
    return np.asarray(next(t.data for t in outputs if t.name == "label"), dtype=np.int64)
