"""The provider-code runtimes, driven directly: ``python`` (the provider's ``predict.py``) and ``sklearn`` (skops
files, and plain pickles only under a strong sandbox); and the sandbox test packages of ``tests/sandbox_packages``.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier

import sandbox_packages as sp
from modelmarket.core.errors import InvalidInput
from modelmarket.registry.manifest import load_manifest
from modelmarket.runtime.base import ModelSpec, Tensor, TensorSpec
from modelmarket.runtime.plugins import load_runtime_class, validate_runtime_parameters
from modelmarket.runtime.runtimes.python_code import ModelContractError, PythonRuntime
from modelmarket.runtime.runtimes.sklearn_skops import SklearnRuntime, untrusted_names

pytestmark = pytest.mark.timeout(120)

X_SPEC = TensorSpec("x", "FP32", (-1, 4))
Y_SPEC = TensorSpec("y", "FP32", (-1, 4))


def make_spec(
    root: Path,
    runtime: str,
    artifacts: tuple[str, ...],
    *,
    inputs: tuple[TensorSpec, ...] = (X_SPEC,),
    outputs: tuple[TensorSpec, ...] = (Y_SPEC,),
    parameters: dict[str, Any] | None = None,
    sandbox: str = "process",
) -> ModelSpec:
    """A spec as the runner builds it: the artifacts are files at ``root/<path>``."""
    return ModelSpec(
        name="m",
        version="1.0.0",
        runtime=runtime,
        artifact_root=root,
        artifacts=artifacts,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters or {},
        sandbox=sandbox,
    )


def x_tensor(rows: int = 3) -> Tensor:
    data = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return Tensor(name="x", datatype="FP32", shape=[rows, 4], data=data)


# -- python: the provider's predict.py ----------------------------------------------------------------------------


def python_model(
    root: Path, source: str, *, outputs: tuple[TensorSpec, ...] = (Y_SPEC,), extra: dict[str, str] | None = None
) -> PythonRuntime:
    """A loaded python runtime over ``predict.py`` = ``source`` (plus ``extra`` artifact files)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "predict.py").write_text(textwrap.dedent(source))
    for name, text in (extra or {}).items():
        (root / name).write_text(text)
    runtime = PythonRuntime(make_spec(root, "python", ("predict.py", *(extra or {})), outputs=outputs))
    runtime.load()
    return runtime


def returning(expression: str, *, imports: str = "import numpy as np") -> str:
    """Source of a model whose predict returns ``expression`` (with ``x`` the input array)."""
    body = f"class Model:\n    def predict(self, inputs):\n        x = inputs['x']\n        return {expression}\n"
    return f"{imports}\n\n{body}"


def test_the_entry_points_name_the_provider_code_runtimes() -> None:
    assert load_runtime_class("python") is PythonRuntime
    assert load_runtime_class("sklearn") is SklearnRuntime
    assert PythonRuntime.provider_code and SklearnRuntime.provider_code


def test_load_gets_the_artifact_folder_and_predict_gets_the_inputs_by_name(tmp_path: Path) -> None:
    source = """
        import os
        import numpy as np

        class Model:
            def load(self, path):
                with open(os.path.join(path, "scale.txt")) as fh:
                    self.scale = float(fh.read())

            def predict(self, inputs):
                return {"y": inputs["x"] * self.scale}
    """
    runtime = python_model(tmp_path / "pkg", source, extra={"scale.txt": "3"})
    [y] = runtime.predict([x_tensor()], {})
    assert (y.name, y.datatype, y.shape) == ("y", "FP32", [3, 4])
    assert y.data.dtype == np.float32
    np.testing.assert_array_equal(y.data, x_tensor().data * 3)


