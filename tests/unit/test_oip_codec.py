"""The Open Inference Protocol v2 codec: JSON bodies, the binary tensor data extension, validation, responses.

Binary bodies are assembled by hand from the KServe V2 binary tensor data extension: the JSON header, then
each binary tensor in input order; numeric elements little-endian, BYTES elements prefixed by a 4-byte
little-endian length. Responses are taken apart the same way, so the tests do not trust the codec to read
back what it wrote.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Tensor, TensorSpec, bytes_tensor
from modelmarket.runtime.oip import (
    InferRequest,
    decode_request,
    encode_response,
    validate_inputs,
    validate_requested_outputs,
)


def json_body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode("utf-8")


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    """A request body per the binary extension: (body, Inference-Header-Content-Length)."""
    head = json.dumps(header).encode("utf-8")
    return head + b"".join(blobs), len(head)


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def split_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Parse a response by hand: the JSON header and each binary output's raw bytes, by output name."""
    if header_length is None:
        return json.loads(body), {}
    header = json.loads(body[:header_length])
    blobs: dict[str, bytes] = {}
    pos = header_length
    for out in header["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            blobs[out["name"]] = body[pos : pos + size]
            pos += size
    assert pos == len(body), "the response carries bytes no output claims"
    return header, blobs


def unprefix(raw: bytes) -> list[bytes]:
    items, pos = [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from("<I", raw, pos)
        items.append(raw[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return items


# -- JSON requests ---------------------------------------------------------------------------------------


def test_json_flat_data_is_reshaped_to_the_declared_shape() -> None:
    body = json_body(
        {
            "id": "req-1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6.5]}],
        }
    )
    request = decode_request(body, None)
    assert request.id == "req-1"
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", "FP32", [2, 3])
    assert tensor.data.dtype == np.float32
    assert tensor.data.shape == (2, 3)
    assert tensor.data[1].tolist() == [4.0, 5.0, 6.5]


def test_json_nested_data_gives_the_same_tensor_as_flat_data() -> None:
    nested = decode_request(
        json_body({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}),
        None,
    )
    flat = decode_request(
        json_body({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}]}),
        None,
    )
    assert nested.inputs[0].data.dtype == np.int64
    assert nested.inputs[0].data.tolist() == [[1, 2], [3, 4]]
    assert np.array_equal(nested.inputs[0].data, flat.inputs[0].data)


def test_json_bytes_strings_become_utf8_bytes() -> None:
    body = json_body(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 2], "data": [["héllo", "b"], ["", "✓"]]}]}
    )
    [tensor] = decode_request(body, None).inputs
    assert tensor.data.shape == (2, 2)
    assert tensor.data.dtype == object
    assert tensor.data.tolist() == [["héllo".encode(), b"b"], [b"", "✓".encode()]]


def test_json_request_keeps_parameters_and_requested_outputs() -> None:
    body = json_body(
        {
            "inputs": [{"name": "x", "datatype": "BOOL", "shape": [2], "data": [True, False]}],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "y"}],
        }
    )
    request = decode_request(body, None)
    assert request.id is None
    assert request.inputs[0].data.tolist() == [True, False]
    assert request.parameters == {"binary_data_output": True}
    assert request.outputs == [{"name": "y"}]


def test_scalar_shape_holds_one_element() -> None:
    [tensor] = decode_request(
        json_body({"inputs": [{"name": "x", "datatype": "FP64", "shape": [], "data": 2.5}]}), None
    ).inputs
    assert tensor.data.shape == ()
    assert float(tensor.data) == 2.5


# -- binary extension requests ---------------------------------------------------------------------------


def test_binary_numeric_tensor_is_little_endian() -> None:
    raw = struct.pack("<4i", 1, -2, 300_000, -(2**31))
    header = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}]}
    body, header_length = binary_body(header, raw)
    [tensor] = decode_request(body, header_length).inputs
    assert tensor.data.dtype == np.int32
    assert tensor.data.tolist() == [[1, -2], [300_000, -(2**31)]]
    assert "binary_data_size" not in tensor.parameters


def test_binary_bytes_tensor_uses_4_byte_le_length_prefixes() -> None:
    items = [b"hello", b"", b"\x00\xff binary", "wörld".encode()]
    raw = length_prefixed(*items)
    header = {
        "inputs": [{"name": "b", "datatype": "BYTES", "shape": [4], "parameters": {"binary_data_size": len(raw)}}]
    }
    body, header_length = binary_body(header, raw)
    [tensor] = decode_request(body, header_length).inputs
    assert tensor.data.tolist() == items


