"""The gateway's OpenAPI document (``gateway/openapi.py``): valid OpenAPI 3.1, and true to the code.

The routes, query parameters and request fields it must document are read from the code that serves them (the
Starlette router ``build_router`` returns, the dispatch conditions of ``openai_api.py`` and ``app.py``, the
parameters ``parse_search`` reads), so adding one without documenting it fails here. Answers built by the code's
own builders are validated against the documented schemas, with undocumented properties refused.
"""

from __future__ import annotations

import ast
import base64
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any, cast

import numpy as np
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

import modelmarket
from modelmarket.billing.lifecycle import InvoiceDoc, Line
from modelmarket.core.errors import NotFound, QuotaExceeded
from modelmarket.core.tensors import Tensor
from modelmarket.gateway import api, app, openai_api
from modelmarket.gateway.api import PUBLIC_ROUTES, ApiContext, build_router
from modelmarket.gateway.errors import extra_fields_for, message_for
from modelmarket.gateway.openapi import build_document, document_json
from modelmarket.metering.units import UnitKind
from modelmarket.metering.usage import ModelUsage, UsageSummary
from modelmarket.registry.catalogue import ModelEntry, VersionRecord
from modelmarket.registry.manifest import parse_manifest
from modelmarket.registry.search import measured_json, parse_search
from modelmarket.registry.views import model_summary
from modelmarket.runtime import oip
from modelmarket.runtime import openai as oa

DOC = build_document()
Route = tuple[str, str]  # (METHOD, path with every parameter written "{}")