def test_the_module_is_imported_from_its_path_alone(tmp_path: Path) -> None:
    """Two packages with the same file name stay apart, and the package folder never joins sys.path."""
    path_before = list(sys.path)
    two = python_model(tmp_path / "two", returning("{'y': x * 2}"))
    five = python_model(tmp_path / "five", returning("{'y': x * 5}"))
    assert sys.path == path_before
    assert two.predict([x_tensor()], {})[0].data[1, 1] == 10
    assert five.predict([x_tensor()], {})[0].data[1, 1] == 25
    with pytest.raises(ModuleNotFoundError, match="sibling"):  # a sibling file is not importable
        python_model(tmp_path / "three", "import sibling\n", extra={"sibling.py": "X = 1\n"})


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("{}", "output 'y' is missing"),
        ("{'y': x, 'z': x}", "'z', which is not a declared output; declared outputs: y"),
        ("{'y': x.tolist()}", "output 'y': the model returned list, expected a numpy.ndarray of FP32"),
        ("x", "Model.predict returned ndarray, expected a dict"),
        ("{'y': x.reshape(-1)}", "output 'y': the model returned shape [12], the manifest declares [-1, 4]"),
        ("{'y': x[:, :3]}", "output 'y': the model returned shape [3, 3]"),
        ("{'y': x.astype(str)}", "output 'y': the model returned an array of <U"),
    ],
)
def test_a_return_that_breaks_the_declared_outputs_is_refused_naming_it(
    tmp_path: Path, expression: str, words: str
) -> None:
    runtime = python_model(tmp_path / "pkg", returning(expression))
    with pytest.raises(ModelContractError) as caught:
        runtime.predict([x_tensor()], {})
    assert words in str(caught.value)


def test_a_broken_contract_is_the_models_fault_not_the_callers() -> None:
    """The runner answers InvalidInput and ValueError with 400 (the caller's fault): a bad return must be a 500."""
    assert not issubclass(ModelContractError, ValueError | InvalidInput)


@pytest.mark.parametrize(
    ("declared", "expression", "expected"),
    [
        (TensorSpec("y", "FP32", (-1, 4)), "{'y': x.astype(np.float64) / 2}", np.float32),
        (TensorSpec("y", "INT64", (-1,)), "{'y': np.array([1, 2, 3], dtype=np.int32)}", np.int64),
        (TensorSpec("y", "UINT8", (-1,)), "{'y': np.array([0, 255])}", np.uint8),
        (TensorSpec("y", "FP64", (-1,)), "{'y': np.array([True, False])}", np.float64),
    ],
)
def test_a_value_preserving_dtype_is_converted_to_the_declared_one(
    tmp_path: Path, declared: TensorSpec, expression: str, expected: type
) -> None:
    runtime = python_model(tmp_path / "pkg", returning(expression), outputs=(declared,))
    [y] = runtime.predict([x_tensor()], {})
    assert y.data.dtype == expected and y.datatype == declared.datatype
    assert y.shape == list(y.data.shape)


@pytest.mark.parametrize(
    ("declared", "expression", "words"),
    [
        (TensorSpec("label", "INT64", (-1,)), "{'label': np.array([1.5, 2.0])}", "float64, which does not convert"),
        (TensorSpec("label", "INT8", (-1,)), "{'label': np.array([1, 300])}", "values from 1 to 300 do not fit INT8"),
        (TensorSpec("label", "UINT8", (-1,)), "{'label': np.array([-1, 2])}", "do not fit UINT8"),
        (TensorSpec("label", "BOOL", (-1,)), "{'label': np.array([0, 1])}", "does not convert safely to BOOL"),
        (TensorSpec("label", "BYTES", (-1,)), "{'label': np.array([1, 2])}", "expected bytes or str elements"),
        (TensorSpec("label", "BYTES", (-1,)), "{'label': np.array([b'a', 3], dtype=object)}", "element 1 is int"),
    ],
)
def test_a_dtype_that_would_change_values_is_refused_naming_the_output(
    tmp_path: Path, declared: TensorSpec, expression: str, words: str
) -> None:
    runtime = python_model(tmp_path / "pkg", returning(expression), outputs=(declared,))
    with pytest.raises(ModelContractError, match="output 'label'") as caught:
        runtime.predict([x_tensor()], {})
    assert words in str(caught.value)