def test_binary_tensors_follow_the_header_in_input_order_mixed_with_json() -> None:
    fp64 = struct.pack("<3d", 0.5, -1.25, 1e300)
    text = length_prefixed(b"a", b"bc")
    header = {
        "inputs": [
            {
                "name": "first",
                "datatype": "FP64",
                "shape": [3],
                "parameters": {"binary_data_size": len(fp64)},
            },
            {"name": "inline", "datatype": "UINT8", "shape": [2], "data": [7, 255]},
            {
                "name": "last",
                "datatype": "BYTES",
                "shape": [2, 1],
                "parameters": {"binary_data_size": len(text)},
            },
        ]
    }
    body, header_length = binary_body(header, fp64, text)
    first, inline, last = decode_request(body, header_length).inputs
    assert first.data.tolist() == [0.5, -1.25, 1e300]
    assert inline.data.dtype == np.uint8
    assert inline.data.tolist() == [7, 255]
    assert last.data.tolist() == [[b"a"], [b"bc"]]


def test_binary_fp16_and_bool() -> None:
    halves = np.array([1.5, -2.0], dtype="<f2").tobytes()
    flags = bytes([1, 0, 1])
    header = {
        "inputs": [
            {"name": "h", "datatype": "FP16", "shape": [2], "parameters": {"binary_data_size": 4}},
            {"name": "f", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}},
        ]
    }
    body, header_length = binary_body(header, halves, flags)
    h, f = decode_request(body, header_length).inputs
    assert h.data.dtype == np.float16
    assert h.data.tolist() == [1.5, -2.0]
    assert f.data.tolist() == [True, False, True]


def test_header_length_equal_to_body_is_a_plain_json_request() -> None:
    body = json_body({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [-3]}]})
    assert decode_request(body, len(body)).inputs[0].data.tolist() == [-3]


# -- responses -------------------------------------------------------------------------------------------


def outputs_fixture() -> list[Tensor]:
    scores = Tensor("scores", "FP32", [2, 2], np.array([[0.25, 0.75], [1.0, -0.5]], dtype=np.float32))
    label = bytes_tensor("label", [b"positive", "négatif".encode()])
    return [scores, label]


def test_json_response_round_trip() -> None:
    request = InferRequest(id="abc", inputs=[])
    body, header_length = encode_response("sentiment", "1.2.0", request, outputs_fixture())
    assert header_length is None
    doc, blobs = split_response(body, header_length)
    assert blobs == {}
    assert doc["model_name"] == "sentiment"
    assert doc["model_version"] == "1.2.0"
    assert doc["id"] == "abc"
    scores, label = doc["outputs"]
    assert scores == {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 1.0, -0.5]}
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "négatif"]}


def test_response_without_request_id_has_no_id() -> None:
    body, _ = encode_response("m", "1.0.0", InferRequest(id=None, inputs=[]), outputs_fixture())
    assert "id" not in json.loads(body)


def test_binary_response_for_every_output_when_the_request_asks() -> None:
    request = InferRequest(id=None, inputs=[], parameters={"binary_data_output": True})
    body, header_length = encode_response("m", "1.0.0", request, outputs_fixture())
    assert header_length is not None
    doc, blobs = split_response(body, header_length)
    for out in doc["outputs"]:
        assert "data" not in out
    assert struct.unpack("<4f", blobs["scores"]) == (0.25, 0.75, 1.0, -0.5)
    assert unprefix(blobs["label"]) == [b"positive", "négatif".encode()]


def test_per_output_binary_data_overrides_the_request_default() -> None:
    request = InferRequest(
        id=None,
        inputs=[],
        parameters={"binary_data_output": True},
        outputs=[{"name": "scores", "parameters": {"binary_data": False}}, {"name": "label"}],
    )
    body, header_length = encode_response("m", "1.0.0", request, outputs_fixture())
    doc, blobs = split_response(body, header_length)
    scores, label = doc["outputs"]
    assert scores["data"] == [0.25, 0.75, 1.0, -0.5]
    assert "parameters" not in scores
    assert label["parameters"] == {"binary_data_size": len(blobs["label"])}
    assert unprefix(blobs["label"]) == [b"positive", "négatif".encode()]


def test_per_output_binary_data_alone_and_output_selection() -> None:
    ints = Tensor("ids", "INT64", [3], np.array([1, -1, 2**40], dtype=np.int64))
    request = InferRequest(id=None, inputs=[], outputs=[{"name": "ids", "parameters": {"binary_data": True}}])
    body, header_length = encode_response("m", "1.0.0", request, [*outputs_fixture(), ints])
    doc, blobs = split_response(body, header_length)
    assert [o["name"] for o in doc["outputs"]] == ["ids"]  # only the requested output
    assert struct.unpack("<3q", blobs["ids"]) == (1, -1, 2**40)


