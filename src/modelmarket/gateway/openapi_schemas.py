"""The JSON Schemas of the gateway's OpenAPI document (``gateway/openapi.py``): OIP tensors, OpenAI requests,
answers and stream chunks, the marketplace's answers and both error bodies. Pure data; limits and enums come from
the modules that enforce them, so the document cannot drift from them."""

from __future__ import annotations

from typing import Any, get_args

from modelmarket.billing.lifecycle import INVOICE_STATUSES
from modelmarket.registry import search
from modelmarket.registry.manifest import DATATYPES, UNIT_KINDS, ChargeKind
from modelmarket.registry.protocols import PROTOCOLS
from modelmarket.runtime import openai as oa
from modelmarket.runtime.oip import DEFAULT_LIMITS

Schema = dict[str, Any]
ERROR = "Error"
OPENAI_ERROR = "OpenAIError"
_EXACT = {
    "type": "string",
    "pattern": "^-?[0-9]+(\\.[0-9]+)?(/[0-9]+)?$",
    "description": "An exact quantity: a decimal (`0.05`) or, when it has none, a fraction (`7/60`).",
}
_DECIMAL = {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$", "description": "A decimal, as text."}
_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_COUNT: Schema = {"type": "integer", "minimum": 0}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _null(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: Schema, **limits: Any) -> Schema:
    return {"type": "array", "items": items, **limits}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, **extra: Any) -> Schema:
    """An object with these ``required`` and ``optional`` properties (more may be added over time)."""
    schema: Schema = {"type": "object", "properties": {**required, **(optional or {})}, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _const(value: str) -> Schema:
    return {"type": "string", "const": value}


# -- OIP v2 ----------------------------------------------------------------------------------------------------


def _oip_schemas() -> dict[str, Schema]:
    lim = DEFAULT_LIMITS
    name = {"type": "string", "minLength": 1, "maxLength": lim.max_name_length}
    params = {
        "type": "object",
        "maxProperties": lim.max_parameters,
        "additionalProperties": {"type": ["string", "number", "boolean"]},
        "description": "Names to strings, numbers or booleans. `binary_data_size`: the bytes of this tensor's "
        "binary data after the JSON header; `binary_data` / `binary_data_output`: ask for binary outputs.",
    }
    shape = _array({"type": "integer", "minimum": 0}, maxItems=lim.max_rank)
    datatype = {"type": "string", "enum": list(DATATYPES)}
    scalar = {"type": ["number", "boolean", "string"]}
    return {
        "TensorParameters": params,
        "TensorData": {
            "type": "array",
            "items": {"anyOf": [scalar, ref("TensorData")]},
            "description": "Row-major elements, flat or nested as the shape; BYTES elements are strings.",
        },
        "RequestInput": _obj(
            {"name": name, "shape": shape, "datatype": datatype},
            {"parameters": ref("TensorParameters"), "data": ref("TensorData")},
        ),
        "RequestOutput": _obj({"name": name}, {"parameters": ref("TensorParameters")}),
        "InferenceRequest": _obj(
            {"inputs": _array(ref("RequestInput"), minItems=1, maxItems=lim.max_inputs)},
            {
                "id": {"type": ["string", "integer"]},
                "parameters": ref("TensorParameters"),
                "outputs": _array(ref("RequestOutput"), maxItems=lim.max_requested_outputs),
            },
        ),
        "ResponseOutput": _obj(
            {"name": _STR, "datatype": datatype, "shape": shape},
            {"parameters": ref("TensorParameters"), "data": ref("TensorData")},
        ),
        "InferenceResponse": _obj(
            {"model_name": _STR, "model_version": _STR, "outputs": _array(ref("ResponseOutput"))},
            {"id": _STR, "parameters": ref("TensorParameters")},
        ),
        "TensorMetadata": _obj(
            {"name": _STR, "datatype": datatype, "shape": _array({"type": "integer", "minimum": -1})},
            description="A declared tensor; -1 is a dimension of any size.",
        ),
        "ModelMetadata": _obj(
            {
                "name": _STR,
                "versions": _array(_STR),
                "platform": _STR,
                "inputs": _array(ref("TensorMetadata")),
                "outputs": _array(ref("TensorMetadata")),
            }
        ),
        "ServerMetadata": _obj({"name": _STR, "version": _STR, "extensions": _array(_STR)}),
        "LiveState": _obj({"live": {"type": "boolean"}}),
        "ReadyState": _obj({"ready": {"type": "boolean"}}, {"error": _STR}),
    }


# -- OpenAI-compatible -----------------------------------------------------------------------------------------


def _generation_fields() -> dict[str, Schema]:
    tokens = {"type": "integer", "minimum": 1, "maximum": oa.MAX_TOKENS_LIMIT}
    stop_text = {"type": "string", "minLength": 1, "maxLength": oa.MAX_STOP_CHARS}
    unsupported = {"description": "Not supported: leave it out (or false, empty, `none`)."}
    return {
        "max_tokens": tokens,
        "max_completion_tokens": {**tokens, "description": "Takes precedence over `max_tokens`."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "stop": {"anyOf": [stop_text, _array(stop_text, maxItems=oa.MAX_STOP)]},
        "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        "n": {"type": "integer", "const": 1, "description": "One choice per call."},
        "stream": {"type": ["boolean", "null"], "default": False},
        "stream_options": _obj(
            {},
            {
                "include_usage": {"type": "boolean", "description": "A last chunk with the usage and the bill."},
                "continuous_usage_stats": {"type": "boolean", "description": "Usage in every chunk."},
            },
            description="Only with `stream: true`.",
        ),
        **{name: unsupported for name in ("tools", "functions", "tool_choice", "logprobs")},
    }


def _model_field() -> Schema:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "description": "A model (`name` or `name@version`) or a route (`GET /v1/models` lists them).",
    }


def _openai_request_schemas() -> dict[str, Schema]:
    text_part = _obj({"type": _const("text"), "text": _STR})
    content = {"anyOf": [_STR, _array(text_part), {"type": "null"}]}
    message = _obj({"role": {"type": "string", "enum": sorted(oa.ROLES)}}, {"content": content})
    token = {"type": "integer", "minimum": 0, "maximum": oa.MAX_TOKEN_ID}
    embed_input = {
        "anyOf": [
            {"type": "string", "minLength": 1},
            _array({"type": "string", "minLength": 1}, minItems=1, maxItems=oa.MAX_EMBEDDING_INPUTS),
            _array(token, minItems=1),
            _array(_array(token, minItems=1), minItems=1, maxItems=oa.MAX_EMBEDDING_INPUTS),
        ]
    }
    unsupported = {"description": "Not supported: leave it out."}
    return {
        "ChatMessage": message,
        "ChatCompletionRequest": _obj(
            {"model": _model_field(), "messages": _array(ref("ChatMessage"), minItems=1, maxItems=oa.MAX_MESSAGES)},
            _generation_fields(),
            description="Unknown fields are ignored.",
        ),
        "CompletionRequest": _obj(
            {"model": _model_field(), "prompt": {"anyOf": [_STR, _array(_STR, minItems=1, maxItems=1)]}},
            {**_generation_fields(), "echo": unsupported, "suffix": unsupported, "best_of": {"const": 1}},
            description="Unknown fields are ignored.",
        ),
        "EmbeddingRequest": _obj(
            {"model": _model_field(), "input": embed_input},
            {"encoding_format": {"type": "string", "enum": ["float", "base64"]}, "dimensions": unsupported},
            description="Unknown fields are ignored.",
        ),
        "TranscriptionRequest": _obj(
            {"file": {"type": "string", "format": "binary", "description": "The audio, a WAV file."}, "model": _STR},
            {"response_format": {"type": "string", "enum": ["json", "text", "verbose_json"], "default": "json"}},
        ),
    }


def _openai_answer_schemas() -> dict[str, Schema]:
    finish = {"type": ["string", "null"]}
    head = {"id": _STR, "created": _INT, "model": _STR}
    chat_choice = _obj(
        {
            "index": _INT,
            "message": _obj({"role": _const("assistant"), "content": _STR}),
            "logprobs": {"type": "null"},
            "finish_reason": _STR,
        }
    )
    text_choice = _obj({"index": _INT, "text": _STR, "logprobs": {"type": "null"}, "finish_reason": _STR})
    delta = _obj({}, {"role": _const("assistant"), "content": _STR})
    billed = _obj({"request_id": _STR, "route": _STR, "iu": _EXACT, "cost": _EXACT, "currency": _STR})
    chunk_tail = {"usage": _null(ref("Usage")), "x_modelmarket": billed}
    chunk_choice = {"index": _INT, "logprobs": {"type": "null"}, "finish_reason": finish}
    model_extra = {
        "version": _STR,
        "endpoints": _array(_STR),
        "pricing": ref("Pricing"),
        "route": {"type": "boolean", "description": "A route, not a model."},
    }
    embedding = {"anyOf": [_array({"type": "number"}), {"type": "string", "contentEncoding": "base64"}]}
    error = {"message": _STR, "type": _STR, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}
    return {
        "Usage": _obj({"prompt_tokens": _COUNT, "completion_tokens": _COUNT, "total_tokens": _COUNT}),
        "ChatCompletion": _obj(
            {**head, "object": _const("chat.completion"), "choices": _array(chat_choice), "usage": ref("Usage")}
        ),
        "Completion": _obj(
            {**head, "object": _const("text_completion"), "choices": _array(text_choice), "usage": ref("Usage")}
        ),
        "ChatCompletionChunk": _obj(
            {
                **head,
                "object": _const("chat.completion.chunk"),
                "choices": _array(_obj({**chunk_choice, "delta": delta})),
            },
            chunk_tail,
        ),
        "CompletionChunk": _obj(
            {**head, "object": _const("text_completion"), "choices": _array(_obj({**chunk_choice, "text": _STR}))},
            chunk_tail,
        ),
        "EmbeddingList": _obj(
            {
                "object": _const("list"),
                "data": _array(_obj({"object": _const("embedding"), "index": _INT, "embedding": embedding})),
                "model": _STR,
                "usage": _obj({"prompt_tokens": _COUNT, "total_tokens": _COUNT}),
            }
        ),
        "Transcription": _obj({"text": _STR}, {"task": _STR, "language": _STR}),
        "OpenAIModel": _obj({"id": _STR, "object": _const("model"), "created": _INT, "owned_by": _STR}, model_extra),
        "OpenAIModelList": _obj({"object": _const("list"), "data": _array(ref("OpenAIModel"))}),
        OPENAI_ERROR: _obj({"error": _obj(error)}),
    }


# -- the marketplace -------------------------------------------------------------------------------------------


def _catalogue_schemas() -> dict[str, Schema]:
    charges = list(get_args(ChargeKind))
    pricing = _obj(
        {"unit": {"type": "string", "enum": list(UNIT_KINDS)}, "price_per_iu": _DECIMAL, "currency": _STR},
        {
            "charge": {"type": "string", "enum": charges, "description": "Absent: `per_unit`."},
            "tiers": _array(_obj({"up_to": {"type": ["integer", "null"]}, "price_per_iu": _DECIMAL})),
            "package_iu": _INT,
            "price_per_package": _DECIMAL,
            "input_price_per_iu": _DECIMAL,
            "output_price_per_iu": _DECIMAL,
        },
    )
    price_now = _obj(
        {"price_per_iu": _DECIMAL, "factor": _DECIMAL, "list_price": _null(_DECIMAL), "record": _COUNT},
        description="The price in force: an operator's list price (or the manifest's) times the dynamic factor.",
    )
    calls = f"calls_{search.MEASURED_DAYS}d"
    measured = _obj({"latency_ms_p50": _null(_DECIMAL), "latency_ms_p95": _null(_DECIMAL), calls: _COUNT})
    iu = _obj({"unit": _STR, "base_unit": _STR, "base_units_per_iu": _INT})
    summary = _obj(
        {
            **{k: _STR for k in ("name", "latest", "task", "modality", "runtime", "license", "provider")},
            "versions": _array(_STR),
            "aliases": {"type": "object", "additionalProperties": _STR},
            "provider_account_id": _STR,
            "summary": _STR,
            "tags": _array(_STR),
            "protocols": _array({"type": "string", "enum": list(PROTOCOLS)}),
            "pricing": ref("Pricing"),
            "iu": iu,
        },
        {"price_now": ref("PriceNow"), "measured": ref("Measured")},
    )
    page = _obj({"models": _array(ref("ModelSummary")), "total": _COUNT, "next_cursor": {"type": ["string", "null"]}})
    artifact = _obj({"path": _STR, "sha256": _STR, "size_bytes": _COUNT})
    version = _obj(
        {
            **{k: _STR for k in ("id", "model", "version", "digest", "created_at", "provider_account_id")},
            "manifest": {"type": "object", "description": "The manifest as published (`modelmarket.yaml`)."},
            "artifacts": _array(artifact),
        }
    )
    return {
        "Pricing": pricing,
        "PriceNow": price_now,
        "Measured": measured,
        "ModelSummary": summary,
        "ModelPage": page,
        "ModelVersion": version,
    }


def _account_schemas() -> dict[str, Schema]:
    model_usage = _obj(
        {
            "model": _STR,
            "unit_kind": {"type": "string", "enum": list(UNIT_KINDS)},
            "currency": _STR,
            "events": _COUNT,
            "quantity": _COUNT,
            "base_unit": _STR,
            "iu": _EXACT,
            "amount": _EXACT,
        }
    )
    usage = _obj(
        {
            "account": _STR,
            "account_id": _STR,
            "since": _null({"type": "string", "format": "date"}),
            "until": _null({"type": "string", "format": "date"}),
            "total_events": _COUNT,
            "total_iu": _EXACT,
            "total_amount": _null(_EXACT),
            "currency": {"type": ["string", "null"], "description": "null when calls were billed in several."},
            "totals_by_currency": {"type": "object", "additionalProperties": _EXACT},
            "models": _array(model_usage),
        }
    )
    token_line = _obj(
        {
            "direction": {"type": "string", "enum": ["input", "output"]},
            "events": _COUNT,
            "quantity_iu": _EXACT,
            "price_per_iu": _DECIMAL,
            "amount_exact": _EXACT,
            "amount": _DECIMAL,
        }
    )
    line = _obj(
        {
            "type": _STR,
            "description": _STR,
            "model": {"type": ["string", "null"]},
            "unit_kind": {"type": ["string", "null"]},
            "events": _COUNT,
            "quantity_iu": _EXACT,
            "amount_exact": _EXACT,
            "amount": _DECIMAL,
        },
        {"tokens": _array(token_line)},
    )
    nullable_text = {"type": ["string", "null"]}
    invoice = _obj(
        {
            **{k: _STR for k in ("id", "account_id", "period", "currency", "updated_at")},
            "status": {"type": "string", "enum": list(INVOICE_STATUSES)},
            "events": _COUNT,
            "lines": _array(line),
            "total": _DECIMAL,
            "finalized_at": nullable_text,
        },
        {
            "voided_at": nullable_text,
            "void_reason": nullable_text,
            "credit_note": _obj({"invoice_id": _STR, "amount": _DECIMAL}),
        },
    )
    return {
        "UsageSummary": usage,
        "InvoiceLine": line,
        "Invoice": invoice,
        "InvoiceList": _obj({"account": _STR, "invoices": _array(ref("Invoice"))}),
    }


def _error_schema() -> Schema:
    return _obj(
        {"error": _STR},
        {
            "limit": {"type": "string", "description": "The limit that refused the call (402, 429)."},
            "scope": _STR,
            "allowed": {},
            "used": {},
            "retry_after_s": _COUNT,
            "unit_kind": _STR,
            "currency": _STR,
        },
    )


def component_schemas() -> dict[str, Schema]:
    return {
        **_oip_schemas(),
        **_openai_request_schemas(),
        **_openai_answer_schemas(),
        **_catalogue_schemas(),
        **_account_schemas(),
        ERROR: _error_schema(),
    }


# -- the catalogue's query parameters --------------------------------------------------------------------------


def search_parameters() -> list[Schema]:
    """``GET /api/models``'s query parameters: what ``registry.search.parse_search`` reads."""

    def query(name: str, description: str, schema: Schema) -> Schema:
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}

    text = {"type": "string", "maxLength": search.FILTER_MAX_CHARS}
    filters: dict[str, tuple[str, Schema]] = {
        "task": ("The model's task, any case.", text),
        "modality": ("The model's modality.", {"type": "string", "enum": list(search.MODALITIES)}),
        "protocol": ("A protocol the model speaks.", {"type": "string", "enum": list(PROTOCOLS)}),
        "runtime": ("The model's runtime, any case.", text),
        "license": ("The model's license, any case.", text),
        "provider": ("The provider account's name or id.", text),
    }
    return [
        query(
            "q",
            f"Words (at most {search.QUERY_MAX_WORDS}) that must all occur in the name, tags or card.",
            {"type": "string", "maxLength": search.QUERY_MAX_CHARS},
        ),
        *(query(name, *filters.get(name, ("A filter, any case.", text))) for name in search.FILTERS),
        query("max_price", "The price per IU in force is at most this decimal.", _DECIMAL),
        query("sort", "Relevance by default with `q`, else name.", {"type": "string", "enum": list(search.SORTS)}),
        query("order", "Reverse a sort's default direction.", {"type": "string", "enum": list(search.ORDERS)}),
        query(
            "limit",
            "Models per page.",
            {"type": "integer", "minimum": 1, "maximum": search.LIMIT_MAX, "default": search.LIMIT_DEFAULT},
        ),
        query(
            "cursor",
            "`next_cursor` of the previous page (not with `offset`).",
            {"type": "string", "maxLength": search.CURSOR_MAX_CHARS},
        ),
        query(
            "offset",
            "Models to skip (not with `cursor`).",
            {"type": "integer", "minimum": 0, "maximum": search.OFFSET_MAX},
        ),
    ]