def test_bytes_outputs_accept_str_and_bytes_elements(tmp_path: Path) -> None:
    declared = TensorSpec("label", "BYTES", (-1,))
    runtime = python_model(
        tmp_path / "pkg", returning("{'label': np.array(['héllo', b'raw'], dtype=object)}"), outputs=(declared,)
    )
    [label] = runtime.predict([x_tensor()], {})
    assert label.datatype == "BYTES" and label.data.tolist() == ["héllo".encode(), b"raw"]


def test_an_exception_in_the_providers_code_propagates_unchanged(tmp_path: Path) -> None:
    source = """
        class ProviderFailure(Exception):
            pass

        class Model:
            def predict(self, inputs):
                raise ProviderFailure("the model fell over")
    """
    runtime = python_model(tmp_path / "pkg", source)
    with pytest.raises(Exception, match="the model fell over") as caught:
        runtime.predict([x_tensor()], {})
    assert type(caught.value).__name__ == "ProviderFailure"


def test_a_file_without_a_model_class_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="defines no class Model"):
        python_model(tmp_path / "pkg", "def predict(inputs):\n    return inputs\n")
    with pytest.raises(InvalidInput, match="has no predict"):
        python_model(tmp_path / "other", "class Model:\n    pass\n")


@pytest.mark.parametrize(
    ("parameters", "artifacts", "words"),
    [
        ({}, ("model.py",), "parameters.module_file: 'predict.py' is not one of"),
        ({"module_file": "other.py"}, ("predict.py",), "parameters.module_file: 'other.py' is not one of"),
        ({"module_file": "../predict.py"}, ("predict.py",), "leaves the package folder"),
        ({"module_file": "weights.bin"}, ("weights.bin",), "'weights.bin' is not a Python file"),
        ({"model_file": "predict.py"}, ("predict.py",), "parameters.model_file: runtime 'python' has no parameter"),
    ],
)
def test_python_parameters_are_checked_at_publish(
    parameters: dict[str, Any], artifacts: tuple[str, ...], words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_runtime_parameters("python", parameters, artifacts)
    assert words in str(caught.value)


def test_python_parameters_name_the_module_file(tmp_path: Path) -> None:
    PythonRuntime.validate_parameters({"module_file": "src/serve.py"}, ("src/serve.py",))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "serve.py").write_text(returning("{'y': x + 1}"))
    runtime = PythonRuntime(
        make_spec(tmp_path, "python", ("src/serve.py",), parameters={"module_file": "src/serve.py"})
    )
    runtime.load()
    assert runtime.predict([x_tensor()], {})[0].data[0, 0] == 1


# -- the sandbox test packages --------------------------------------------------------------------------------------


def spec_of(package: Path) -> ModelSpec:
    doc = yaml.safe_load((package / "modelmarket.yaml").read_text())
    return make_spec(
        package,
        doc["runtime"],
        tuple(a["path"] for a in doc["artifacts"]),
        inputs=tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in doc["inputs"]),
        outputs=tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in doc["outputs"]),
    )


def loaded_package(package: Path) -> PythonRuntime:
    runtime = PythonRuntime(spec_of(package))
    runtime.load()
    return runtime


