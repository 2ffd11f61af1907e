"""The gateway's OpenAPI 3.1 document: ``/v1`` (OpenAI-compatible), ``/api`` (the marketplace) and ``/v2`` (OIP),
served at ``GET /openapi.json`` without a key.

Pure: ``build_document()`` assembles a dict from small helpers, with limits, enums and public routes taken from
the code that enforces them; ``document_json()`` is its serialised form, built once on first use. The component
schemas live in ``gateway/openapi_schemas.py``. ``tests/unit/test_openapi.py`` checks that every route the
gateway serves is documented here, and nothing else.
"""

from __future__ import annotations

import functools
from typing import Any, get_args

import orjson

from modelmarket import __version__
from modelmarket.audit.leaves import TREES
from modelmarket.audit.merkle import MAX_PROOF_HASHES
from modelmarket.audit.proofs import PROOF_FORMAT
from modelmarket.gateway.api import PUBLIC_ROUTES
from modelmarket.gateway.api_lab import FEEDBACK_BODY_MAX, MODEL_PARAM_MAX
from modelmarket.gateway.api_packages import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, RETRY_AFTER_S, UPLOAD_PATH
from modelmarket.gateway.openapi_schemas import ERROR, OPENAI_ERROR, component_schemas, ref, search_parameters
from modelmarket.governance.model import STAGES, SUBMISSION_STATUSES, StageStatus
from modelmarket.lab.feedback import LABEL_MAX_CHARS, REQUEST_ID_MAX_CHARS, SCORE_MAX, SCORE_MIN

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
        _api_route(
            "/api/usage/events/{event_id}/proof",
            "getUsageEventProof",
            "The inclusion proof of one of the caller's usage events",
            _ok("An RFC 6962 inclusion proof and the signed checkpoint it leads to.", _json(_proof_schema())),
            (404, 409, 503),
            parameters=[_path_param("event_id", "The usage event's id: a billed answer's `x-request-id`.")],
            description="Check it offline with `modelmarket audit check-proof` and the key `modelmarket audit "
            "public-key` prints, or with any RFC 6962 implementation (docs/audit-proofs.md). Another account's event "
            "is not found, like an unknown one; 503 with `Retry-After`: not in a signed checkpoint yet.",
        ),
    ]
    return dict(routes)


def _proof_schema() -> Doc:
    """``audit.proofs.InclusionProof.to_json``."""
    sha256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256, hex."}
    checkpoint = {
        "type": "object",
        "required": ["tree", "size", "root", "signed_at", "key_id", "signature", "body"],
        "properties": {
            "tree": {"type": "string", "enum": list(TREES)},
            "size": {"type": "integer", "minimum": 0},
            "root": sha256,
            "signed_at": {"type": "string", "format": "date-time"},
            "key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "signature": {"type": "string", "description": "Ed25519 over `body`, base64."},
            "body": {"type": "string", "description": "The signed text: tree, size, base64 root, signed_at."},
        },
    }
    fields = {
        "format": {"type": "string", "const": PROOF_FORMAT},
        "tree": {"type": "string", "enum": list(TREES)},
        "leaf_index": {"type": "integer", "minimum": 0},
        "leaf_data": {"type": "string", "description": "The leaf's bytes (RFC 8785 JSON, UTF-8): the event's facts."},
        "leaf_hash": sha256,
        "audit_path": {"type": "array", "items": sha256, "maxItems": MAX_PROOF_HASHES},
        "checkpoint": checkpoint,
    }
    return {"type": "object", "required": list(fields), "properties": fields}


# -- /api/packages: publishing over HTTP ------------------------------------------------------------------------


def _package_error(description: str, retry: bool = False) -> Doc:
    headers = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}} if retry else None
    return _ok(description, _json(ref(ERROR)), headers)


