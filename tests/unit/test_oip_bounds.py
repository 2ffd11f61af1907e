"""The codec's bounds: every size a request declares is checked against the body and DecodeLimits first.

A hostile probe found bodies whose declared shapes or counts made the codec allocate far beyond the body (500 on
MemoryError or ValueError) or loop for seconds. Each class of declared size gets cases here; the refusals that
used to allocate are measured with tracemalloc (numpy reports its buffers to it), a deterministic bound, not a
clock. Bodies are assembled by hand, as in test_oip_codec.py.
"""

from __future__ import annotations

import json
import random
import struct
import tracemalloc
from collections import Counter
from typing import Any

import numpy as np
import pytest

from modelmarket.core.errors import InvalidInput, InvariantViolated
from modelmarket.runtime.oip import DEFAULT_LIMITS, DecodeLimits, decode_request

# A refusal of a small body may allocate the parsed JSON header and its own message, never what the body declares.
REFUSAL_PEAK_BYTES = 1 << 20


def json_body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode("utf-8")


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode("utf-8")
    return head + b"".join(blobs), len(head)


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def one_input(**tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", **tensor}]}


def binary_input(datatype: str, shape: list[Any], blob: bytes, size: Any = None) -> tuple[bytes, int]:
    size = len(blob) if size is None else size
    return binary_body(
        one_input(datatype=datatype, shape=shape, parameters={"binary_data_size": size}),
        blob,
    )


def refused(body: bytes, header_length: int | None, limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[str, int]:
    """Decode a request that must be refused: (the InvalidInput message, peak bytes allocated while refusing)."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as info:
            decode_request(body, header_length, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(info.value), peak


# -- the limits themselves -------------------------------------------------------------------------------


def test_default_limits_are_the_documented_ones() -> None:
    documented = DecodeLimits(
        max_inputs=64,
        max_requested_outputs=64,
        max_rank=8,
        max_name_length=256,
        max_elements_per_tensor=16_777_216,
        max_elements_per_request=16_777_216,
        max_bytes_elements_per_request=1_000_000,
        max_element_bytes=16 * 1024 * 1024,
        max_parameters=64,
        max_parameter_length=65_536,
    )
    assert documented == DEFAULT_LIMITS


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_limit_must_be_a_positive_integer(bad: Any) -> None:
    with pytest.raises(InvariantViolated, match=r"DecodeLimits\.max_rank must be a positive integer"):
        DecodeLimits(max_rank=bad)


def test_the_existing_two_argument_call_still_decodes() -> None:
    body = json_body(one_input(datatype="INT32", shape=[2], data=[1, 2]))
    assert decode_request(body, None).inputs[0].data.tolist() == [1, 2]


# -- huge declared shapes: refused in Python ints before numpy or any allocation ---------------------------


@pytest.mark.parametrize(
    "shape",
    [[10**15], [2**62], [2**63 - 1], [2**40, 2**40], [4096, 4096, 2], [0, 2**62], [2**62, 0], [1] * 7 + [2**62]],
    ids=[
        "1e15",
        "2^62",
        "int64-max",
        "product-overflows-int64",
        "just-over",
        "zero-then-huge",
        "huge-then-zero",
        "rank8",
    ],
)
@pytest.mark.parametrize("datatype", ["BYTES", "FP32", "BOOL"])
def test_huge_shapes_are_refused_without_allocating(shape: list[int], datatype: str) -> None:
    for body, header_length in (
        binary_input(datatype, shape, length_prefixed(b"a", b"b")),
        (json_body(one_input(datatype=datatype, shape=shape, data=[])), None),
    ):
        message, peak = refused(body, header_length)
        assert "input 'x': shape" in message
        assert "more than the limit of 16,777,216 elements per tensor" in message
        assert peak < REFUSAL_PEAK_BYTES


@pytest.mark.parametrize("dim", [-1, -(2**62), 1e15, 2.0, "3", None, True, [2], {"n": 2}])
def test_a_dimension_must_be_a_non_negative_json_integer(dim: Any) -> None:
    body = json_body(one_input(datatype="FP32", shape=[1, dim], data=[1.0]))
    message, _ = refused(body, None)
    assert message.startswith("input 'x': 'shape' must be a list of non-negative integers, not ")


@pytest.mark.parametrize("shape", [{"0": 1}, "[1]", 3, None])
def test_a_shape_must_be_a_list(shape: Any) -> None:
    message, _ = refused(json_body(one_input(datatype="FP32", shape=shape, data=[1.0])), None)
    assert message == "input 'x': 'shape' must be a list of non-negative integers"


@pytest.mark.parametrize("rank", [9, 64, 100_000])
def test_shape_rank_is_bounded(rank: int) -> None:
    message, peak = refused(json_body(one_input(datatype="FP32", shape=[1] * rank, data=[1.0])), None)
    assert message == f"input 'x': 'shape' has {rank:,} dimensions, more than the limit of 8"
    if rank < 1000:
        assert peak < REFUSAL_PEAK_BYTES


def test_rank_up_to_the_limit_decodes() -> None:
    [tensor] = decode_request(json_body(one_input(datatype="INT8", shape=[1] * 8, data=[5])), None).inputs
    assert tensor.data.shape == (1,) * 8


def test_zero_sized_tensors_with_bounded_dimensions_decode() -> None:
    body, header_length = binary_input("BYTES", [0, 5], b"")
    [tensor] = decode_request(body, header_length).inputs
    assert tensor.data.shape == (0, 5)
    [numeric] = decode_request(json_body(one_input(datatype="INT32", shape=[3, 0], data=[])), None).inputs
    assert numeric.data.shape == (3, 0)
    assert numeric.data.dtype == np.int32


# -- element counts against the per-tensor and per-request limits ----------------------------------------


def test_elements_per_tensor_limit_is_configurable() -> None:
    limits = DecodeLimits(max_elements_per_tensor=6)
    ok = json_body(one_input(datatype="INT32", shape=[2, 3], data=[1, 2, 3, 4, 5, 6]))
    assert decode_request(ok, None, limits).inputs[0].data.shape == (2, 3)
    message, _ = refused(json_body(one_input(datatype="INT32", shape=[7], data=[0] * 7)), None, limits)
    assert message == "input 'x': shape [7] declares more than the limit of 6 elements per tensor"
    message, _ = refused(json_body(one_input(datatype="INT32", shape=[7, 0], data=[])), None, limits)
    assert "more than the limit of 6 elements per tensor" in message


def test_elements_per_request_add_up_across_inputs() -> None:
    limits = DecodeLimits(max_elements_per_request=10)
    inputs = [{"name": f"t{i}", "datatype": "FP32", "shape": [4], "data": [0.0] * 4} for i in range(3)]
    message, _ = refused(json_body({"inputs": inputs}), None, limits)
    assert message == "input 't2': the request declares 12 elements in all, more than the limit of 10 per request"
    assert len(decode_request(json_body({"inputs": inputs[:2]}), None, limits).inputs) == 2


def test_default_elements_per_request_refuses_two_full_tensors() -> None:
    shape = [4096, 4096]
    inputs = [{"name": n, "datatype": "UINT8", "shape": shape, "parameters": {"binary_data_size": 0}} for n in "ab"]
    message, peak = refused(*binary_body({"inputs": inputs}))
    assert message.startswith("input 'b': the request declares 33,554,432 elements in all")
    assert peak < REFUSAL_PEAK_BYTES


def test_bytes_elements_per_request_have_their_own_tighter_bound() -> None:
    limits = DecodeLimits(max_bytes_elements_per_request=3)
    text = {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
    numbers = {"name": "n", "datatype": "INT8", "shape": [5], "data": [1] * 5}
    assert len(decode_request(json_body({"inputs": [text, numbers]}), None, limits).inputs) == 2
    message, _ = refused(json_body({"inputs": [text, {**text, "name": "u"}]}), None, limits)
    assert message == "input 'u': the request declares 4 BYTES elements in all, more than the limit of 3 per request"


def test_the_probe_body_of_16_million_bytes_elements_is_refused_before_decoding() -> None:
    """The probe: ~64 MB of 4-byte prefixes declaring 16 million empty strings held the event loop for 9 s."""
    count = 16_000_000
    body, header_length = binary_input("BYTES", [count], b"\x00" * (4 * count))
    message, peak = refused(body, header_length)
    assert message.endswith(
        "the request declares 16,000,000 BYTES elements in all, more than the limit of 1,000,000 per request"
    )
    assert peak < REFUSAL_PEAK_BYTES


# -- binary_data_size against the body ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [-1, 1.5, "8", True])
def test_binary_data_size_must_be_a_non_negative_integer(size: Any) -> None:
    header = one_input(datatype="INT32", shape=[2], parameters={"binary_data_size": size})
    message, _ = refused(*binary_body(header, struct.pack("<2i", 1, 2)))
    assert message.startswith(f"input 'x': binary_data_size must be a non-negative integer, not {size!r}")


@pytest.mark.parametrize("size", [9, 2**31, 2**62, 2**64 - 1])
def test_binary_data_size_past_the_body_is_refused_without_allocating(size: int) -> None:
    message, peak = refused(*binary_input("UINT8", [8], b"\x01" * 8, size=size))
    assert message == (
        f"input 'x': binary_data_size runs past the end of the request body ({size:,} bytes declared, 8 left)"
    )
    assert peak < REFUSAL_PEAK_BYTES


def test_binary_data_size_counts_from_where_the_previous_input_ended() -> None:
    header = {
        "inputs": [
            {"name": "a", "datatype": "INT8", "shape": [4], "parameters": {"binary_data_size": 4}},
            {"name": "b", "datatype": "INT8", "shape": [4], "parameters": {"binary_data_size": 4}},
        ]
    }
    message, _ = refused(*binary_body(header, b"\x01" * 7))
    assert message == "input 'b': binary_data_size runs past the end of the request body (4 bytes declared, 3 left)"


def test_numeric_binary_size_must_equal_shape_times_itemsize() -> None:
    for shape, blob in (([3], b"\x00" * 8), ([1_000_000], b"\x00" * 8), ([2], b"\x00" * 12)):
        message, peak = refused(*binary_input("FP32", shape, blob))
        assert message == f"input 'x': binary_data_size {len(blob)} does not match shape {shape} of FP32"
        assert peak < REFUSAL_PEAK_BYTES


# -- BYTES elements in the binary section: prefixes, counts, sizes -----------------------------------------


def test_a_bytes_shape_needing_more_prefixes_than_the_data_holds_is_refused_before_allocating() -> None:
    """1,000,000 elements need at least 4 MB of prefixes; 8 bytes are sent. Nothing is built for the million."""
    message, peak = refused(*binary_input("BYTES", [1_000_000], length_prefixed(b"ab", b"")))
    assert message == (
        "input 'x': binary_data_size 10 cannot hold the 1,000,000 BYTES elements the shape declares "
        "(each needs a 4-byte length prefix)"
    )
    assert peak < REFUSAL_PEAK_BYTES


@pytest.mark.parametrize(
    ("count", "blob", "words"),
    [
        (1, struct.pack("<I", 2**32 - 1) + b"abc", "binary BYTES element 0 runs past the data (4,294,967,295 bytes"),
        (2, length_prefixed(b"ab") + struct.pack("<I", 10) + b"xyz", "binary BYTES element 1 runs past the data (10"),
        (2, length_prefixed(b"ab") + struct.pack("<I", 2**31) + b"abcd", "binary BYTES element 1 runs past the data"),
        (3, length_prefixed(b"ab", b"cd") + b"\x01\x00", "binary BYTES data ends before element 2"),
        (1, length_prefixed(b"ab", b"cd"), "binary BYTES data has 6 trailing bytes"),
    ],
    ids=["prefix-4GiB", "prefix-past-end", "prefix-2GiB-after-one", "truncated-prefix", "more-elements-than-shape"],
)
def test_bytes_prefixes_are_checked_against_the_tensors_own_data(count: int, blob: bytes, words: str) -> None:
    message, peak = refused(*binary_input("BYTES", [count], blob))
    assert message.startswith(f"input 'x': {words}")
    assert peak < REFUSAL_PEAK_BYTES


def test_a_bytes_prefix_may_not_reach_into_the_next_inputs_data() -> None:
    """The body is long enough for the claimed length, but the tensor's own binary_data_size is not."""
    text = struct.pack("<I", 8) + b"abcd"  # claims 8 bytes, has 4; the next input's 8 bytes follow
    header = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(text)}},
            {"name": "n", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
        ]
    }
    message, _ = refused(*binary_body(header, text, struct.pack("<q", 7)))
    assert message == "input 'text': binary BYTES element 0 runs past the data (8 bytes declared)"