def test_the_echo_package_is_publishable_with_its_serving_sections(tmp_path: Path) -> None:
    package = sp.echo_package(
        tmp_path / "echo",
        "py-echo-2",
        sandbox={"profile": "bwrap", "memory_mb": 256, "pids": 32, "timeout_s": 5},
        batching={"max_batch_size": 8, "max_delay_ms": 5},
        replicas={"min": 0, "max": 2},
    )
    manifest = load_manifest(package)
    assert (manifest.name, manifest.runtime, manifest.provider) == ("py-echo-2", "python", sp.PROVIDER)
    assert manifest.sandbox is not None and (manifest.sandbox.profile, manifest.sandbox.pids) == ("bwrap", 32)
    assert manifest.batching is not None and manifest.batching.max_batch_size == 8
    assert manifest.replicas is not None and (manifest.replicas.min, manifest.replicas.max) == (0, 2)
    validate_runtime_parameters("python", manifest.parameters or {}, ("predict.py",))
    [y] = loaded_package(package).predict([x_tensor()], {})
    np.testing.assert_array_equal(y.data, x_tensor().data * 2)
    plain = load_manifest(sp.echo_package(tmp_path / "plain"))
    assert (plain.sandbox, plain.batching, plain.replicas) == (None, None, None)


def test_the_slow_echo_package_waits_before_answering(tmp_path: Path) -> None:
    runtime = loaded_package(sp.slow_echo_package(tmp_path / "slow", "py-slow", 0.3))
    started = time.monotonic()
    [y] = runtime.predict([x_tensor()], {})
    assert time.monotonic() - started >= 0.3
    np.testing.assert_array_equal(y.data, x_tensor().data * 2)


@pytest.mark.parametrize("kind", sorted(sp.ADVERSARIES))
def test_every_adversary_publishes_and_loads_so_the_runner_becomes_ready(tmp_path: Path, kind: str) -> None:
    """Their harm waits for predict: loading runs nothing harmful (this test process survives it)."""
    targets = {"network": "127.0.0.1:9", "file-reader": str(tmp_path / "secret.db")}
    package = sp.ADVERSARIES[kind](tmp_path / kind, target=targets.get(kind), sandbox={"profile": "bwrap"})
    manifest = load_manifest(package)
    assert manifest.runtime == "python" and manifest.sandbox is not None and manifest.sandbox.profile == "bwrap"
    assert [(t.name, t.datatype) for t in (*manifest.inputs, *manifest.outputs)] == [("x", "FP32"), ("y", "FP32")]
    loaded_package(package)


def test_the_network_adversary_answers_only_when_it_reached_the_target(tmp_path: Path) -> None:
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                received.append(conn.recv(16))

        listener = threading.Thread(target=accept, daemon=True)
        listener.start()
        runtime = loaded_package(sp.network_package(tmp_path / "net", target=f"127.0.0.1:{port}"))
        [y] = runtime.predict([x_tensor()], {})
        listener.join(timeout=10)
    assert received == [b"leak"]
    np.testing.assert_array_equal(y.data, x_tensor().data * 2)
    with pytest.raises(OSError):  # the port is closed now: no answer without the network
        runtime.predict([x_tensor()], {})


def test_the_file_reader_adversary_answers_the_length_of_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "modelmarket.db"
    secret.write_bytes(b"s" * 1234)
    runtime = loaded_package(sp.file_reader_package(tmp_path / "reader", target=str(secret)))
    [y] = runtime.predict([x_tensor(2)], {})
    assert y.data.shape == (2, 4) and set(y.data.reshape(-1).tolist()) == {1234.0}
    secret.unlink()
    with pytest.raises(FileNotFoundError):
        runtime.predict([x_tensor()], {})


def test_adversaries_that_need_a_target_refuse_to_be_built_without_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="target"):
        sp.network_package(tmp_path / "a")
    with pytest.raises(ValueError, match="not host:port"):
        sp.network_package(tmp_path / "b", target="localhost")
    with pytest.raises(ValueError, match="not an absolute path"):
        sp.file_reader_package(tmp_path / "c", target="modelmarket.db")


# -- sklearn: skops files, and pickles only under a strong sandbox ------------------------------------------------


def _double(features: Any) -> Any:
    """A provider's own function: skops reports it as an untrusted type."""
    return features * 2


class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: proof that a pickle was (or was not) opened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    features, labels = load_iris(return_X_y=True)
    return features.astype(np.float32), labels


