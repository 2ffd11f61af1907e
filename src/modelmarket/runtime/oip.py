"""Open Inference Protocol v2 (REST) codec: JSON bodies and the binary tensor data extension.

Used by the runner to decode requests and encode responses, and by the gateway to validate requests and count
Inference Units before forwarding the original bytes. Shapes, datatypes and the binary layout follow the KServe
V2 protocol (binary: ``Inference-Header-Content-Length`` gives the JSON header's length, tensors with
``parameters.binary_data_size`` follow it in order; BYTES elements are 4-byte little-endian length-prefixed).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Tensor, TensorSpec

HEADER_LENGTH = "inference-header-content-length"

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_ORJSON_NATIVE = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP32",
    "FP64",
}


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] | None = None  # requested outputs, as sent

    def binary_output(self, name: str) -> bool:
        for out in self.outputs or ():
            if out.get("name") == name:
                params = out.get("parameters") or {}
                if "binary_data" in params:
                    return bool(params["binary_data"])
        return bool(self.parameters.get("binary_data_output", False))


def _element_count(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


def _check_shape(shape: Any, where: str) -> list[int]:
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers")
    return shape


def _decode_bytes_json(data: Any, count: int, where: str) -> npt.NDArray[Any]:
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(f"{where}: shape holds {count} elements but 'data' has {len(flat)}")
    arr = np.empty(count, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            arr[i] = item.encode("utf-8")
        elif isinstance(item, bytes):
            arr[i] = item
        else:
            raise InvalidInput(f"{where}: BYTES data must be strings, got {type(item).__name__}")
    return arr


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item))
        return out
    return data


_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}  # JSON kinds each target dtype takes


def _decode_numeric_json(data: Any, dtype: np.dtype[Any], count: int, where: str) -> npt.NDArray[Any]:
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{where}: 'data' is ragged: every row must have the same length") from None
    if raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidInput(f"{where}: 'data' must hold {dtype.name} values (found {_describe_kind(raw.dtype.kind)})")
    if raw.size != count:
        raise InvalidInput(f"{where}: shape holds {count} elements but 'data' has {raw.size}")
    flat = raw.reshape(-1)
    if dtype.kind in "iu" and flat.size:
        info = np.iinfo(dtype)
        if int(flat.min()) < info.min or int(flat.max()) > info.max:
            raise InvalidInput(f"{where}: 'data' has values outside the range of {dtype.name}")
    return flat.astype(dtype, copy=False)


def _describe_kind(kind: str) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "decimals",
        "U": "strings",
        "O": "mixed or null values",
    }.get(kind, "other values")


def _decode_bytes_binary(raw: memoryview, count: int, where: str) -> npt.NDArray[Any]:
    arr = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"{where}: binary BYTES data ends before element {i}")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise InvalidInput(f"{where}: binary BYTES element {i} runs past the data")
        arr[i] = bytes(raw[pos : pos + length])
        pos += length
    if pos != len(raw):
        raise InvalidInput(f"{where}: binary BYTES data has {len(raw) - pos} trailing bytes")
    return arr


def _decode_input(doc: Any, index: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    where = f"inputs[{index}]"
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: must be an object with name, shape, datatype and data")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}: 'name' is required")
    where = f"input {name!r}"
    datatype = doc.get("datatype")
    shape = _check_shape(doc.get("shape"), where)
    count = _element_count(shape)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if datatype == "BYTES":
        if size is not None:
            data = _decode_bytes_binary(_slice(binary, offset, size, where), count, where)
        else:
            data = _decode_bytes_json(_require_data(doc, where), count, where)
    elif isinstance(datatype, str) and datatype in NUMPY_DTYPES:
        dtype = NUMPY_DTYPES[datatype]
        if size is not None:
            raw = _slice(binary, offset, size, where)
            if len(raw) != count * dtype.itemsize:
                raise InvalidInput(f"{where}: binary_data_size {len(raw)} does not match shape {shape} of {datatype}")
            data = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        else:
            data = _decode_numeric_json(_require_data(doc, where), dtype, count, where)
    else:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}")
    params = {k: v for k, v in params.items() if k != "binary_data_size"}
    return Tensor(name, datatype, shape, data.reshape(shape), params), offset + (size or 0)


def _require_data(doc: Mapping[str, Any], where: str) -> Any:
    if "data" not in doc:
        raise InvalidInput(f"{where}: 'data' is required (or parameters.binary_data_size with binary data)")
    return doc["data"]


def _slice(binary: memoryview, offset: int, size: Any, where: str) -> memoryview:
    if not isinstance(size, int) or size < 0:
        raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise InvalidInput(f"{where}: binary_data_size runs past the end of the request body")
    return binary[offset : offset + size]


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an inference request body. ``header_length`` is the Inference-Header-Content-Length, if sent."""
    if header_length is not None:
        if header_length < 0:
            raise InvalidInput("Inference-Header-Content-Length must not be negative")
        if header_length > len(body):
            raise InvalidInput("Inference-Header-Content-Length is larger than the request body")
        json_part, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        json_part, binary = body, memoryview(b"")
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs, offset = [], 0
    for i, item in enumerate(raw_inputs):
        tensor, offset = _decode_input(item, i, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"request body has {len(binary) - offset} bytes of binary data no input claims")
    params = doc.get("parameters") or {}
    outputs = doc.get("outputs")
    if not isinstance(params, dict) or (outputs is not None and not isinstance(outputs, list)):
        raise InvalidInput("'parameters' must be an object and 'outputs' a list")
    for i, out in enumerate(outputs or ()):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInput(f"outputs[{i}]: must be an object with a 'name'")
    req_id = doc.get("id")
    return InferRequest(
        id=str(req_id) if req_id is not None else None, inputs=inputs, parameters=params, outputs=outputs
    )