def test_bytes_element_size_is_bounded_in_binary_and_json() -> None:
    limits = DecodeLimits(max_element_bytes=4)
    ok = decode_request(*binary_input("BYTES", [2], length_prefixed(b"abcd", b"")), limits)
    assert ok.inputs[0].data.tolist() == [b"abcd", b""]
    for blob in (length_prefixed(b"abcde", b"abcde"), length_prefixed(b"a", b"abcde")):  # uniform, then mixed
        message, _ = refused(*binary_input("BYTES", [2], blob), limits)
        assert message == "input 'x': a BYTES element has 5 bytes, more than the limit of 4"
    message, _ = refused(json_body(one_input(datatype="BYTES", shape=[2], data=["ab", "é" * 3])), None, limits)
    assert message == "input 'x': a BYTES element has 6 bytes, more than the limit of 4"


def test_zero_bytes_elements_with_leftover_data_is_refused() -> None:
    message, _ = refused(*binary_input("BYTES", [0], b"\x00\x00\x00\x00"))
    assert message == "input 'x': binary BYTES data has 4 trailing bytes"


# -- the fast BYTES split gives the same elements as the length prefixes say --------------------------------


@pytest.mark.parametrize(
    "items",
    [
        [b"\x00\x00\x00", b"ab\x00", b"\x00\x00c"],  # equal lengths with NULs at either end: kept as sent
        [b""] * 5,
        [b"abc", b"defgh", b"i"],  # 3 x (4 + 3) bytes, as if uniform, but the prefixes say otherwise
        [b"ab", b"ab", b"ab", b"abc"],  # uniform until the last element
        [b"x" * 300, b"y" * 70_000],
    ],
    ids=["uniform-with-nuls", "all-empty", "uniform-size-different-prefixes", "last-differs", "long"],
)
def test_bytes_split_matches_the_prefixes(items: list[bytes]) -> None:
    [tensor] = decode_request(*binary_input("BYTES", [len(items)], length_prefixed(*items))).inputs
    assert tensor.data.dtype == object
    assert tensor.data.tolist() == items
    assert all(type(item) is bytes for item in tensor.data.tolist())


