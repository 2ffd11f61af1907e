"""Models the provider wrote in Python: the package ships ``predict.py`` and this runtime runs it.

The file defines a class ``Model``::

    class Model:
        def load(self, path: str) -> None: ...  # optional; ``path`` is the folder holding the artifacts
        def predict(self, inputs: dict[str, numpy.ndarray]) -> dict[str, numpy.ndarray]: ...

``predict`` gets every input tensor by name (numeric tensors as arrays in their declared dtype, ``BYTES`` tensors
as object arrays of ``bytes``) and returns one array per declared output: every declared output must be present
and no other key is accepted, so a typo in an output name is an error that names it instead of a silently
missing tensor. Each array is converted to its declared datatype only where that loses nothing a consumer relies
on (``float64`` to ``FP32`` yes, floats to ``INT64`` no; see ``output_tensor``).

Parameters (manifest ``parameters:``):

- ``module_file``: artifact path of the Python file (default ``predict.py``); it must be one of the artifacts.

Trust: this is arbitrary code, so ``provider_code`` is set and the runner never runs it in the gateway nor below
the operator's minimum sandbox profile (``runtime/sandbox.py``). The file is imported under a unique module name
straight from its path; its folder is never put on ``sys.path``, so it cannot shadow a module the runner imports
and cannot import sibling files (ship one file). An exception raised by the provider's code propagates unchanged:
the runner answers it as the model's failure, naming it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Runtime, Tensor, TensorSpec, artifact_parameter
from modelmarket.runtime.oip import NUMPY_DTYPES

__all__ = ["DEFAULT_MODULE_FILE", "ModelContractError", "PythonRuntime", "import_provider_module", "output_tensor"]

DEFAULT_MODULE_FILE = "predict.py"
_MODULE_PREFIX = "modelmarket_provider_code"
_SHOWN_KEYS = 10  # how many returned keys an error message lists


class ModelContractError(RuntimeError):
    """The provider's model returned something other than its declared outputs.

    Deliberately not an ``InvalidInput`` nor a ``ValueError``: the runner answers those with 400, blaming the
    caller, while this is the model's fault and must be a 500 that names the output.
    """


def _bytes_data(declared: TensorSpec, value: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``value`` as an object array of ``bytes``: from ``bytes``/``str`` elements or a numpy string array."""
    if value.dtype.kind not in "OSU":
        raise ModelContractError(
            f"output {declared.name!r}: the model returned an array of {value.dtype}, expected bytes or str"
            " elements for a BYTES output"
        )
    flat = value.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for index, item in enumerate(flat):
        if isinstance(item, bytes):
            out[index] = item
        elif isinstance(item, str):
            out[index] = item.encode("utf-8")
        else:
            raise ModelContractError(
                f"output {declared.name!r}: element {index} is {type(item).__name__}, expected bytes or str"
                " for a BYTES output"
            )
    return out.reshape(value.shape)