def _package_schemas() -> Doc:
    text, when = {"type": "string"}, {"type": "string", "format": "date-time"}
    maybe = {"type": ["string", "null"]}
    stage = {
        "type": "object",
        "required": ["stage", "status", "started_at", "duration_ms", "summary", "report"],
        "properties": {
            "stage": {"type": "string", "enum": list(STAGES)},
            "status": {"type": "string", "enum": list(get_args(StageStatus))},
            "started_at": when,
            "duration_ms": {"type": "integer", "minimum": 0},
            "summary": {"type": "string", "description": "One line for people: what the stage found."},
            "report": {"type": "object", "description": "The stage's figures and findings."},
        },
    }
    fields = {
        "id": text,
        "model": text,
        "version": text,
        "ref": {"type": "string", "description": "`model@version`."},
        "digest": text,
        "provider_account_id": text,
        "submitted_by": text,
        "status": {"type": "string", "enum": list(SUBMISSION_STATUSES)},
        "created_at": when,
        "updated_at": when,
        "decided_by": maybe,
        "decision_reason": maybe,
        "version_id": {"type": ["string", "null"], "description": "The published version's id, once published."},
        "stages": {"type": "array", "items": ref("SubmissionStage"), "description": "Oldest first."},
    }
    submission = {"type": "object", "required": list(fields), "properties": fields}
    listing = {
        "type": "object",
        "required": ["submissions"],
        "properties": {"submissions": {"type": "array", "items": ref("Submission"), "maxItems": LIST_LIMIT_MAX}},
    }
    return {"SubmissionStage": stage, "Submission": submission, "SubmissionList": listing}


def _package_paths() -> Doc:
    tag, shown = "Marketplace", _json(ref("Submission"))
    not_served = "No such submission of the caller's (or packages are not published through this gateway)."
    base = {"401": {"$ref": "#/components/responses/Error401"}, "500": {"$ref": "#/components/responses/Error500"}}
    location = {"Location": _header("`/api/packages/{submission_id}`.", True)}
    upload = {
        "202": _ok("Validated and stored; the other stages run in the background: see `Location`.", shown, location),
        "200": _ok("The same bytes as a version already published: its submission; nothing runs again.", shown),
        "400": _package_error("A bad archive (the member is named), manifest (the field is named) or Content-Type."),
        "403": _package_error("Not a provider's key, or a manifest whose `provider` is another account."),
        "404": _package_error("Packages are not published through this gateway."),
        "409": _package_error(
            "`model@version` is published with other content or has a submission under way, or the provider has as "
            "many submissions under way as the gate's policy allows."
        ),
        "413": _package_error("Over `MODELMARKET_MAX_PACKAGE_BYTES` (a `Content-Length` past it: before any is read)."),
        "503": _package_error(f"The publish queue is full; retry after `Retry-After` ({RETRY_AFTER_S} s).", True),
    } | base
    body = {
        "required": True,
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The package folder as a `.tar.gz`: `modelmarket.yaml` at the archive's root or in its single "
        "top folder; regular files and folders only; bounded by `MODELMARKET_MAX_PACKAGE_BYTES`, "
        "`MODELMARKET_MAX_PACKAGE_UNPACKED_BYTES` and `MODELMARKET_MAX_PACKAGE_MEMBERS`.",
    }
    limit_schema = {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX, "default": LIST_LIMIT_DEFAULT}
    listed = {"200": _ok("Without their stages.", _json(ref("SubmissionList")))}
    listed |= {"400": _package_error("A bad `limit`."), "404": _package_error(not_served)} | base
    post = _operation(
        "uploadPackage",
        "Publish a package (a provider's key)",
        tag,
        upload,
        body=body,
        description="The manifest's `provider` must be the caller's account. The gate's stages (validate, store, "
        "scan, smoke_test, benchmark, bias, review, publish) are followed at `GET /api/packages/{submission_id}`.",
    )
    get_list = _operation(
        "listSubmissions",
        "The caller's package submissions, newest first",
        tag,
        listed,
        parameters=[_query("limit", "At most this many.", limit_schema)],
    )
    get_one = _operation(
        "getSubmission",
        "One of the caller's package submissions, with its stages",
        tag,
        {"200": _ok("The submission and every stage so far.", shown), "404": _package_error(not_served)} | base,
        parameters=[_path_param("submission_id", "The submission's id (`sub_...`).")],
    )
    return {UPLOAD_PATH: {"post": post, "get": get_list}, UPLOAD_PATH + "/{submission_id}": {"get": get_one}}


# -- /api/feedback: the lab ------------------------------------------------------------------------------------