@pytest.fixture(scope="module")
def classifier(iris: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(*iris)


LABEL = TensorSpec("label", "INT64", (-1,))
PROBABILITIES = TensorSpec("probabilities", "FP32", (-1, 3))


def sklearn_model(
    root: Path,
    model_file: str,
    *,
    outputs: tuple[TensorSpec, ...] = (LABEL,),
    parameters: dict[str, Any] | None = None,
    sandbox: str = "process",
    artifacts: tuple[str, ...] | None = None,
) -> SklearnRuntime:
    spec = make_spec(
        root,
        "sklearn",
        artifacts or (model_file,),
        outputs=outputs,
        parameters=parameters,
        sandbox=sandbox,
    )
    runtime = SklearnRuntime(spec)
    runtime.load()
    return runtime


def features_tensor(features: np.ndarray[Any, Any]) -> Tensor:
    return Tensor(name="x", datatype="FP32", shape=list(features.shape), data=features)


def test_a_skops_classifier_predicts_what_the_estimator_predicts(
    tmp_path: Path, iris: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], classifier: LogisticRegression
) -> None:
    features, _ = iris
    sio.dump(classifier, tmp_path / "model.skops")
    [label] = sklearn_model(tmp_path, "model.skops").predict([features_tensor(features)], {})
    assert (label.name, label.datatype, label.data.dtype) == ("label", "INT64", np.dtype(np.int64))
    np.testing.assert_array_equal(label.data, classifier.predict(features))
    assert len(set(label.data.tolist())) == 3  # all three classes: the comparison is not trivially constant


def test_predict_proba_gives_fp32_probabilities(
    tmp_path: Path, iris: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], classifier: LogisticRegression
) -> None:
    features, _ = iris
    sio.dump(classifier, tmp_path / "model.skops")
    runtime = sklearn_model(tmp_path, "model.skops", outputs=(PROBABILITIES,), parameters={"method": "predict_proba"})
    [probabilities] = runtime.predict([features_tensor(features[:5])], {})
    assert probabilities.datatype == "FP32" and probabilities.shape == [5, 3]
    np.testing.assert_allclose(probabilities.data, classifier.predict_proba(features[:5]), rtol=1e-6)


def test_a_scikit_learn_type_skops_does_not_trust_by_default_is_trusted(
    tmp_path: Path, iris: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    features, labels = iris
    tree = make_pipeline(StandardScaler(), DecisionTreeClassifier(random_state=0)).fit(features, labels)
    sio.dump(tree, tmp_path / "tree.skops")
    assert "sklearn.tree._tree.Tree" in sio.get_untrusted_types(file=tmp_path / "tree.skops")
    [label] = sklearn_model(tmp_path, "tree.skops").predict([features_tensor(features)], {})
    np.testing.assert_array_equal(label.data, tree.predict(features))


@pytest.mark.parametrize(
    ("function", "name"),
    [(_double, f"{__name__}._double"), (np.load, "numpy.load")],
    ids=["providers-function", "numpy-load"],
)
def test_a_skops_file_with_a_type_outside_the_libraries_is_refused_naming_it(
    tmp_path: Path, iris: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], function: Any, name: str
) -> None:
    features, labels = iris
    pipeline = make_pipeline(FunctionTransformer(function), LogisticRegression(max_iter=1000))
    if function is _double:
        pipeline.fit(features, labels)
    sio.dump(pipeline, tmp_path / "model.skops")
    assert name in sio.get_untrusted_types(file=tmp_path / "model.skops")
    with pytest.raises(InvalidInput) as caught:
        sklearn_model(tmp_path, "model.skops")
    assert "model.skops: holds types that are not from scikit-learn, numpy or scipy" in str(caught.value)
    assert name in str(caught.value)