def test_many_small_bytes_elements_of_mixed_lengths_decode_in_shape() -> None:
    rng = random.Random(5)
    items = [bytes([65 + rng.randrange(26)]) * rng.randrange(4) for _ in range(200_000)]
    [tensor] = decode_request(*binary_input("BYTES", [500, 400], length_prefixed(*items))).inputs
    assert tensor.data.shape == (500, 400)
    assert tensor.data.reshape(-1).tolist() == items


# -- number of inputs and requested outputs --------------------------------------------------------------


@pytest.mark.parametrize("count", [65, 10_000])
def test_too_many_inputs(count: int) -> None:
    inputs = [{"name": f"i{n}", "datatype": "INT8", "shape": [1], "data": [1]} for n in range(count)]
    message, _ = refused(json_body({"inputs": inputs}), None)
    assert message == f"'inputs' lists {count:,} inputs, more than the limit of 64"


def test_inputs_up_to_the_limit_decode() -> None:
    inputs = [{"name": f"i{n}", "datatype": "INT8", "shape": [1], "data": [n]} for n in range(64)]
    assert len(decode_request(json_body({"inputs": inputs}), None).inputs) == 64


@pytest.mark.parametrize("count", [65, 5_000])
def test_too_many_requested_outputs(count: int) -> None:
    doc = one_input(datatype="INT8", shape=[1], data=[1])
    doc["outputs"] = [{"name": f"o{n}"} for n in range(count)]
    message, _ = refused(json_body(doc), None)
    assert message == f"'outputs' lists {count:,} outputs, more than the limit of 64"


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ({"name": "y"}, "'outputs' must be a list of objects with a 'name'"),
        (["y"], "outputs[0]: must be an object with a 'name'"),
        ([{"name": ""}], "outputs[0]: 'name' is required"),
        ([{"name": 7}], "outputs[0]: 'name' is required"),
        ([{"name": "y" * 257}], "outputs[0]: 'name' has 257 characters, more than the limit of 256"),
    ],
)
def test_requested_outputs_are_checked(outputs: Any, words: str) -> None:
    doc = {**one_input(datatype="INT8", shape=[1], data=[1]), "outputs": outputs}
    message, _ = refused(json_body(doc), None)
    assert message == words


