"""scikit-learn estimators, saved with skops (``.skops``) or, only inside a strong sandbox, as a plain pickle.

Parameters (manifest ``parameters:``):

- ``model_file``: artifact path of the saved estimator (default: the first artifact ending in ``.skops``, else
  the first ending in ``.pkl``, ``.pickle`` or ``.joblib``); it must be one of the version's artifacts
- ``method``: ``predict`` (default) or ``predict_proba``

OIP interface: the first declared input is the feature matrix, a 2-D numeric tensor (rows x features); the one
declared output is what ``method`` returns, in its declared datatype (``INT64`` labels, ``FP32`` probabilities;
conversions as ``python_code.output_tensor`` allows them).

Trust. Loading a pickle runs whatever code its author chose, so:

- a ``.skops`` file is loaded with ``skops.io.load``, which builds only the types it is told to trust. This
  runtime trusts what skops trusts by default plus the types and functions of scikit-learn, numpy and scipy
  (skops leaves out e.g. ``sklearn.tree._tree.Tree``), except the parts of those libraries that read or write
  files or load native code (``_DENIED_PARTS``, ``_DENIED_NAMES``): a ``FunctionTransformer(numpy.load)`` would
  otherwise turn a trusted name into file access. Any other type (a provider's own function, say) refuses the
  model, naming the types;
- a plain pickle (``.pkl``, ``.pickle``, ``.joblib``) is loaded only when the runner runs under ``bwrap`` or
  ``gvisor`` (``ModelSpec.sandbox``), where the code it runs sees no network, no platform files and no other model.

``provider_code`` is set either way: a trusted scikit-learn type still runs the provider's fitted state, and the
runner never runs this runtime in the gateway nor below the operator's minimum profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import joblib
import skops.io as sio

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Runtime, Tensor, TensorSpec, artifact_parameter, text_parameter
from modelmarket.runtime.runtimes.python_code import output_tensor

__all__ = ["METHODS", "PICKLE_SANDBOXES", "PICKLE_SUFFIXES", "SKOPS_SUFFIX", "SklearnRuntime", "untrusted_names"]

SKOPS_SUFFIX = ".skops"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
METHODS = ("predict", "predict_proba")
DEFAULT_METHOD = "predict"
PICKLE_SANDBOXES = frozenset({"bwrap", "gvisor"})
"""Profiles that hide the network and the platform's files: the only ones a plain pickle is opened under."""

_TRUSTED_ROOTS = frozenset({"sklearn", "numpy", "scipy"})
_DENIED_PARTS = frozenset(
    {"testing", "_testing", "_testutils", "_pytesttester", "f2py", "distutils", "ctypeslib", "io", "datasets"}
)
"""Modules of the trusted libraries that test, build, load native code, or read and write files."""
_DENIED_NAMES = frozenset(
    {
        "load",
        "save",
        "savez",
        "savez_compressed",
        "savetxt",
        "loadtxt",
        "genfromtxt",
        "fromfile",
        "fromregex",
        "tofile",
        "memmap",
        "open_memmap",
        "load_library",
    }
)
"""File I/O under any module of the trusted libraries (``numpy.load`` is reported as ``numpy.load``)."""


def _trusted(type_name: str) -> bool:
    parts = type_name.split(".")
    return (
        len(parts) > 1
        and parts[0] in _TRUSTED_ROOTS
        and not any(part in _DENIED_PARTS for part in parts[1:])
        and parts[-1] not in _DENIED_NAMES
    )


def untrusted_names(type_names: Sequence[str]) -> list[str]:
    """The names among ``type_names`` (as ``skops.io.get_untrusted_types`` reports them) this runtime refuses."""
    return sorted(name for name in type_names if not _trusted(name))


def _default_model_file(artifacts: Sequence[str]) -> str | None:
    for suffixes in ((SKOPS_SUFFIX,), PICKLE_SUFFIXES):
        found = next((a for a in artifacts if a.endswith(suffixes)), None)
        if found is not None:
            return found
    return None