def test_binary_request_decoded_and_answered_in_binary() -> None:
    """A full loop: hand-built binary request, decoded, echoed back as a binary response, unpacked by hand."""
    raw = struct.pack("<2f", 3.5, -0.125)
    header = {
        "id": "loop",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}],
        "outputs": [{"name": "x", "parameters": {"binary_data": True}}],
    }
    body, header_length = binary_body(header, raw)
    request = decode_request(body, header_length)
    answer, answer_header_length = encode_response("echo", "1.0.0", request, request.inputs)
    doc, blobs = split_response(answer, answer_header_length)
    assert doc["id"] == "loop"
    assert doc["outputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]
    assert blobs["x"] == raw


# -- request errors --------------------------------------------------------------------------------------


def test_invalid_json() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        decode_request(b'{"inputs": [', None)


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidInput, match="JSON object"):
        decode_request(b"[1, 2]", None)


@pytest.mark.parametrize("doc", [{}, {"inputs": []}, {"inputs": {"name": "x"}}], ids=["absent", "empty", "object"])
def test_missing_inputs(doc: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="'inputs' must be a non-empty list"):
        decode_request(json_body(doc), None)


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("FP32", [1, 2, 3]), ("FP32", [[1, 2], [3, 4], [5, 6]]), ("BYTES", ["a", "b", "c", "d", "e"])],
    ids=["numeric-short", "numeric-nested-long", "bytes-long"],
)
def test_element_count_must_match_shape(datatype: str, data: list[Any]) -> None:
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "data": data}]}
    with pytest.raises(InvalidInput, match=r"input 'x': shape holds 4 elements but 'data' has \d"):
        decode_request(json_body(doc), None)


def test_binary_size_must_match_shape() -> None:
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 8}}]}
    body, header_length = binary_body(header, struct.pack("<2f", 1, 2))
    with pytest.raises(InvalidInput, match=r"input 'x': binary_data_size 8 does not match shape \[3\] of FP32"):
        decode_request(body, header_length)


def test_binary_bytes_count_must_match_shape() -> None:
    raw = length_prefixed(b"only one")
    header = {
        "inputs": [{"name": "b", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}}]
    }
    body, header_length = binary_body(header, raw)
    with pytest.raises(InvalidInput, match="input 'b': binary BYTES data ends before element 1"):
        decode_request(body, header_length)


@pytest.mark.parametrize("datatype", ["FLOAT32", "STRING", None, 5])
def test_unknown_datatype(datatype: Any) -> None:
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [1]}]}
    with pytest.raises(InvalidInput, match=r"input 'x': unknown datatype"):
        decode_request(json_body(doc), None)


def test_bad_shape_and_missing_name_and_data() -> None:
    with pytest.raises(InvalidInput, match="'shape' must be a list of non-negative integers"):
        decode_request(json_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]}), None)
    with pytest.raises(InvalidInput, match=r"inputs\[0\]: 'name' is required"):
        decode_request(json_body({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}), None)
    with pytest.raises(InvalidInput, match="input 'x': 'data' is required"):
        decode_request(json_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}), None)
    with pytest.raises(InvalidInput, match="must hold float32 values"):
        decode_request(json_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["x"]}]}), None)


def test_binary_data_size_past_the_end_of_the_body() -> None:
    header = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [4], "parameters": {"binary_data_size": 16}}]}
    body, header_length = binary_body(header, struct.pack("<3i", 1, 2, 3))
    with pytest.raises(InvalidInput, match="input 'x': binary_data_size runs past the end of the request body"):
        decode_request(body, header_length)


def test_binary_data_size_without_binary_part() -> None:
    doc = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    with pytest.raises(InvalidInput, match="binary_data_size runs past the end"):
        decode_request(json_body(doc), None)


def test_trailing_unclaimed_binary_bytes() -> None:
    header = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    body, header_length = binary_body(header, struct.pack("<i", 9), b"\x00\x01\x02")
    with pytest.raises(InvalidInput, match="3 bytes of binary data no input claims"):
        decode_request(body, header_length)


def test_trailing_bytes_inside_a_binary_bytes_tensor() -> None:
    raw = length_prefixed(b"ab") + b"zz"
    header = {
        "inputs": [{"name": "b", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}]
    }
    body, header_length = binary_body(header, raw)
    with pytest.raises(InvalidInput, match="input 'b': binary BYTES data has 2 trailing bytes"):
        decode_request(body, header_length)


