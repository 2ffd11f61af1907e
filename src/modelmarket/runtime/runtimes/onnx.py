"""ONNX models through onnxruntime on the CPU.

Parameters (manifest ``parameters:``):

- ``model_file``: artifact path of the ``.onnx`` file (default: the first artifact ending in ``.onnx``); it must
  be one of the version's artifacts
- ``intra_op_num_threads``: threads inside one operator, 1 to ``MAX_THREADS`` (default 1; the runner scales by
  replicas)
- ``inter_op_num_threads``: threads across operators, 1 to ``MAX_THREADS`` (default 1)

Bounds on one call (``OnnxRuntime.input_limits``): ``MAX_ELEMENTS_PER_CALL`` elements over all inputs (64 MiB
of FP32), ``MAX_CALL_BYTES`` of input data, ``MAX_STRING_BYTES`` per string element. What a graph costs per
element is the provider's model; the bound keeps one call's memory and work finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import InputLimits, Runtime, Tensor, artifact_parameter, int_parameter

__all__ = ["MAX_CALL_BYTES", "MAX_ELEMENTS_PER_CALL", "MAX_STRING_BYTES", "MAX_THREADS", "OnnxRuntime"]

MAX_THREADS = 16  # per session, for each of the two thread pools
DEFAULT_THREADS = 1
MAX_ELEMENTS_PER_CALL = 16 * 1024 * 1024
MAX_CALL_BYTES = 64 * 1024 * 1024
MAX_STRING_BYTES = 1024 * 1024
_THREAD_PARAMETERS = ("intra_op_num_threads", "inter_op_num_threads")

# onnxruntime element type -> (numpy dtype, Open Inference Protocol datatype)
_ORT_TYPES: dict[str, tuple[Any, str]] = {
    "tensor(bool)": (np.bool_, "BOOL"),
    "tensor(uint8)": (np.uint8, "UINT8"),
    "tensor(uint16)": (np.uint16, "UINT16"),
    "tensor(uint32)": (np.uint32, "UINT32"),
    "tensor(uint64)": (np.uint64, "UINT64"),
    "tensor(int8)": (np.int8, "INT8"),
    "tensor(int16)": (np.int16, "INT16"),
    "tensor(int32)": (np.int32, "INT32"),
    "tensor(int64)": (np.int64, "INT64"),
    "tensor(float16)": (np.float16, "FP16"),
    "tensor(float)": (np.float32, "FP32"),
    "tensor(double)": (np.float64, "FP64"),
    "tensor(string)": (np.object_, "BYTES"),
}

_STRING = "tensor(string)"


def _ort_type(type_name: str, what: str) -> tuple[Any, str]:
    found = _ORT_TYPES.get(type_name)
    if found is None:
        raise InvalidInput(f"{what} has element type {type_name}, which the onnx runtime does not support")
    return found


def _bytes_to_str(data: npt.NDArray[Any]) -> npt.NDArray[Any]:
    try:
        return np.asarray(
            np.vectorize(lambda item: item.decode("utf-8") if isinstance(item, bytes) else str(item), otypes=[object])(
                data
            ),
            dtype=object,
        )
    except UnicodeDecodeError:
        raise InvalidInput("a BYTES element is not valid UTF-8") from None


def _str_to_bytes(data: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return np.asarray(np.vectorize(lambda item: str(item).encode("utf-8"), otypes=[object])(data), dtype=object)


def _model_file(parameters: Mapping[str, Any], artifacts: Sequence[str]) -> str:
    """The ``model_file`` parameter, which must name one of the artifacts; by default the first ``.onnx`` one."""
    default = next((relpath for relpath in artifacts if relpath.endswith(".onnx")), None)
    model_file = artifact_parameter(parameters, "model_file", default, artifacts)
    if model_file is None:
        raise InvalidInput("parameters.model_file: no artifact ends in .onnx: name the model's file here")
    return model_file


class OnnxRuntime(Runtime):
    """Runs one ``.onnx`` artifact; inputs are matched by name and cast to the dtype the graph expects."""

    name: ClassVar[str] = "onnx"
    parameter_names: ClassVar[frozenset[str]] = frozenset({"model_file", *_THREAD_PARAMETERS})
    input_limits: ClassVar[InputLimits] = InputLimits(
        max_elements_per_call=MAX_ELEMENTS_PER_CALL, max_element_bytes=MAX_STRING_BYTES, max_call_bytes=MAX_CALL_BYTES
    )

    _session: ort.InferenceSession
    _input_types: dict[str, tuple[Any, str]]
    _output_names: list[str]
    _output_datatypes: list[str]
    _string_outputs: list[bool]

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        _model_file(parameters, artifacts)
        for key in _THREAD_PARAMETERS:
            int_parameter(parameters, key, DEFAULT_THREADS, 1, MAX_THREADS)

    def _session_options(self) -> ort.SessionOptions:
        params = self.spec.parameters
        options = ort.SessionOptions()
        options.intra_op_num_threads = int_parameter(params, "intra_op_num_threads", DEFAULT_THREADS, 1, MAX_THREADS)
        options.inter_op_num_threads = int_parameter(params, "inter_op_num_threads", DEFAULT_THREADS, 1, MAX_THREADS)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return options

    def load(self) -> None:
        path = self.spec.artifact(_model_file(self.spec.parameters, self.spec.artifacts), "model_file")
        if not path.is_file():
            raise InvalidInput(f"model file {path.name!r} of model {self.spec.name!r} is missing")
        self._session = ort.InferenceSession(
            str(path), sess_options=self._session_options(), providers=["CPUExecutionProvider"]
        )
        self._input_types = {
            node.name: _ort_type(node.type, f"graph input {node.name!r}") for node in self._session.get_inputs()
        }
        for declared in self.spec.inputs:
            if declared.name not in self._input_types:
                raise InvalidInput(
                    f"declared input {declared.name!r} is not a graph input; graph inputs: "
                    + ", ".join(sorted(self._input_types))
                )
        graph_outputs = {node.name: node.type for node in self._session.get_outputs()}
        wanted = [t.name for t in self.spec.outputs] or list(graph_outputs)
        for name in wanted:
            if name not in graph_outputs:
                raise InvalidInput(
                    f"declared output {name!r} is not a graph output; graph outputs: " + ", ".join(graph_outputs)
                )
        self._output_names = wanted
        self._output_datatypes = [_ort_type(graph_outputs[n], f"graph output {n!r}")[1] for n in wanted]
        self._string_outputs = [graph_outputs[n] == _STRING for n in wanted]

    def _feed(self, inputs: Sequence[Tensor]) -> dict[str, npt.NDArray[Any]]:
        feed: dict[str, npt.NDArray[Any]] = {}
        for tensor in inputs:
            expected = self._input_types.get(tensor.name)
            if expected is None:
                raise InvalidInput(
                    f"unknown input {tensor.name!r}; model inputs: " + ", ".join(sorted(self._input_types))
                )
            dtype, datatype = expected
            if datatype == "BYTES":
                feed[tensor.name] = _bytes_to_str(tensor.data)
                continue
            try:
                feed[tensor.name] = np.asarray(tensor.data, dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"input {tensor.name!r} cannot be read as {datatype}: {exc}") from None
        if len(feed) != len(self._input_types):
            missing = sorted(set(self._input_types) - set(feed))
            raise InvalidInput("missing input(s): " + ", ".join(missing))
        return feed

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        self.check_inputs(inputs)
        feed = self._feed(inputs)
        try:
            results = self._session.run(self._output_names, feed)
        except InvalidArgument as exc:
            raise InvalidInput(f"the model rejected the input: {exc}") from None
        outputs: list[Tensor] = []
        for name, datatype, is_string, array in zip(
            self._output_names, self._output_datatypes, self._string_outputs, results, strict=True
        ):
            data = _str_to_bytes(array) if is_string else array
            outputs.append(Tensor(name=name, datatype=datatype, shape=list(data.shape), data=data))
        return outputs