def _lab_schemas() -> Doc:
    when = {"type": "string", "format": "date-time"}
    fields = {
        "request_id": {"type": "string", "description": "The call's `x-request-id` (its usage event's id)."},
        "model": {"type": "string"},
        "version": {"type": "string"},
        "score": {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX},
        "label": {"type": ["string", "null"], "maxLength": LABEL_MAX_CHARS, "description": "The ground truth."},
        "created_at": when,
        "updated_at": when,
    }
    feedback = {"type": "object", "required": list(fields), "properties": fields}
    scores = {str(i): {"type": "integer", "minimum": 0} for i in range(SCORE_MIN, SCORE_MAX + 1)}
    counted = {
        "model": {"type": "string"},
        "version": {"type": "string"},
        "calls": {"type": "integer", "minimum": 1, "description": "Calls with feedback."},
        "mean_score": {"type": "string", "description": "The mean score, to 4 decimal places."},
        "scores": {"type": "object", "properties": scores, "description": "Calls per score."},
        "labelled": {"type": "integer", "minimum": 0, "description": "Calls whose feedback has a label."},
    }
    version = {"type": "object", "required": list(counted), "properties": counted}
    listing = {
        "type": "object",
        "required": ["versions"],
        "properties": {"versions": {"type": "array", "items": ref("VersionFeedback")}},
    }
    return {"Feedback": feedback, "VersionFeedback": version, "FeedbackByVersion": listing}


def _lab_paths() -> Doc:
    tag, shown = "Marketplace", _json(ref("Feedback"))
    body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["request_id", "score"],
                    "additionalProperties": False,
                    "properties": {
                        "request_id": {"type": "string", "minLength": 1, "maxLength": REQUEST_ID_MAX_CHARS},
                        "score": {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX},
                        "label": {"type": "string", "minLength": 1, "maxLength": LABEL_MAX_CHARS},
                    },
                }
            }
        },
        "description": f"At most {FEEDBACK_BODY_MAX:,} bytes. `label`: the call's ground truth, optional.",
    }
    post = _operation(
        "giveFeedback",
        "Feedback on one of the caller's billed calls",
        tag,
        {"201": _ok("Stored.", shown), "200": _ok("Stored, replacing the call's earlier feedback.", shown)}
        | _errors("Error", (400, 401, 404, 413, 500)),
        body=body,
        description="One feedback per call: a second one replaces the first. Another account's call is not found, "
        "like an unknown one. Feedback is counted per version (`GET /api/feedback`) for the lab's experiments.",
    )
    counts = _operation(
        "feedbackByVersion",
        "Feedback counted per model version",
        tag,
        {"200": _ok("Per version, by model and version.", _json(ref("FeedbackByVersion")))}
        | _errors("Error", (400, 401, 500)),
        parameters=[_query("model", "Only this model's versions.", {"type": "string", "maxLength": MODEL_PARAM_MAX})],
    )
    one = _operation(
        "getFeedback",
        "The caller's feedback on one of its calls",
        tag,
        {"200": _ok("The feedback.", shown)} | _errors("Error", (401, 404, 500)),
        parameters=[_path_param("request_id", "The call's `x-request-id`.")],
    )
    return {"/api/feedback": {"post": post, "get": counts}, "/api/feedback/{request_id}": {"get": one}}


# -- the document -----------------------------------------------------------------------------------------------


def _meta_paths() -> Doc:
    answer = _ok("This document.", _json({"type": "object"}))
    op = _operation("getOpenApiDocument", "This OpenAPI document", "Meta", {"200": answer}, public=True)
    exposition = _ok(
        "Prometheus text exposition format (version 0.0.4); see docs/metrics.md.",
        {"text/plain": {"schema": {"type": "string"}}},
    )
    metrics = _operation(
        "getMetrics",
        "Prometheus metrics",
        "Meta",
        {"200": exposition, **_errors("Error", (401,)), "403": {"description": "The key is not an operator's."}},
        description="An operator's API key unless `MODELMARKET_METRICS_PUBLIC`; absent when "
        "`MODELMARKET_METRICS_ENABLED` is off.",
    )
    return {OPENAPI_PATH: {"get": op}, "/metrics": {"get": metrics}}


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
        "schemas": component_schemas() | _package_schemas() | _lab_schemas(),
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
        "paths": _openai_paths() | _api_paths() | _package_paths() | _lab_paths() | _oip_paths() | _meta_paths(),
        "components": _components(),
    }


@functools.cache
def document_json() -> bytes:
    """``build_document()`` serialised, once per process (on the first request for it)."""
    return orjson.dumps(build_document())