# -- JSON data nesting depth -----------------------------------------------------------------------------


def nested_body(datatype: str, shape: list[int], data_json: bytes) -> bytes:
    """A JSON request whose 'data' is given as raw JSON text (the json module itself recurses on deep lists)."""
    head = b'{"inputs": [{"name": "x", "datatype": "' + datatype.encode() + b'", "shape": ' + str(shape).encode()
    return head + b', "data": ' + data_json + b"}]}"


def nested(depth: int, leaf: bytes) -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize("depth", [9, 64, 500, 1000])
@pytest.mark.parametrize(("datatype", "leaf"), [("BYTES", b'"a"'), ("FP32", b"1.0")])
def test_json_data_nesting_is_bounded(depth: int, datatype: str, leaf: bytes) -> None:
    """1000 levels used to recurse past Python's limit in the BYTES flattener (a RecursionError: a 500)."""
    message, _ = refused(nested_body(datatype, [1], nested(depth, leaf)), None)
    assert message == "input 'x': 'data' is nested deeper than the limit of 8 levels"


@pytest.mark.parametrize(("datatype", "leaf"), [("BYTES", b'"a"'), ("INT32", b"1")])
def test_deep_nesting_in_a_later_branch_is_refused(datatype: str, leaf: bytes) -> None:
    message, _ = refused(nested_body(datatype, [2], b"[" + leaf + b", " + nested(900, leaf) + b"]"), None)
    assert message.startswith("input 'x': 'data' is ")