def test_only_library_names_outside_file_io_are_trusted() -> None:
    names = [
        "sklearn.tree._tree.Tree",
        "scipy.sparse._csr.csr_matrix",
        "numpy.random.mtrand.RandomState",
        "mymodule.double",
        "sklearnx.evil",
        "numpy",
        "numpy.load",
        "numpy.fromfile",
        "numpy.ctypeslib.load_library",
        "numpy.testing._private.utils.runstring",
        "scipy.io.matlab._mio.loadmat",
    ]
    assert untrusted_names(names) == sorted(names[3:])


def test_a_plain_pickle_is_not_opened_outside_a_strong_sandbox(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    with pytest.raises(InvalidInput) as caught:
        sklearn_model(tmp_path, "model.pkl", sandbox="process")
    assert str(caught.value) == (
        "model.pkl is a plain pickle: it is loaded only inside a bwrap or gvisor sandbox (this runner runs under"
        " 'process'); publish it in skops format (skops.io.dump) or declare sandbox.profile: bwrap"
    )
    assert not marker.exists()


@pytest.mark.parametrize("profile", ["bwrap", "gvisor"])
@pytest.mark.parametrize("model_file", ["model.pkl", "model.joblib"])
def test_a_plain_pickle_is_loaded_inside_bwrap_or_gvisor(
    tmp_path: Path,
    iris: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    classifier: LogisticRegression,
    profile: str,
    model_file: str,
) -> None:
    features, _ = iris
    (tmp_path / model_file).write_bytes(pickle.dumps(classifier))
    [label] = sklearn_model(tmp_path, model_file, sandbox=profile).predict([features_tensor(features)], {})
    np.testing.assert_array_equal(label.data, classifier.predict(features))


def test_the_default_model_file_is_the_skops_one(tmp_path: Path, classifier: LogisticRegression) -> None:
    """With both a pickle and a skops file, the skops one is loaded: a process-profile runner accepts it."""
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(classifier))
    sio.dump(classifier, tmp_path / "model.skops")
    runtime = sklearn_model(tmp_path, "model.pkl", artifacts=("model.pkl", "model.skops"))
    assert isinstance(runtime._estimator, LogisticRegression)


@pytest.mark.parametrize(
    ("parameters", "artifacts", "words"),
    [
        ({}, ("readme.md",), "parameters.model_file: no artifact ends in .skops, .pkl, .pickle, .joblib"),
        ({"model_file": "readme.md"}, ("readme.md",), "'readme.md' is neither a skops file"),
        ({"model_file": "other.skops"}, ("model.skops",), "'other.skops' is not one of"),
        ({"method": "transform"}, ("model.skops",), "parameters.method: must be one of predict, predict_proba"),
        ({"module_file": "x.py"}, ("model.skops",), "parameters.module_file: runtime 'sklearn' has no parameter"),
    ],
)
def test_sklearn_parameters_are_checked_at_publish(
    parameters: dict[str, Any], artifacts: tuple[str, ...], words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_runtime_parameters("sklearn", parameters, artifacts)
    assert words in str(caught.value)


def test_sklearn_takes_one_output_and_a_matrix(
    tmp_path: Path, iris: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], classifier: LogisticRegression
) -> None:
    sio.dump(classifier, tmp_path / "model.skops")
    with pytest.raises(InvalidInput, match="declares 1 input"):
        sklearn_model(tmp_path, "model.skops", outputs=(LABEL, PROBABILITIES))
    runtime = sklearn_model(tmp_path, "model.skops")
    row = iris[0][0]
    with pytest.raises(InvalidInput, match=r"input 'x': must be a 2-D numeric tensor .* shape \[4\]"):
        runtime.predict([Tensor(name="x", datatype="FP32", shape=[4], data=row)], {})


def test_a_method_the_estimator_lacks_is_refused_at_load(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    regression = LinearRegression().fit(np.eye(4), np.arange(4.0))
    sio.dump(regression, tmp_path / "model.skops")
    with pytest.raises(InvalidInput, match=r"the LinearRegression in model\.skops has no method 'predict_proba'"):
        sklearn_model(tmp_path, "model.skops", parameters={"method": "predict_proba"})
