"""4. Shapes and sizes that used to crash: declared shapes and sizes in the binary tensor extension are checked
against the body and the limits before anything is allocated (400 naming the problem, never a 500); manifests
that mean something large (aliases, huge versions, duplicates, a megabyte of text) are refused at publish."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import pytest
from tests.hostile.conftest import Market, PublishBatch
from tests.hostile.support import LiveProbe, assert_error_response, binary_request, bytes_elements

ONE = bytes_elements([b"a"])
TENSOR_BOUND = "16,777,216"

# (id, shape, binary data, binary_data_size (None: the data's length), words the error must hold)
BINARY_CASES: list[tuple[str, list[Any], bytes, Any, tuple[str, ...]]] = [
    ("shape-1e15", [10**15], ONE, None, ("shape", TENSOR_BOUND)),
    ("shape-2^62", [2**62], ONE, None, ("shape", TENSOR_BOUND)),
    ("shape-2^31-squared", [2**31, 2**31], ONE, None, ("shape", TENSOR_BOUND)),
    ("shape-zero-by-2^62", [0, 2**62], b"", None, ("shape", TENSOR_BOUND)),
    ("shape-1e15-as-float", [1e15], ONE, None, ("shape", "non-negative integers")),
    ("negative-dim", [-1], ONE, None, ("shape", "non-negative integers")),
    ("negative-dims", [-5, 3], ONE, None, ("shape", "non-negative integers")),
    ("shape-2^64", [2**64], ONE, None, ("shape", "non-negative integers")),
    ("size-beyond-body", [1], ONE, 10**12, ("binary_data_size", "runs past the end")),
    ("size-negative", [1], ONE, -5, ("binary_data_size", "non-negative")),
    ("more-elements-than-data", [1000], ONE, None, ("cannot hold", "1,000")),
    ("element-longer-than-data", [1], struct.pack("<I", 2**32 - 1) + b"a", None, ("runs past the data",)),
]


@pytest.mark.parametrize(
    ("shape", "data", "size", "words"), [c[1:] for c in BINARY_CASES], ids=[c[0] for c in BINARY_CASES]
)
def test_binary_bytes_tensor_with_impossible_declarations_is_refused(
    market: Market, shape: list[Any], data: bytes, size: Any, words: tuple[str, ...]
) -> None:
    who = market.consumer("shapes")
    body, header_length = binary_request("text", "BYTES", shape, data, size)
    headers = {**who.auth, "Inference-Header-Content-Length": str(header_length)}
    with LiveProbe(market.url, f"BYTES shape {shape}"):
        r = httpx.post(f"{market.url}/v2/models/sentiment/infer", content=body, headers=headers, timeout=30)
    assert_error_response(r, 400, *words)
    assert market.events(who) == 0


@pytest.mark.parametrize(
    ("header_length", "words"),
    [
        ("999999", ("Inference-Header-Content-Length", "larger")),
        ("-1", ("Inference-Header-Content-Length",)),
        ("1" * 30, ("Inference-Header-Content-Length",)),
    ],
    ids=["past-the-body", "negative", "thirty-digits"],
)
def test_bad_inference_header_content_length_is_refused(
    market: Market, header_length: str, words: tuple[str, ...]
) -> None:
    who = market.consumer("header-length")
    body, _ = binary_request("text", "BYTES", [1], ONE)
    headers = {**who.auth, "Inference-Header-Content-Length": header_length}
    r = httpx.post(f"{market.url}/v2/models/sentiment/infer", content=body, headers=headers, timeout=30)
    assert_error_response(r, 400, *words)
    assert market.events(who) == 0


@pytest.mark.parametrize("case", ["yaml-aliases", "huge-version", "duplicate-artifact", "megabyte-manifest"])
def test_manifests_that_mean_something_large_are_refused(refused_publishes: PublishBatch, case: str) -> None:
    refused_publishes.assert_refused(case)
