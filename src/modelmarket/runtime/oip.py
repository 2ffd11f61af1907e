"""Open Inference Protocol v2 (REST) codec: JSON bodies and the binary tensor data extension.

Used by the runner to decode requests and encode responses, and by the gateway to validate requests and count
Inference Units before forwarding the original bytes. Shapes, datatypes and the binary layout follow the KServe
V2 protocol (binary: ``Inference-Header-Content-Length`` gives the JSON header's length, tensors with
``parameters.binary_data_size`` follow it in order; BYTES elements are 4-byte little-endian length-prefixed).

Decoding is bounded: every size a request declares (shape, element count, ``binary_data_size``, length prefix,
number of inputs and outputs, rank, name length, parameters) is checked against the body and ``DecodeLimits``
before anything is allocated for it, so the cost of decoding stays linear in the body with a small constant and
every malformed request is an ``InvalidInput`` (400), never a 500.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelmarket.core.errors import InvalidInput, ensure
from modelmarket.core.tensors import Tensor, TensorSpec

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
_DATATYPES = frozenset(NUMPY_DTYPES) | {"BYTES"}
_PREFIX_BYTES = 4  # a binary BYTES element starts with its length as a uint32, little-endian
_SHOWN_CHARS = 40  # how much of a client's bad value an error message quotes: a huge value must not echo back
_PARAMETER_TYPES = (str, int, float, bool)  # KServe V2: a parameter is a string, a number or a boolean


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds on what one inference request may declare, each checked before the codec allocates for it.

    The body itself is bounded before the codec sees it (``Settings.max_request_bytes``, 64 MiB by default); these
    bounds keep what the body *declares* proportionate, so a small body cannot make the codec allocate or loop far
    beyond its own size, and a large one costs time linear in its size.
    """

    max_inputs: int = 64
    """Input tensors in one request: models take a handful; 64 leaves room for wide ensembles."""
    max_requested_outputs: int = 64
    """Entries in the request's ``outputs``: the same reasoning as ``max_inputs``."""
    max_rank: int = 8
    """Dimensions of one shape, and the nesting depth of JSON ``data``. numpy stops at 64; models use at most
    about 6 (video: batch, time, channel, height, width)."""
    max_name_length: int = 256
    """Characters in a tensor name, an output name, a parameter name or the request id."""
    max_elements_per_tensor: int = 1 << 24
    """Elements one shape may declare (16,777,216): 64 MiB of FP32, the default body limit, or a 4096 x 4096
    image plane. Numeric binary data is a view on the body, so this bounds memory, not decoding time."""
    max_elements_per_request: int = 1 << 24
    """Elements across all inputs: by default one tensor may use the whole request's budget, and no more."""
    max_bytes_elements_per_request: int = 1_000_000
    """BYTES elements across all inputs. Each becomes a Python ``bytes`` object (~40 bytes and tens of ns each),
    unlike numeric elements, so they get a tighter bound: a million strings or images is a large batch."""
    max_element_bytes: int = 16 << 20
    """Bytes in one BYTES element (16 MiB): an image or about 8 minutes of 16 kHz 16-bit audio; larger payloads
    belong in object storage, not in an inference request."""
    max_parameters: int = 64
    """Entries in one ``parameters`` object (request, input or output)."""
    max_parameter_length: int = 1 << 16
    """Characters in one string parameter value (64 Ki): room for a prompt, not for a payload."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            ensure(type(value) is int and value > 0, f"DecodeLimits.{f.name} must be a positive integer: {value!r}")


DEFAULT_LIMITS = DecodeLimits()


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


@dataclass(slots=True)
class _Budget:
    """What the inputs checked so far have declared in all, against the per-request limits."""

    limits: DecodeLimits
    elements: int = 0
    bytes_elements: int = 0

    def take(self, count: int, datatype: str, where: str) -> None:
        self.elements += count
        if self.elements > self.limits.max_elements_per_request:
            raise InvalidInput(
                f"{where}: the request declares {self.elements:,} elements in all, more than the limit of "
                f"{self.limits.max_elements_per_request:,} per request"
            )
        if datatype == "BYTES":
            self.bytes_elements += count
            if self.bytes_elements > self.limits.max_bytes_elements_per_request:
                raise InvalidInput(
                    f"{where}: the request declares {self.bytes_elements:,} BYTES elements in all, more than the "
                    f"limit of {self.limits.max_bytes_elements_per_request:,} per request"
                )


def _shown(value: Any) -> str:
    """A client's value quoted in an error message, cut short: the answer must not grow with the request."""
    if isinstance(value, str):
        text = repr(value[: _SHOWN_CHARS + 1])
    elif value is None or isinstance(value, int | float):
        text = repr(value)
    else:
        return f"a JSON {'list' if isinstance(value, list) else 'object'}"
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _check_name(name: Any, where: str, limits: DecodeLimits) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}: 'name' is required")
    if len(name) > limits.max_name_length:
        raise InvalidInput(
            f"{where}: 'name' has {len(name):,} characters, more than the limit of {limits.max_name_length}"
        )
    return name