def validate_inputs(inputs: Sequence[Tensor], specs: Sequence[TensorSpec], model: str) -> None:
    """Check names, datatypes and shapes against the model's declared inputs (-1 matches any size)."""
    declared = {s.name: s for s in specs}
    seen: set[str] = set()
    for tensor in inputs:
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"model {model!r} has no input named {tensor.name!r} (expected: {', '.join(declared)})")
        if tensor.name in seen:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        seen.add(tensor.name)
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input {tensor.name!r}: datatype {tensor.datatype} does not match the model's {spec.datatype}"
            )
        if len(tensor.shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(tensor.shape, spec.shape, strict=True)
        ):
            raise InvalidInput(
                f"input {tensor.name!r}: shape {tensor.shape} does not match the model's {list(spec.shape)}"
            )
        if tensor.data.size == 0:
            raise InvalidInput(f"input {tensor.name!r} has no elements (shape {tensor.shape})")
    missing = [name for name in declared if name not in seen]
    if missing:
        raise InvalidInput(f"model {model!r} needs input(s) {', '.join(missing)}")


def validate_requested_outputs(request: InferRequest, output_names: frozenset[str], model: str) -> None:
    for out in request.outputs or ():
        if out["name"] not in output_names:
            raise InvalidInput(
                f"model {model!r} has no output named {out['name']!r} (outputs: {', '.join(sorted(output_names))})"
            )


def _encode_bytes_binary(arr: npt.NDArray[Any]) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _json_data(tensor: Tensor) -> Any:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in flat]
    if tensor.datatype in _ORJSON_NATIVE and flat.flags.c_contiguous:
        return np.ascontiguousarray(flat)
    return flat.tolist()


def encode_response(
    model: str, version: str, request: InferRequest, outputs: Sequence[Tensor]
) -> tuple[bytes, int | None]:
    """Encode an inference response. Returns (body, header_length) — header_length is None for plain JSON."""
    wanted = {o.get("name") for o in request.outputs or () if isinstance(o, dict)}
    out_docs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in outputs:
        if wanted and tensor.name not in wanted:
            continue
        doc: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if request.binary_output(tensor.name):
            if tensor.datatype == "BYTES":
                blob = _encode_bytes_binary(tensor.data)
            else:
                blob = np.ascontiguousarray(
                    tensor.data, dtype=NUMPY_DTYPES[tensor.datatype].newbyteorder("<")
                ).tobytes()
            doc["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            doc["data"] = _json_data(tensor)
        out_docs.append(doc)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": out_docs}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