def _normal(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


# -- routes, read from the code -----------------------------------------------------------------------------------


def _function(module: Any, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    node = ast.parse(textwrap.dedent(inspect.getsource(obj))).body[0]
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    return node


def _strings(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def _is_method(node: ast.expr) -> bool:
    """``method`` or ``scope["method"]``."""
    if isinstance(node, ast.Name):
        return node.id == "method"
    return isinstance(node, ast.Subscript) and _strings(node.slice) == ["method"]


def _tested(part: ast.expr, subject: str, prefixes: bool) -> tuple[bool, list[str]] | None:
    """(positive?, values) when ``part`` compares ``subject`` with literals: ``==``/``in`` are positive, ``!=``/
    ``not in`` negative; ``subject.startswith(p)`` is positive ``p{}`` (a path parameter) when ``prefixes``."""
    if isinstance(part, ast.Compare) and isinstance(part.left, ast.Name) and part.left.id == subject:
        op = part.ops[0]
        return isinstance(op, ast.Eq | ast.In), _strings(part.comparators[0])
    if (
        prefixes
        and isinstance(part, ast.Call)
        and isinstance(part.func, ast.Attribute)
        and part.func.attr == "startswith"
        and isinstance(part.func.value, ast.Name)
        and part.func.value.id == subject
    ):
        return True, [p + "{}" for p in _strings(part.args[0])]
    return None


def _methods(part: ast.expr) -> tuple[bool, list[str]] | None:
    if isinstance(part, ast.Compare) and _is_method(part.left):
        return isinstance(part.ops[0], ast.Eq | ast.In), _strings(part.comparators[0])
    return None


def dispatched(
    func: ast.FunctionDef | ast.AsyncFunctionDef, subject: str, prefixes: bool = True, default: str | None = None
) -> set[Route]:
    """The (method, value) pairs an ``if``/``elif`` chain accepts: ``method == M and subject == V`` (and ``in``),
    or its negation ``method != M or subject not in (...)``. A lone ``method != M`` guard gives the method of
    conditions that test ``subject`` alone."""
    found: set[tuple[str | None, str]] = set()
    for node in ast.walk(func):
        if not isinstance(node, ast.If):
            continue
        test = node.test
        parts, positive = [test], True
        if isinstance(test, ast.BoolOp):
            parts, positive = test.values, isinstance(test.op, ast.And)
        methods = [m for p in parts if (m := _methods(p)) is not None and m[0] == positive]
        values = [v for p in parts if (v := _tested(p, subject, prefixes)) is not None and v[0] == positive]
        if len(parts) == 1 and (m := _methods(test)) is not None and not m[0]:
            default = m[1][0]
        for _, literals in values:
            accepted: list[str | None] = [x for m in methods for x in m[1]]
            for method in accepted or [None]:
                found.update((method, value) for value in literals)
    with_method = {value for method, value in found if method is not None}
    out = {(m, v) for m, v in found if m is not None}
    for method, value in found:
        if method is None and value not in with_method:
            assert default is not None, f"no method for {value!r} in {func.name}"
            out.add((default, value))
    return {(m, v) for m, v in out}


def _api_routes() -> set[Route]:
    async def no_auth(request: Any) -> Any:
        raise AssertionError("not called")

    router = build_router(ApiContext(catalogue=cast(Any, None), usage=cast(Any, None)), no_auth)
    return {(m, _normal(r.path)) for r in router.routes for m in r.methods or () if m != "HEAD"}  # type: ignore[attr-defined]


def _openai_routes() -> set[Route]:
    pairs = dispatched(_function(openai_api, "OpenAIEdge.__call__"), "path")
    return {(m, _normal(p)) for m, p in pairs}


def _oip_routes() -> set[Route]:
    server = dispatched(_function(app, "GatewayApp._server_route"), "path", prefixes=False)
    routes = {(m, p.rstrip("/") or p) for m, p in server}
    for method, tail in dispatched(_function(app, "GatewayApp._model_route"), "tail"):
        for base in ("/v2/models/{}", "/v2/models/{}/versions/{}"):  # app._split_model_path
            routes.add((method, f"{base}/{tail}" if tail else base))
    return routes


def _edge_routes() -> set[Route]:
    """Routes ``GatewayApp._route`` answers itself (prefix dispatch to the edges above and to the dashboard is left
    out). A path dispatched without a method test is GET: ``/metrics``'s endpoint answers 405 to anything else."""
    return dispatched(_function(app, "GatewayApp._route"), "path", prefixes=False, default="GET")


def test_the_route_readers_see_the_routes() -> None:
    assert ("POST", "/v1/chat/completions") in _openai_routes()
    assert ("GET", "/v1/models/{}") in _openai_routes()
    assert ("POST", "/v2/models/{}/versions/{}/infer") in _oip_routes()
    assert ("GET", "/v2/health/ready") in _oip_routes() and ("GET", "/v2") in _oip_routes()
    assert ("GET", "/api/invoices/{}") in _api_routes()
    assert _edge_routes() == {("GET", "/openapi.json"), ("GET", "/metrics")}


def test_every_served_route_is_documented_and_nothing_else() -> None:
    served = _api_routes() | _openai_routes() | _oip_routes() | _edge_routes()
    documented = {(method, _normal(path)) for method, path, _ in _operations()}
    assert sorted(served - documented) == [], "served but not in gateway/openapi.py"
    assert sorted(documented - served) == [], "documented but not served"


# -- the document -------------------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1_with_the_package_version() -> None:
    validate(DOC, cls=OpenAPIV31SpecValidator)
    assert DOC["openapi"].startswith("3.1.")
    assert DOC["info"]["version"] == modelmarket.__version__


def test_the_served_bytes_are_the_document() -> None:
    import orjson

    assert orjson.loads(document_json()) == DOC
    assert document_json() is document_json()  # serialised once


def test_every_operation_has_an_id_a_summary_and_responses() -> None:
    ids = []
    for method, path, op in _operations():
        where = f"{method} {path}"
        assert op.get("operationId"), where
        assert op.get("summary"), where
        assert any(status.startswith("2") for status in op.get("responses", {})), where
        ids.append(op["operationId"])
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def _public(method: str, path: str) -> bool:
    """What the code answers without a key: the ``/api`` routes in ``PUBLIC_ROUTES``, every OIP route but
    inference, and this document."""
    if path.startswith("/api/"):
        return path in PUBLIC_ROUTES
    if path.startswith("/v2"):
        return not path.endswith("/infer")
    return path == "/openapi.json"


def test_a_key_is_required_exactly_where_the_code_requires_one() -> None:
    assert DOC["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": DOC["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    for method, path, op in _operations():
        expected: list[dict[str, list[str]]] = [] if _public(method, path) else [{"bearerAuth": []}]
        assert op["security"] == expected, f"{method} {path}"
        statuses = set(op["responses"])
        assert ("401" in statuses) != _public(method, path), f"{method} {path}: 401 iff a key is required"


def test_the_billed_calls_document_their_headers_and_error_statuses() -> None:
    paths = DOC["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        op = paths[path]["post"]
        headers = set(op["responses"]["200"]["headers"])
        assert headers == {"x-request-id", "x-modelmarket-route", "x-modelmarket-iu", "x-modelmarket-cost"}
        assert {"400", "401", "402", "404", "413", "429", "500", "502", "503", "504"} <= set(op["responses"])
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "text/event-stream" in paths[path]["post"]["responses"]["200"]["content"]
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert {"400", "401", "402", "404", "409", "413", "422", "429", "502", "503", "504"} <= set(infer["responses"])
    responses = DOC["components"]["responses"]
    assert "Retry-After" in responses["Error429"]["headers"] and "Retry-After" in responses["OpenAIError503"]["headers"]
    assert responses["OpenAIError400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    transcribe = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert set(transcribe) == {"multipart/form-data"}


# -- parameters and request fields, read from the code ------------------------------------------------------------


class Recorder(dict[str, Any]):
    """A request document that records every field a parser asks for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def _query_params(path: str) -> set[str]:
    return {p["name"] for p in DOC["paths"][path]["get"].get("parameters", ()) if p.get("in") == "query"}


def _endpoint_query_reads() -> dict[str, set[str]]:
    """Per ``/api`` path: the query parameters its endpoint in ``build_router`` reads."""
    func = _function(api, "build_router")
    by_name = {n.name: n for n in ast.walk(func) if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)}
    table = next(
        n.value for n in ast.walk(func) if isinstance(n, ast.AnnAssign | ast.Assign) and isinstance(n.value, ast.List)
    )
    searched = Recorder()
    parse_search(searched)
    out: dict[str, set[str]] = {}
    for item in table.elts:
        assert isinstance(item, ast.Tuple)
        path, endpoint = _strings(item.elts[0])[0], item.elts[1]
        assert isinstance(endpoint, ast.Name)
        reads: set[str] = set()
        for node in ast.walk(by_name[endpoint.id]):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id == "parse_search":
                reads |= searched.asked
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "get" and ast.unparse(f.value).endswith("query_params"):
                reads.update(_strings(node.args[0]))
        out[path] = reads
    return out


def test_every_query_parameter_the_api_reads_is_documented() -> None:
    reads = _endpoint_query_reads()
    assert {"q", "sort", "limit", "cursor", "offset", "max_price", "task"} <= reads["/api/models"]
    assert reads["/api/usage"] == {"since", "until"}
    for path, names in reads.items():
        assert _query_params(path) == names, path


@pytest.mark.parametrize(
    ("schema", "parse", "doc"),
    [
        ("ChatCompletionRequest", oa.parse_chat, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ("CompletionRequest", oa.parse_completion, {"model": "m", "prompt": "p"}),
        ("EmbeddingRequest", oa.parse_embeddings, {"model": "m", "input": "x"}),
    ],
)
def test_every_openai_request_field_the_parser_reads_is_documented(
    schema: str, parse: Callable[[dict[str, Any]], Any], doc: dict[str, Any]
) -> None:
    recorder = Recorder(doc)
    parse(recorder)
    documented = DOC["components"]["schemas"][schema]
    assert set(documented["properties"]) == recorder.asked
    _valid(schema, doc, strict=False)


def test_every_transcription_form_field_is_documented() -> None:
    func = _function(openai_api, "OpenAIEdge._transcribe")
    read = {
        s
        for n in ast.walk(func)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and ast.unparse(n.func) == "form.get"
        for s in _strings(n.args[0])
    }
    assert read == {"file", "model", "response_format"}
    assert set(DOC["components"]["schemas"]["TranscriptionRequest"]["properties"]) == read


# -- the code's answers match the schemas --------------------------------------------------------------------------


def _closed(node: Any) -> Any:
    """The schemas with every object's documented properties the only ones allowed."""
    if isinstance(node, list):
        return [_closed(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _valid(name: str, instance: Any, strict: bool = True) -> None:
    components = _closed(DOC["components"]) if strict else DOC["components"]
    Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": components}).validate(instance)


def test_openai_answers_and_chunks_match_their_schemas() -> None:
    chat = oa.parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    completion = oa.parse_completion({"model": "m", "prompt": "p"})
    _valid("ChatCompletion", oa.completion_answer(chat, "c1", "hello", None, 3, 2))
    _valid("Completion", oa.completion_answer(completion, "c2", "hello", "length", 3, 2))
    for kind, schema in ((oa.CHAT, "ChatCompletionChunk"), (oa.COMPLETION, "CompletionChunk")):
        _valid(schema, oa.chunk(kind, "c", "m", 1, "he", None, first=True))
        _valid(schema, oa.chunk(kind, "c", "m", 1, None, "stop", with_usage_field=True))
        tail = oa.chunk(kind, "c", "m", 1, None, None, usage=oa.usage_doc(3, 2))
        tail["x_modelmarket"] = {"request_id": "r", "route": "m", "iu": "0.005", "cost": "1/3", "currency": "USD"}
        _valid(schema, tail)
    for fmt in ("float", "base64"):
        _valid("EmbeddingList", oa.embeddings_answer("m", [[0.5, 1.0], [0.0, 2.0]], fmt, 4))
    base64.b64decode(oa.embeddings_answer("m", [[0.5]], "base64", 1)["data"][0]["embedding"])
    status, body, _ = openai_api.error_answer(NotFound("The model 'x' does not exist"))
    import orjson

    assert status == 404
    _valid("OpenAIError", orjson.loads(body))
    _valid("OpenAIError", oa.error_doc("bad", "invalid_request_error", "messages"))


def test_oip_answers_match_their_schemas() -> None:
    request = oip.decode_request(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}', None)
    _valid("InferenceRequest", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1, 2]]}]})
    label = Tensor("label", "INT64", [2], np.array([1, 2], dtype=np.int64))
    text = Tensor("text", "BYTES", [1], np.array([b"hi"], dtype=object))
    body, _ = oip.encode_response("m", "1.0.0", request, [label, text])
    import orjson

    _valid("InferenceResponse", orjson.loads(body))


def _entry(pricing: dict[str, Any]) -> ModelEntry:
    manifest = parse_manifest(
        {
            "name": "m",
            "version": "1.0.0",
            "task": "text-generation",
            "modality": "text",
            "runtime": "onnx",
            "provider": "acme",
            "license": "MIT",
            "artifacts": [{"path": "a"}],
            "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
            "pricing": pricing,
            "card": {"summary": "s"},
        }
    )
    record = VersionRecord("ver_1", "m", "1.0.0", "d" * 64, manifest, "acc_1", (), "2026-01-01")
    return ModelEntry("m", "acc_1", versions={"1.0.0": record}, aliases={"latest": "1.0.0"})


@pytest.mark.parametrize(
    "pricing",
    [
        {"unit": "tokens_1k", "input_price_per_iu": "0.001", "output_price_per_iu": "0.002", "currency": "USD"},
        {
            "unit": "image",
            "charge": "graduated",
            "currency": "EUR",
            "tiers": [{"up_to": 10, "price_per_iu": "0.1"}, {"up_to": None, "price_per_iu": "0.05"}],
        },
        {"unit": "request", "charge": "package", "package_iu": 100, "price_per_package": "1.00", "currency": "USD"},
    ],
)
def test_catalogue_answers_match_their_schemas(pricing: dict[str, Any]) -> None:
    entry = _entry(pricing)
    price_now = {"price_per_iu": "0.001", "factor": "1", "list_price": None, "record": 0}
    summary = model_summary(entry, price_now, measured_json(None))
    _valid("ModelSummary", summary)
    _valid("ModelPage", {"models": [summary, model_summary(entry)], "total": 2, "next_cursor": None})
    _valid("ModelVersion", entry.resolve(None).to_json())


def test_usage_invoice_and_error_answers_match_their_schemas() -> None:
    usage = UsageSummary("acc_1", [ModelUsage("m", UnitKind.AUDIO_MINUTE, "USD", 2, 70, Fraction(7, 600))], None, None)
    _valid("UsageSummary", {**usage.to_json(), "account": "c"})
    line = Line("usage", "m: 2 calls", "m", "image", 2, Fraction(2), Fraction(1, 500), Decimal("0.00"))
    invoice = InvoiceDoc("inv_1", "acc_1", "2026-01", "USD", "void", (line,), "t", "t", "t", "wrong", 2)
    _valid("InvoiceList", {"account": "c", "invoices": [invoice.to_json()]})
    quota = QuotaExceeded("over the budget", limit="budget", scope="account", allowed="1.00", used="1.20")
    _valid("Error", {"error": message_for(quota), **extra_fields_for(quota)})