def _check_parameters(params: Any, where: str, limits: DecodeLimits) -> dict[str, Any]:
    """KServe V2 parameters map a name to a string, number or boolean; the codec bounds their number and size."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    if len(params) > limits.max_parameters:
        raise InvalidInput(
            f"{where}: 'parameters' has {len(params):,} entries, more than the limit of {limits.max_parameters}"
        )
    for key, value in params.items():
        if len(key) > limits.max_name_length:
            raise InvalidInput(
                f"{where}: parameter name {_shown(key)} is longer than the limit of {limits.max_name_length}"
            )
        if not isinstance(value, _PARAMETER_TYPES):
            raise InvalidInput(f"{where}: parameter {key!r} must be a string, number or boolean, not {_shown(value)}")
        if isinstance(value, str) and len(value) > limits.max_parameter_length:
            raise InvalidInput(
                f"{where}: parameter {key!r} has {len(value):,} characters, more than the limit of "
                f"{limits.max_parameter_length:,}"
            )
    return params


def _check_shape(shape: Any, where: str, limits: DecodeLimits) -> tuple[list[int], int]:
    """Return the shape and its element count, refused past the bounds in Python ints before numpy sees them.

    Zero dimensions do not excuse the others: numpy still refuses ``[0, 2**62]`` ("array is too big"), so the
    product of the non-zero dimensions is what the bound applies to.
    """
    if not isinstance(shape, list):
        raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers")
    if len(shape) > limits.max_rank:
        raise InvalidInput(f"{where}: 'shape' has {len(shape):,} dimensions, more than the limit of {limits.max_rank}")
    extent = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise InvalidInput(f"{where}: 'shape' must be a list of non-negative integers, not {_shown(dim)}")
        extent *= max(dim, 1)
        if extent > limits.max_elements_per_tensor:
            raise InvalidInput(
                f"{where}: shape {shape} declares more than the limit of {limits.max_elements_per_tensor:,} "
                "elements per tensor"
            )
    return shape, 0 if 0 in shape else extent


def _data_depth_ok(data: Any, max_depth: int) -> bool:
    """Follow the first elements down: numpy then refuses any other branch that is deeper (as ragged)."""
    depth = 0
    while isinstance(data, list):
        depth += 1
        if depth > max_depth:
            return False
        data = data[0] if data else None
    return True


def _flatten(data: Any, max_depth: int, where: str) -> list[Any]:
    """Flatten nested JSON ``data`` without recursion, refusing any branch nested deeper than ``max_depth``."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= max_depth:
                    raise InvalidInput(f"{where}: 'data' is nested deeper than the limit of {max_depth} levels")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _object_array(items: list[bytes]) -> npt.NDArray[Any]:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def _decode_bytes_json(data: Any, count: int, where: str, limits: DecodeLimits) -> npt.NDArray[Any]:
    flat = _flatten(data, limits.max_rank, where)
    if len(flat) != count:
        raise InvalidInput(f"{where}: shape holds {count} elements but 'data' has {len(flat)}")
    try:
        items = list(map(str.encode, flat))  # one C-level pass; anything but a str is a TypeError
    except TypeError:
        bad = next(item for item in flat if not isinstance(item, str))
        raise InvalidInput(f"{where}: BYTES data must be strings, got {type(bad).__name__}") from None
    _check_element_bytes(items, where, limits)
    return _object_array(items)


_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}  # JSON kinds each target dtype takes


def _decode_numeric_json(
    data: Any, dtype: np.dtype[Any], count: int, where: str, limits: DecodeLimits
) -> npt.NDArray[Any]:
    if not _data_depth_ok(data, limits.max_rank):
        raise InvalidInput(f"{where}: 'data' is nested deeper than the limit of {limits.max_rank} levels")
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"{where}: 'data' is ragged: every row must have the same length") from None
    if raw.size != count:
        raise InvalidInput(f"{where}: shape holds {count} elements but 'data' has {raw.size}")
    if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidInput(f"{where}: 'data' must hold {dtype.name} values (found {_describe_kind(raw.dtype.kind)})")
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