def test_nesting_past_the_json_parsers_own_limit_is_invalid_json() -> None:
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    message, _ = refused(body, None)
    assert message.startswith("request body is not valid JSON")


def test_data_nested_as_deep_as_the_shape_decodes() -> None:
    body = nested_body("BYTES", [1] * 8, nested(8, b'"deep"'))
    assert decode_request(body, None).inputs[0].data.reshape(-1).tolist() == [b"deep"]


# -- datatype names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "shown"),
    [
        ("fp32", "'fp32'"),
        ("BF16", "'BF16'"),
        ("X" * 100_000, "'XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX..."),
        ({"name": "FP32"}, "a JSON object"),
        (["FP32"], "a JSON list"),
    ],
)
def test_unknown_datatypes_are_named_briefly(datatype: Any, shown: str) -> None:
    message, _ = refused(json_body(one_input(datatype=datatype, shape=[1], data=[1])), None)
    assert message.startswith(f"input 'x': unknown datatype {shown} (one of BOOL, BYTES, FP16, FP32")
    assert len(message) < 300


# -- names -----------------------------------------------------------------------------------------------


def test_a_name_longer_than_the_limit_is_refused() -> None:
    message, _ = refused(
        json_body({"inputs": [{"name": "n" * 257, "datatype": "FP32", "shape": [1], "data": [1]}]}), None
    )
    assert message == "inputs[0]: 'name' has 257 characters, more than the limit of 256"
    long_ok = {"name": "n" * 256, "datatype": "FP32", "shape": [1], "data": [1]}
    assert decode_request(json_body({"inputs": [long_ok]}), None).inputs[0].name == "n" * 256


@pytest.mark.parametrize("name", [b"\xff\xfe", b"\xed\xa0\x80", b"\xc3"], ids=["invalid", "surrogate", "truncated"])
def test_a_name_that_is_not_utf8_is_invalid_json(name: bytes) -> None:
    body = b'{"inputs": [{"name": "' + name + b'", "datatype": "FP32", "shape": [1], "data": [1]}]}'
    message, _ = refused(body, None)
    assert message.startswith("request body is not valid JSON")


def test_a_lone_surrogate_escape_is_invalid_json() -> None:
    body = b'{"inputs": [{"name": "\\ud800", "datatype": "BYTES", "shape": [1], "data": ["\\udfff"]}]}'
    message, _ = refused(body, None)
    assert message.startswith("request body is not valid JSON")


@pytest.mark.parametrize("req_id", [{"a": 1}, ["x"], True, 1.5, "i" * 257])
def test_request_id_must_be_a_short_string(req_id: Any) -> None:
    message, _ = refused(json_body({"id": req_id, **one_input(datatype="INT8", shape=[1], data=[1])}), None)
    assert message.startswith("'id' ")


def test_an_integer_request_id_is_kept_as_text() -> None:
    assert decode_request(json_body({"id": 42, **one_input(datatype="INT8", shape=[1], data=[1])}), None).id == "42"


