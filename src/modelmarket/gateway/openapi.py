"""The gateway's OpenAPI 3.1 document: ``/v1`` (OpenAI-compatible), ``/api`` (the marketplace) and ``/v2`` (OIP),
served at ``GET /openapi.json`` without a key.

Pure: ``build_document()`` assembles a dict from small helpers, with limits, enums and public routes taken from
the code that enforces them; ``document_json()`` is its serialised form, built once on first use. The component
schemas live in ``gateway/openapi_schemas.py``. ``tests/unit/test_openapi.py`` checks that every route the
gateway serves is documented here, and nothing else.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from modelmarket import __version__
from modelmarket.gateway.api import PUBLIC_ROUTES
from modelmarket.gateway.openapi_schemas import ERROR, OPENAI_ERROR, component_schemas, ref, search_parameters

__all__ = ["OPENAPI_PATH", "build_document", "document_json"]

OPENAPI_PATH = "/openapi.json"
Doc = dict[str, Any]
_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_STATUS_TEXT = {
    400: "Bad input: a malformed body, a value that breaks the contract or a limit, a bad query parameter; the "
    "message names the field.",
    401: "Missing, malformed or unknown API key (send `Authorization: Bearer <key>`).",
    402: "A free plan's grant, a daily IU quota or the monthly budget would be exceeded; never billed.",
    404: "Unknown model, version, alias, invoice or route.",
    409: "An `Idempotency-Key` whose answer is no longer kept; never billed again.",
    413: "The request body is over `MODELMARKET_MAX_REQUEST_BYTES`.",
    422: "An `Idempotency-Key` reused for another request.",
    429: "A key's or an account's requests per minute (or an upstream server is busy); never billed.",
    500: "An internal error; see the gateway log.",
    502: "The model (or a pipeline step, or an upstream server) failed on the input; never billed.",
    503: "Not ready: a runner starting, the event log at its bound, or metering halted.",
    504: "The model did not answer within `MODELMARKET_RUNNER_REQUEST_TIMEOUT_S`; never billed.",
}
_RETRY_AFTER_STATUSES = (429, 503)
_INFER_ERRORS = (400, 401, 402, 404, 409, 413, 422, 429, 500, 502, 503, 504)
_OPENAI_CALL_ERRORS = (400, 401, 402, 404, 413, 429, 500, 502, 503, 504)


# -- small builders ---------------------------------------------------------------------------------------------


def _json(schema: Doc) -> Doc:
    return {"application/json": {"schema": schema}}


def _header(description: str, required: bool = False, schema: Doc | None = None) -> Doc:
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


def _header_refs(*names: str) -> Doc:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _ok(description: str, content: Doc, headers: Doc | None = None) -> Doc:
    answer: Doc = {"description": description, "content": content}
    if headers:
        answer["headers"] = headers
    return answer


def _errors(flavour: str, statuses: tuple[int, ...]) -> Doc:
    """``{"400": {"$ref": "#/components/responses/Error400"}, ...}``; ``flavour`` is ``Error`` or ``OpenAIError``."""
    return {str(s): {"$ref": f"#/components/responses/{flavour}{s}"} for s in statuses}


def _error_response(status: int, schema: Doc, flavour: str) -> Doc:
    headers = {}
    if status in _RETRY_AFTER_STATUSES:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401 and flavour == "OpenAIError":
        headers["WWW-Authenticate"] = _header("`Bearer`", True)
    return _ok(_STATUS_TEXT[status], _json(schema), headers)


def _operation(
    op_id: str,
    summary: str,
    tag: str,
    responses: Doc,
    *,
    public: bool = False,
    parameters: list[Doc] | None = None,
    body: Doc | None = None,
    description: str | None = None,
) -> Doc:
    op: Doc = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    op["security"] = [] if public else _SECURED
    return op


def _param(name: str) -> Doc:
    return {"$ref": f"#/components/parameters/{name}"}


def _path_param(name: str, description: str) -> Doc:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: Doc | None = None) -> Doc:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or {}}


# -- /v2: the Open Inference Protocol ---------------------------------------------------------------------------


def _oip_paths() -> Doc:
    ready_doc = _json(ref("ReadyState"))
    paths: Doc = {
        "/v2": {
            "get": _operation(
                "serverMetadata",
                "Server metadata",
                "OIP v2",
                {"200": _ok("The server's name, version and extensions.", _json(ref("ServerMetadata")))},
                public=True,
            )
        },
        "/v2/health/live": {
            "get": _operation(
                "serverLive",
                "Server liveness",
                "OIP v2",
                {"200": _ok("The gateway process answers.", _json(ref("LiveState")))},
                public=True,
            )
        },
        "/v2/health/ready": {
            "get": _operation(
                "serverReady",
                "Server readiness",
                "OIP v2",
                {
                    "200": _ok("Ready: the runners preloaded at startup are up, metering runs.", ready_doc),
                    "400": _ok("Not ready; `error` names what is not.", ready_doc),
                },
                public=True,
            )
        },
    }
    for prefix, params, suffix, label in (
        ("/v2/models/{model_name}", [_param("ModelName")], "", "the latest version"),
        (
            "/v2/models/{model_name}/versions/{model_version}",
            [_param("ModelName"), _param("ModelVersion")],
            "Version",
            "a version or an alias",
        ),
    ):
        paths.update(_oip_model_paths(prefix, params, suffix, label))
    return paths


def _oip_model_paths(prefix: str, params: list[Doc], suffix: str, label: str) -> Doc:
    metadata = _operation(
        f"model{suffix}Metadata",
        f"Model metadata ({label})",
        "OIP v2",
        {"200": _ok("Name, versions, platform and tensors.", _json(ref("ModelMetadata"))), **_errors("Error", (404,))},
        public=True,
        parameters=params,
    )
    ready_doc = _json(ref("ReadyState"))
    ready = _operation(
        f"model{suffix}Ready",
        f"Model readiness ({label})",
        "OIP v2",
        {
            "200": _ok("Its runner is up.", ready_doc),
            "400": _ok("Not loaded (a runner starts on the first inference call).", ready_doc),
            **_errors("Error", (404,)),
        },
        public=True,
        parameters=params,
    )
    infer = _operation(
        f"model{suffix}Infer",
        f"Inference ({label})",
        "OIP v2",
        {"200": _infer_answer(), **_errors("Error", _INFER_ERRORS)},
        parameters=[*params, *(_param(p) for p in ("InferenceHeaderContentLength", "IdempotencyKey", "Traceparent"))],
        body=_infer_body(),
        description="Validated against the model's declared tensors, counted in Inference Units and billed once "
        "when the answer is sent; a refused or failed call is never billed.",
    )
    return {prefix: {"get": metadata}, f"{prefix}/ready": {"get": ready}, f"{prefix}/infer": {"post": infer}}


def _infer_body() -> Doc:
    binary = "The JSON header (its length in `Inference-Header-Content-Length`) followed by the binary tensor data."
    return {
        "required": True,
        "content": {
            "application/json": {"schema": ref("InferenceRequest")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": binary}},
        },
    }


def _infer_answer() -> Doc:
    binary = "The JSON header (`Inference-Header-Content-Length` bytes) followed by the binary output data."
    return _ok(
        "The outputs; billed.",
        {
            "application/json": {"schema": ref("InferenceResponse")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": binary}},
        },
        _header_refs(*_BILLED_HEADERS, "inference-header-content-length", "idempotency-replayed"),
    )


# -- /v1: OpenAI-compatible -------------------------------------------------------------------------------------

_BILLED_HEADERS = ("x-request-id", "x-modelmarket-route", "x-modelmarket-iu", "x-modelmarket-cost")


def _openai_paths() -> Doc:
    tag = "OpenAI-compatible"
    return {
        "/v1/models": {
            "get": _operation(
                "listModels",
                "List the models and routes served under /v1",
                tag,
                {"200": _ok("Models with their endpoints and pricing.", _json(ref("OpenAIModelList")))}
                | _errors("OpenAIError", (401, 500)),
            )
        },
        "/v1/models/{model}": {
            "get": _operation(
                "retrieveModel",
                "One model or route",
                tag,
                {"200": _ok("The model.", _json(ref("OpenAIModel")))} | _errors("OpenAIError", (401, 404, 500)),
                parameters=[_path_param("model", "A model name or a route name.")],
            )
        },
        "/v1/chat/completions": {
            "post": _operation(
                "createChatCompletion",
                "Chat completion",
                tag,
                {"200": _generation_answer("ChatCompletion", "ChatCompletionChunk")}
                | _errors("OpenAIError", _OPENAI_CALL_ERRORS),
                body={"required": True, "content": _json(ref("ChatCompletionRequest"))},
            )
        },
        "/v1/completions": {
            "post": _operation(
                "createCompletion",
                "Text completion",
                tag,
                {"200": _generation_answer("Completion", "CompletionChunk")}
                | _errors("OpenAIError", _OPENAI_CALL_ERRORS),
                body={"required": True, "content": _json(ref("CompletionRequest"))},
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "createEmbedding",
                "Embeddings",
                tag,
                {"200": _ok("The vectors; billed.", _json(ref("EmbeddingList")), _header_refs(*_BILLED_HEADERS))}
                | _errors("OpenAIError", _OPENAI_CALL_ERRORS),
                body={"required": True, "content": _json(ref("EmbeddingRequest"))},
            )
        },
        "/v1/audio/transcriptions": {"post": _transcription_operation(tag)},
    }


def _generation_answer(answer: str, chunk: str) -> Doc:
    stream = (
        f"With `stream: true`: server-sent events, each `data: <{chunk}>`, then `data: [DONE]`. With "
        "`stream_options.include_usage` a last chunk with no choices carries `usage` and `x_modelmarket` (the "
        "request id, route, IU and cost billed); `x-modelmarket-iu` and `x-modelmarket-cost` are not sent as headers."
    )
    content = {
        "application/json": {"schema": ref(answer)},
        "text/event-stream": {
            "schema": {"type": "string", "description": stream},
            "x-event-data": ref(chunk),
        },
    }
    return _ok("The completion (or its stream); billed.", content, _header_refs(*_BILLED_HEADERS))


def _transcription_operation(tag: str) -> Doc:
    content = {
        "application/json": {"schema": ref("Transcription")},
        "text/plain": {"schema": {"type": "string", "description": "With `response_format: text`."}},
    }
    return _operation(
        "createTranscription",
        "Transcribe audio (a model of task automatic-speech-recognition)",
        tag,
        {"200": _ok("The text; billed.", content, _header_refs("x-request-id"))}
        | _errors("OpenAIError", _OPENAI_CALL_ERRORS),
        body={"required": True, "content": {"multipart/form-data": {"schema": ref("TranscriptionRequest")}}},
    )


# -- /api: the marketplace --------------------------------------------------------------------------------------


def _api_route(path: str, op_id: str, summary: str, answer: Doc, errors: tuple[int, ...], **kw: Any) -> tuple[str, Doc]:
    """A ``GET`` of the marketplace: public when ``gateway/api.py`` lists it in ``PUBLIC_ROUTES``."""
    public = path in PUBLIC_ROUTES
    statuses = {*errors, 500} | (set() if public else {401})
    responses = {"200": answer} | _errors("Error", tuple(sorted(statuses)))
    return path, {"get": _operation(op_id, summary, "Marketplace", responses, public=public, **kw)}


def _api_paths() -> Doc:
    name = _path_param("name", "The model's name.")
    period = _query("period", "One month, `YYYY-MM`.", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"})
    day = {"type": "string", "format": "date"}
    routes = [
        _api_route(
            "/api/models",
            "searchModels",
            "Search the catalogue",
            _ok("A page of models, with `total` and `next_cursor`.", _json(ref("ModelPage"))),
            (400,),
            parameters=search_parameters(),
        ),
        _api_route(
            "/api/models/{name}",
            "getModel",
            "One model of the catalogue",
            _ok("The model with its latest version's facts.", _json(ref("ModelSummary"))),
            (404,),
            parameters=[name],
        ),
        _api_route(
            "/api/models/{name}/versions/{ref}",
            "getModelVersion",
            "One version of a model",
            _ok("The version as published.", _json(ref("ModelVersion"))),
            (404,),
            parameters=[name, _path_param("ref", "A version or an alias.")],
        ),
        _api_route(
            "/api/usage",
            "getUsage",
            "The caller's usage",
            _ok("Events, IU and amounts per model.", _json(ref("UsageSummary"))),
            (400, 503),
            parameters=[_query("since", "First day, inclusive.", day), _query("until", "Last day, inclusive.", day)],
        ),
        _api_route(
            "/api/invoices",
            "listInvoices",
            "The caller's invoices",
            _ok(
                "Every invoice of the caller (or of one period); drafts brought up to date.", _json(ref("InvoiceList"))
            ),
            (400, 404, 503),
            parameters=[period],
        ),
        _api_route(
            "/api/invoices/{invoice_id}",
            "getInvoice",
            "One of the caller's invoices",
            _ok("The invoice (another account's is not found).", _json(ref("Invoice"))),
            (404, 503),
            parameters=[_path_param("invoice_id", "The invoice's id (`inv_...`).")],
        ),
    ]
    return dict(routes)


# -- the document -----------------------------------------------------------------------------------------------


def _meta_paths() -> Doc:
    answer = _ok("This document.", _json({"type": "object"}))
    op = _operation("getOpenApiDocument", "This OpenAPI document", "Meta", {"200": answer}, public=True)
    return {OPENAPI_PATH: {"get": op}}


def _components() -> Doc:
    error, openai_error = ref(ERROR), ref(OPENAI_ERROR)
    responses = {f"Error{s}": _error_response(s, error, "Error") for s in _STATUS_TEXT} | {
        f"OpenAIError{s}": _error_response(s, openai_error, "OpenAIError") for s in _STATUS_TEXT
    }
    whole = {"type": "integer", "minimum": 0}
    exact = "An exact decimal (`0.05`) or, when it has none, a fraction (`7/60`)."
    headers = {
        "x-request-id": _header("The call's id: its usage event's id.", True),
        "x-modelmarket-route": _header("The model reference (or route target) that answered."),
        "x-modelmarket-iu": _header(f"Inference Units billed. {exact}"),
        "x-modelmarket-cost": _header(f"The amount billed and its currency (`0.0021 USD`). {exact}"),
        "Retry-After": _header("Seconds to wait before retrying.", False, whole),
        "inference-header-content-length": _header("With binary data: the length of the JSON header.", False, whole),
        "idempotency-replayed": _header("`true` when the answer is a kept one, replayed for an `Idempotency-Key`."),
    }
    parameters = {
        "ModelName": _path_param("model_name", "The model's name."),
        "ModelVersion": _path_param("model_version", "A version (`1.0.0`) or an alias."),
        "InferenceHeaderContentLength": {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "description": "With binary tensor data: the length of the JSON header at the start of the body.",
            "schema": whole,
        },
        "IdempotencyKey": {
            "name": "Idempotency-Key",
            "in": "header",
            "description": "1-200 printable ASCII characters; a retry with the same key is never billed again.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        },
        "Traceparent": {
            "name": "traceparent",
            "in": "header",
            "description": "W3C trace context; its trace id is kept on the usage event.",
            "schema": {"type": "string"},
        },
    }
    security = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key: `modelmarket keys create`."}
    }
    return {
        "schemas": component_schemas(),
        "responses": responses,
        "parameters": parameters,
        "headers": headers,
        "securitySchemes": security,
    }


def build_document() -> Doc:
    """The OpenAPI 3.1 document of every route the gateway serves."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Model Marketplace OS gateway",
            "version": __version__,
            "description": "OpenAI-compatible calls under `/v1`, the marketplace under `/api`, the Open Inference "
            "Protocol v2 under `/v2`. A request head over `MODELMARKET_MAX_HEADER_BYTES` is answered 431, one not "
            "sent in time 408, on any route.",
        },
        "tags": [
            {"name": "OpenAI-compatible", "description": "Errors are OpenAI error objects."},
            {"name": "Marketplace", "description": 'Errors are `{"error": "..."}`.'},
            {"name": "OIP v2", "description": 'KServe / Open Inference Protocol v2; errors are `{"error": "..."}`.'},
            {"name": "Meta"},
        ],
        "security": _SECURED,
        "paths": _openai_paths() | _api_paths() | _oip_paths() | _meta_paths(),
        "components": _components(),
    }


@functools.cache
def document_json() -> bytes:
    """``build_document()`` serialised, once per process (on the first request for it)."""
    return orjson.dumps(build_document())