def _split_uniform(buf: bytes, start: int, size: int, count: int, max_element_bytes: int) -> list[bytes] | None:
    """Split ``count`` elements that all have the first one's length in one vectorized pass, or return None.

    Fixed-width elements (ids, tokens, hashes, a probe's padding) are common; for them the per-element Python
    loop of ``_split_prefixed`` is replaced by a structured numpy view over the body and one ``tolist``.
    """
    length = int.from_bytes(buf[start : start + _PREFIX_BYTES], "little")
    if length > max_element_bytes or count * (_PREFIX_BYTES + length) != size:
        return None
    layout = np.dtype([("length", "<u4"), ("value", f"V{length}")])
    records = np.frombuffer(buf, dtype=layout, count=count, offset=start)
    if not bool((records["length"] == length).all()):
        return None
    if length == 0:
        return [b""] * count
    values: list[bytes] = records["value"].tolist()  # a void scalar's item is its bytes, NULs included
    return values


def _split_prefixed(buf: bytes, start: int, end: int, count: int, where: str, limits: DecodeLimits) -> list[bytes]:
    """Split ``count`` length-prefixed elements of any lengths.

    Each offset depends on the previous length, so this is a loop, kept to one ``int.from_bytes``, one slice and
    one comparison per element: a prefix cut short by ``end`` makes ``pos`` pass ``end`` too, and element sizes
    are checked afterwards in one C-level pass (an oversized element was copied at most once, within the body).
    """
    from_bytes = int.from_bytes
    items: list[bytes] = []
    append = items.append
    pos = start
    for _ in range(count):
        head_end = pos + _PREFIX_BYTES
        pos = head_end + from_bytes(buf[pos:head_end], "little")
        if pos > end:
            if head_end > end:
                raise InvalidInput(f"{where}: binary BYTES data ends before element {len(items)}")
            raise InvalidInput(
                f"{where}: binary BYTES element {len(items)} runs past the data ({pos - head_end:,} bytes declared)"
            )
        append(buf[head_end:pos])
    if pos != end:
        raise InvalidInput(f"{where}: binary BYTES data has {end - pos} trailing bytes")
    _check_element_bytes(items, where, limits)
    return items


def _check_element_bytes(items: list[bytes], where: str, limits: DecodeLimits) -> None:
    longest = max(map(len, items), default=0)
    if longest > limits.max_element_bytes:
        raise InvalidInput(
            f"{where}: a BYTES element has {longest:,} bytes, more than the limit of {limits.max_element_bytes:,}"
        )


def _decode_bytes_binary(
    buf: bytes, start: int, end: int, count: int, where: str, limits: DecodeLimits
) -> npt.NDArray[Any]:
    size = end - start
    if count > size // _PREFIX_BYTES:  # checked before allocating anything for ``count`` elements
        raise InvalidInput(
            f"{where}: binary_data_size {size:,} cannot hold the {count:,} BYTES elements the shape declares "
            f"(each needs a {_PREFIX_BYTES}-byte length prefix)"
        )
    if count == 0:
        if size:
            raise InvalidInput(f"{where}: binary BYTES data has {size} trailing bytes")
        return np.empty(0, dtype=object)
    items = _split_uniform(buf, start, size, count, limits.max_element_bytes)
    if items is None:
        items = _split_prefixed(buf, start, end, count, where, limits)
    return _object_array(items)


def _decode_numeric_binary(
    buf: bytes, start: int, end: int, count: int, datatype: str, shape: list[int], where: str
) -> npt.NDArray[Any]:
    dtype = NUMPY_DTYPES[datatype]
    if end - start != count * dtype.itemsize:
        raise InvalidInput(f"{where}: binary_data_size {end - start} does not match shape {shape} of {datatype}")
    little = dtype.newbyteorder("<")
    return np.frombuffer(buf, dtype=little, count=count, offset=start).astype(dtype, copy=False)


def _binary_end(size: Any, offset: int, body_length: int, where: str) -> int:
    if type(size) is not int or size < 0:
        raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer, not {_shown(size)}")
    if size > body_length - offset:
        raise InvalidInput(
            f"{where}: binary_data_size runs past the end of the request body ({size:,} bytes declared, "
            f"{body_length - offset:,} left)"
        )
    return offset + size


@dataclass(frozen=True, slots=True)
class _Declared:
    """One input as its JSON declares it, every size checked; its data is decoded only once all inputs pass."""

    doc: dict[str, Any]
    where: str
    name: str
    datatype: str
    shape: list[int]
    count: int
    parameters: dict[str, Any]
    binary: tuple[int, int] | None  # [start, end) of its binary data in the body