def _numeric_data(declared: TensorSpec, value: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``value`` in the declared numeric dtype, refusing a conversion that would change values silently.

    Accepted: the same dtype; bool, integers or floats to a float (``float64`` probabilities to ``FP32``, as
    scikit-learn returns them); bool or integers to an integer when every value fits. Refused: floats to integers
    (truncation), anything to ``BOOL`` but bool, and non-numeric arrays.
    """
    target = NUMPY_DTYPES[declared.datatype]
    source = value.dtype
    if source == target:
        return value
    if target.kind == "f" and source.kind in "biuf":
        return value.astype(target)
    if target.kind in "iu" and source.kind in "biu":
        if value.size and source.kind != "b":
            info = np.iinfo(target)
            low, high = int(value.min()), int(value.max())
            if low < info.min or high > info.max:
                raise ModelContractError(
                    f"output {declared.name!r}: values from {low} to {high} do not fit {declared.datatype}"
                    f" ({info.min} to {info.max})"
                )
        return value.astype(target)
    raise ModelContractError(
        f"output {declared.name!r}: the model returned an array of {source}, which does not convert safely to"
        f" {declared.datatype} ({target}); return {target} values"
    )


def _check_shape(declared: TensorSpec, shape: tuple[int, ...]) -> None:
    """Refuse a shape that contradicts the declaration: another rank, or another size where one is fixed."""
    fits = len(shape) == len(declared.shape) and all(
        want < 0 or want == got for want, got in zip(declared.shape, shape, strict=True)
    )
    if not fits:
        raise ModelContractError(
            f"output {declared.name!r}: the model returned shape {list(shape)}, the manifest declares"
            f" {list(declared.shape)} (-1 is any size)"
        )


def output_tensor(declared: TensorSpec, value: object) -> Tensor:
    """The tensor for declared output ``declared`` from ``value``, which the provider's model returned.

    ``value`` must be a ``numpy.ndarray`` whose shape fits the declaration and whose dtype converts safely to the
    declared datatype; ``ModelContractError`` naming the output otherwise. Shared by the provider-code runtimes.
    """
    if not isinstance(value, np.ndarray):
        raise ModelContractError(
            f"output {declared.name!r}: the model returned {type(value).__name__}, expected a numpy.ndarray of"
            f" {declared.datatype}"
        )
    _check_shape(declared, value.shape)
    if declared.datatype == "BYTES":
        data = _bytes_data(declared, value)
    elif declared.datatype in NUMPY_DTYPES:
        data = _numeric_data(declared, value)
    else:  # the manifest parser admits only OIP datatypes: another one here is a programmer error
        raise ModelContractError(f"output {declared.name!r}: unknown datatype {declared.datatype!r}")
    return Tensor(name=declared.name, datatype=declared.datatype, shape=list(data.shape), data=data)


def import_provider_module(path: Path, model_name: str) -> ModuleType:
    """Import the file at ``path`` as a fresh module with a unique name, without touching ``sys.path``.

    The module is registered in ``sys.modules`` (under its unique name only) while and after it runs, because
    ``dataclasses``, ``typing`` and ``pickle`` look a class's module up there.
    """
    safe = re.sub(r"[^0-9A-Za-z_]", "_", model_name)
    module_name = f"{_MODULE_PREFIX}_{safe}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"{path.name}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


class PythonRuntime(Runtime):
    name: ClassVar[str] = "python"
    parameter_names: ClassVar[frozenset[str]] = frozenset({"module_file"})
    provider_code: ClassVar[bool] = True

    _model: Any
    _module: ModuleType

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        module_file = artifact_parameter(parameters, "module_file", DEFAULT_MODULE_FILE, artifacts)
        if module_file is not None and not module_file.endswith(".py"):
            raise InvalidInput(f"parameters.module_file: {module_file!r} is not a Python file (.py)")

    def load(self) -> None:
        path = self.spec.artifact(self.spec.parameters.get("module_file", DEFAULT_MODULE_FILE), "module_file")
        if not path.is_file():
            raise InvalidInput(f"{path.name!r} of model {self.spec.name!r} is missing")
        self._module = import_provider_module(path, self.spec.name)
        model_class = getattr(self._module, "Model", None)
        if not isinstance(model_class, type):
            raise InvalidInput(f"{path.name}: defines no class Model (with load(path) and predict(inputs))")
        model = model_class()
        if not callable(getattr(model, "predict", None)):
            raise InvalidInput(f"{path.name}: class Model has no predict(inputs) method")
        load = getattr(model, "load", None)
        if callable(load):
            load(str(self.spec.artifact_root))
        self._model = model

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        self.check_inputs(inputs)
        returned = self._model.predict({t.name: t.data for t in inputs})
        if not isinstance(returned, dict):
            raise ModelContractError(
                f"Model.predict returned {type(returned).__name__}, expected a dict of output name -> numpy.ndarray"
            )
        declared = {t.name for t in self.spec.outputs}
        extra = [key for key in returned if key not in declared]
        if extra:
            shown = ", ".join(repr(k) for k in extra[:_SHOWN_KEYS])
            raise ModelContractError(
                f"Model.predict returned {shown}, which {'is' if len(extra) == 1 else 'are'} not a declared"
                f" output; declared outputs: {', '.join(sorted(declared)) or 'none'}"
            )
        outputs: list[Tensor] = []
        for spec in self.spec.outputs:
            if spec.name not in returned:
                raise ModelContractError(
                    f"output {spec.name!r} is missing from what Model.predict returned (keys:"
                    f" {', '.join(repr(k) for k in list(returned)[:_SHOWN_KEYS]) or 'none'})"
                )
            outputs.append(output_tensor(spec, returned[spec.name]))
        return outputs