# -- parameters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({f"p{n}": n for n in range(65)}, "'parameters' has 65 entries, more than the limit of 64"),
        ({"k" * 257: 1}, "parameter name 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk... is longer than the limit of 256"),
        ({"nested": {"a": 1}}, "parameter 'nested' must be a string, number or boolean, not a JSON object"),
        ({"list": [1, 2]}, "parameter 'list' must be a string, number or boolean, not a JSON list"),
        ({"null": None}, "parameter 'null' must be a string, number or boolean, not None"),
        ({"prompt": "w" * 65_537}, "parameter 'prompt' has 65,537 characters, more than the limit of 65,536"),
        ([1], "'parameters' must be an object"),
    ],
    ids=["entries", "key-length", "object", "list", "null", "string-length", "not-an-object"],
)
@pytest.mark.parametrize("level", ["request", "input", "output"])
def test_parameters_are_bounded_at_every_level(params: Any, words: str, level: str) -> None:
    doc = one_input(datatype="INT8", shape=[1], data=[1])
    doc["outputs"] = [{"name": "y"}]
    where = {"request": "request", "input": "input 'x'", "output": "output 'y'"}[level]
    {"request": doc, "input": doc["inputs"][0], "output": doc["outputs"][0]}[level]["parameters"] = params
    message, _ = refused(json_body(doc), None)
    assert message == f"{where}: {words}"


def test_scalar_parameters_at_every_level_are_kept() -> None:
    doc = one_input(datatype="INT8", shape=[1], data=[1], parameters={"content_type": "np", "scale": 0.5})
    doc["parameters"] = {"binary_data_output": True, "priority": 3}
    doc["outputs"] = [{"name": "y", "parameters": {"binary_data": True}}]
    request = decode_request(json_body(doc), None)
    assert request.parameters == {"binary_data_output": True, "priority": 3}
    assert request.inputs[0].parameters == {"content_type": "np", "scale": 0.5}
    assert request.binary_output("y")


# -- Inference-Header-Content-Length -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header_length", "words"),
    [
        (-1, "Inference-Header-Content-Length must be a non-negative integer"),
        (10**30, "Inference-Header-Content-Length is larger than the request body"),
        (0, "request body is not valid JSON"),
        (3, "request body is not valid JSON"),
    ],
)
def test_header_length_is_checked_against_the_body(header_length: int, words: str) -> None:
    body, _ = binary_input("INT8", [1], b"\x01")
    message, peak = refused(body, header_length)
    assert message.startswith(words)
    assert peak < REFUSAL_PEAK_BYTES


# -- nothing becomes a 500: every damaged body is an InvalidInput ------------------------------------------


def sample_binary_request() -> tuple[bytes, int]:
    text = length_prefixed(b"hello", b"", b"w\x00rld")
    header = {
        "id": "r",
        "inputs": [
            {"name": "t", "datatype": "BYTES", "shape": [3, 1], "parameters": {"binary_data_size": len(text)}},
            {"name": "f", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
            {"name": "j", "datatype": "INT16", "shape": [1, 2], "data": [[1, -2]]},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    return binary_body(header, text, struct.pack("<2f", 1.5, -2))


def test_the_sample_request_decodes() -> None:
    request = decode_request(*sample_binary_request())
    assert [t.data.tolist() for t in request.inputs] == [[[b"hello"], [b""], [b"w\x00rld"]], [1.5, -2.0], [[1, -2]]]


def test_every_truncation_of_a_binary_request_is_invalid_input() -> None:
    body, header_length = sample_binary_request()
    for cut in range(len(body)):
        with pytest.raises(InvalidInput):
            decode_request(body[:cut], min(header_length, cut))


def test_random_damage_to_a_binary_request_is_invalid_input_or_a_decoded_request() -> None:
    """Flip, insert and delete bytes anywhere, header included: decode succeeds or raises InvalidInput, never
    anything else (a 500)."""
    body, header_length = sample_binary_request()
    rng = random.Random(20240611)
    outcomes: Counter[str] = Counter()
    for _ in range(3000):
        damaged = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(damaged))
            action = rng.randrange(3)
            if action == 0:
                damaged[pos] = rng.randrange(256)
            elif action == 1:
                damaged.insert(pos, rng.randrange(256))
            else:
                del damaged[pos]
        try:
            decode_request(bytes(damaged), header_length)
            outcomes["decoded"] += 1
        except InvalidInput:
            outcomes["refused"] += 1
    assert outcomes["refused"] > outcomes["decoded"] > 0