def _declare_input(doc: Any, index: int, offset: int, body_length: int, budget: _Budget) -> _Declared:
    """Check ``inputs[index]``'s declarations; its binary data, if any, starts at ``offset`` in the body."""
    limits = budget.limits
    where = f"inputs[{index}]"
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: must be an object with name, shape, datatype and data")
    name = _check_name(doc.get("name"), where, limits)
    where = f"input {name!r}"
    datatype = doc.get("datatype")
    if not isinstance(datatype, str) or datatype not in _DATATYPES:
        raise InvalidInput(f"{where}: unknown datatype {_shown(datatype)} (one of {', '.join(sorted(_DATATYPES))})")
    shape, count = _check_shape(doc.get("shape"), where, limits)
    budget.take(count, datatype, where)
    params = _check_parameters(doc.get("parameters"), where, limits)
    size = params.get("binary_data_size")
    binary = None if size is None else (offset, _binary_end(size, offset, body_length, where))
    params = {k: v for k, v in params.items() if k != "binary_data_size"}
    return _Declared(doc, where, name, datatype, shape, count, params, binary)


def _decode_input(declared: _Declared, body: bytes, limits: DecodeLimits) -> Tensor:
    d = declared
    if d.binary is not None:
        start, end = d.binary
        if d.datatype == "BYTES":
            data = _decode_bytes_binary(body, start, end, d.count, d.where, limits)
        else:
            data = _decode_numeric_binary(body, start, end, d.count, d.datatype, d.shape, d.where)
    elif d.datatype == "BYTES":
        data = _decode_bytes_json(_require_data(d.doc, d.where), d.count, d.where, limits)
    else:
        data = _decode_numeric_json(_require_data(d.doc, d.where), NUMPY_DTYPES[d.datatype], d.count, d.where, limits)
    return Tensor(d.name, d.datatype, d.shape, data.reshape(d.shape), d.parameters)


def _require_data(doc: Mapping[str, Any], where: str) -> Any:
    if "data" not in doc:
        raise InvalidInput(f"{where}: 'data' is required (or parameters.binary_data_size with binary data)")
    return doc["data"]


def _json_end(body: bytes, header_length: int | None) -> int:
    """Where the JSON header ends and the binary data starts (the body's end when there is no binary data)."""
    if header_length is None:
        return len(body)
    if type(header_length) is not int or header_length < 0:
        raise InvalidInput("Inference-Header-Content-Length must be a non-negative integer")
    if header_length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is larger than the request body ({header_length:,} > {len(body):,})"
        )
    return header_length


def _check_outputs(outputs: Any, limits: DecodeLimits) -> list[dict[str, Any]] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    if len(outputs) > limits.max_requested_outputs:
        raise InvalidInput(
            f"'outputs' lists {len(outputs):,} outputs, more than the limit of {limits.max_requested_outputs}"
        )
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            raise InvalidInput(f"outputs[{i}]: must be an object with a 'name'")
        name = _check_name(out.get("name"), f"outputs[{i}]", limits)
        _check_parameters(out.get("parameters"), f"output {name!r}", limits)
    return outputs


def _check_id(req_id: Any, limits: DecodeLimits) -> str | None:
    if req_id is None:
        return None
    if isinstance(req_id, bool) or not isinstance(req_id, str | int):
        raise InvalidInput(f"'id' must be a string, not {_shown(req_id)}")
    text = str(req_id)
    if len(text) > limits.max_name_length:
        raise InvalidInput(f"'id' has {len(text):,} characters, more than the limit of {limits.max_name_length}")
    return text


def decode_request(body: bytes, header_length: int | None, limits: DecodeLimits = DEFAULT_LIMITS) -> InferRequest:
    """Decode an inference request body. ``header_length`` is the Inference-Header-Content-Length, if sent.

    Every size the body declares is checked against ``limits`` and against the body before it is used.
    """
    json_end = _json_end(body, header_length)
    try:
        doc = orjson.loads(memoryview(body)[:json_end])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    if len(raw_inputs) > limits.max_inputs:
        raise InvalidInput(f"'inputs' lists {len(raw_inputs):,} inputs, more than the limit of {limits.max_inputs}")
    params = _check_parameters(doc.get("parameters"), "request", limits)
    outputs = _check_outputs(doc.get("outputs"), limits)
    req_id = _check_id(doc.get("id"), limits)
    budget = _Budget(limits)
    declared, offset = [], json_end
    for i, item in enumerate(raw_inputs):
        tensor = _declare_input(item, i, offset, len(body), budget)
        declared.append(tensor)
        if tensor.binary is not None:
            offset = tensor.binary[1]
    if offset != len(body):
        raise InvalidInput(f"request body has {len(body) - offset} bytes of binary data no input claims")
    inputs = [_decode_input(d, body, limits) for d in declared]
    return InferRequest(id=req_id, inputs=inputs, parameters=params, outputs=outputs)


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