def _model_file(parameters: Mapping[str, Any], artifacts: Sequence[str]) -> str:
    model_file = artifact_parameter(parameters, "model_file", _default_model_file(artifacts), artifacts)
    if model_file is None:
        raise InvalidInput(
            "parameters.model_file: no artifact ends in "
            + ", ".join((SKOPS_SUFFIX, *PICKLE_SUFFIXES))
            + "; ship the estimator saved with skops.io.dump and list it in artifacts"
        )
    if not model_file.endswith((SKOPS_SUFFIX, *PICKLE_SUFFIXES)):
        raise InvalidInput(
            f"parameters.model_file: {model_file!r} is neither a skops file ({SKOPS_SUFFIX}) nor a pickle"
            f" ({', '.join(PICKLE_SUFFIXES)})"
        )
    return model_file


class SklearnRuntime(Runtime):
    name: ClassVar[str] = "sklearn"
    parameter_names: ClassVar[frozenset[str]] = frozenset({"model_file", "method"})
    provider_code: ClassVar[bool] = True

    _estimator: Any
    _method: Any
    _input: TensorSpec
    _output: TensorSpec

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        _model_file(parameters, artifacts)
        text_parameter(parameters, "method", DEFAULT_METHOD, METHODS)

    def load(self) -> None:
        params = self.spec.parameters
        method = text_parameter(params, "method", DEFAULT_METHOD, METHODS)
        if not self.spec.inputs or len(self.spec.outputs) != 1:
            raise InvalidInput(
                f"model {self.spec.name!r}: the sklearn runtime takes one input (the feature matrix) and gives one"
                f" output (what {method} returns); the manifest declares {len(self.spec.inputs)} input(s) and"
                f" {len(self.spec.outputs)} output(s)"
            )
        path = self.spec.artifact(_model_file(params, self.spec.artifacts), "model_file")
        if not path.is_file():
            raise InvalidInput(f"{path.name!r} of model {self.spec.name!r} is missing")
        estimator = self._load_skops(path) if path.name.endswith(SKOPS_SUFFIX) else self._load_pickle(path)
        bound = getattr(estimator, method, None)
        if not callable(bound):
            raise InvalidInput(
                f"parameters.method: the {type(estimator).__name__} in {path.name} has no method {method!r}"
            )
        self._estimator, self._method = estimator, bound
        self._input, self._output = self.spec.inputs[0], self.spec.outputs[0]

    def _load_skops(self, path: Path) -> Any:
        found = sio.get_untrusted_types(file=path)
        refused = untrusted_names(found)
        if refused:
            raise InvalidInput(
                f"{path.name}: holds types that are not from scikit-learn, numpy or scipy (or that read files):"
                f" {', '.join(refused)}. This runtime does not load them; publish an estimator built from library"
                " types only, or the model as python provider code"
            )
        return sio.load(path, trusted=found)

    def _load_pickle(self, path: Path) -> Any:
        if self.spec.sandbox not in PICKLE_SANDBOXES:
            raise InvalidInput(
                f"{path.name} is a plain pickle: it is loaded only inside a bwrap or gvisor sandbox (this runner runs"
                f" under {self.spec.sandbox!r}); publish it in skops format (skops.io.dump) or declare"
                " sandbox.profile: bwrap"
            )
        return joblib.load(path)

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        self.check_inputs(inputs)
        tensor = next((t for t in inputs if t.name == self._input.name), None)
        if tensor is None:
            raise InvalidInput(f"missing input {self._input.name!r}")
        if tensor.datatype == "BYTES" or tensor.data.ndim != 2:
            raise InvalidInput(
                f"input {tensor.name!r}: must be a 2-D numeric tensor (rows x features), not {tensor.datatype}"
                f" of shape {list(tensor.data.shape)}"
            )
        return [output_tensor(self._output, self._method(tensor.data))]