def test_header_length_larger_than_body() -> None:
    body = json_body({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]})
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length is larger than the request body"):
        decode_request(body, len(body) + 1)


def test_header_length_cutting_the_json_short() -> None:
    body = json_body({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]})
    with pytest.raises(InvalidInput, match="not valid JSON"):
        decode_request(body, len(body) - 2)


def test_requested_outputs_must_be_objects() -> None:
    body = json_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": ["y"]})
    with pytest.raises(InvalidInput):
        request = decode_request(body, None)
        encode_response("m", "1.0.0", request, [Tensor("y", "FP32", [1], np.ones(1, dtype=np.float32))])


def test_boolean_dimension_is_invalid_input() -> None:
    body = json_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [True, 2], "data": [1, 2]}]})
    with pytest.raises(InvalidInput, match="shape"):
        decode_request(body, None)


# -- validate_inputs -------------------------------------------------------------------------------------

SPECS = (TensorSpec("pixels", "FP32", (-1, 64)), TensorSpec("mask", "BOOL", (-1, 8, 8)))


def tensor(name: str, datatype: str, shape: list[int]) -> Tensor:
    return Tensor(name, datatype, shape, np.zeros(shape, dtype=np.float32))


def test_valid_inputs_pass_and_minus_one_accepts_any_size() -> None:
    for batch in (1, 17, 250):
        validate_inputs([tensor("mask", "BOOL", [batch, 8, 8]), tensor("pixels", "FP32", [batch, 64])], SPECS, "digits")


def test_an_empty_batch_is_refused_so_nothing_is_billed_for_nothing() -> None:
    with pytest.raises(InvalidInput, match="'mask' has no elements"):
        validate_inputs([tensor("mask", "BOOL", [0, 8, 8]), tensor("pixels", "FP32", [0, 64])], SPECS, "digits")


def test_a_requested_output_the_model_lacks_is_refused() -> None:
    body = json_body(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{"name": "nope"}]}
    )
    request = decode_request(body, None)
    with pytest.raises(InvalidInput, match="no output named 'nope'"):
        validate_requested_outputs(request, frozenset({"label", "probabilities"}), "digits")
    validate_requested_outputs(
        decode_request(
            json_body(
                {
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
                    "outputs": [{"name": "label"}],
                }
            ),
            None,
        ),
        frozenset({"label"}),
        "digits",
    )


def test_unknown_input_name() -> None:
    inputs = [
        tensor("pixels", "FP32", [1, 64]),
        tensor("mask", "BOOL", [1, 8, 8]),
        tensor("image", "FP32", [1]),
    ]
    with pytest.raises(InvalidInput, match=r"model 'digits' has no input named 'image' \(expected: pixels, mask\)"):
        validate_inputs(inputs, SPECS, "digits")


def test_wrong_datatype() -> None:
    inputs = [tensor("pixels", "FP64", [1, 64]), tensor("mask", "BOOL", [1, 8, 8])]
    with pytest.raises(InvalidInput, match="input 'pixels': datatype FP64 does not match the model's FP32"):
        validate_inputs(inputs, SPECS, "digits")


@pytest.mark.parametrize("shape", [[64], [1, 1, 64]], ids=["rank-1", "rank-3"])
def test_wrong_rank(shape: list[int]) -> None:
    inputs = [tensor("pixels", "FP32", shape), tensor("mask", "BOOL", [1, 8, 8])]
    with pytest.raises(InvalidInput, match=r"input 'pixels': shape \[.*\] does not match the model's \[-1, 64\]"):
        validate_inputs(inputs, SPECS, "digits")


def test_wrong_fixed_dimension() -> None:
    inputs = [tensor("pixels", "FP32", [2, 64]), tensor("mask", "BOOL", [2, 8, 9])]
    with pytest.raises(InvalidInput, match=r"input 'mask': shape \[2, 8, 9\] does not match the model's \[-1, 8, 8\]"):
        validate_inputs(inputs, SPECS, "digits")


def test_missing_input() -> None:
    with pytest.raises(InvalidInput, match="model 'digits' needs input\\(s\\) mask"):
        validate_inputs([tensor("pixels", "FP32", [1, 64])], SPECS, "digits")


def test_input_given_twice() -> None:
    inputs = [tensor("pixels", "FP32", [1, 64]), tensor("pixels", "FP32", [1, 64])]
    with pytest.raises(InvalidInput, match="input 'pixels' is given twice"):
        validate_inputs(inputs, SPECS, "digits")
