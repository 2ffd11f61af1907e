"""The playground (``/playground``, ``/playground/{name}``): try a model with a real, billed call.

What the form asks for follows the model's inputs (``playground_kind``): an 8x8 digit drawn on a canvas (64 values
0..16, as the ``digits`` model was trained on: each value counts the set pixels of a 4x4 block of a 32x32
drawing), a text, a WAV file, a chat message, or for any other model the Open Inference Protocol request itself.
The POST is made into an OIP request and served by the gateway's data plane (``DataPlane.infer``) as the
session's account and API key, so the key's limits and redaction, metering and billing apply as to any call; the
answer, the IU and the cost come from the call's own answer headers. Errors (a limit, a bad input) show their
message in place of the answer.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from modelmarket.core.errors import DomainError, InvalidInput
from modelmarket.dashboard.web import ALL_ROLES, DashboardContext, Page, View
from modelmarket.gateway.dataplane import USAGE_EVENTS_HEADER, InferAnswer, InferRequest
from modelmarket.gateway.errors import message_for, status_for
from modelmarket.observability import current, note_answer_headers
from modelmarket.registry.catalogue import VersionRecord

DIGIT, TEXT, AUDIO, CHAT, OIP_JSON = "digit", "text", "audio", "chat", "json"
DIGIT_PIXELS = 64
DIGIT_MAX_VALUE = 16
TEXT_MAX_CHARS = 10_000
CHAT_MAX_CHARS = 4_000
CHAT_MAX_TOKENS = 128
"""The reply length asked of a chat model (reserved against the key's limits like any call)."""
UPLOAD_MAX_BYTES = 4 * 1024 * 1024
"""Largest WAV the playground sends (about two minutes of 16 kHz 16-bit mono)."""
JSON_MAX_BYTES = 64 * 1024
"""Largest OIP request typed into the playground."""
ANSWER_TEXT_MAX_CHARS = 4_000
"""Longest text shown of one output (the rest is cut, with a mark)."""
ANSWER_VALUES_MAX = 64
"""Values shown of one numeric output."""
_NUMBER_SPLIT_RE = re.compile(r"[\s,;]+")


def playground_kind(version: VersionRecord) -> str:
    """How the playground asks for this model's input."""
    m, inputs = version.manifest, version.inputs
    if len(inputs) != 1:
        return OIP_JSON
    only = inputs[0]
    if only.datatype != "BYTES":
        flat = tuple(only.shape[1:]) == (DIGIT_PIXELS,) and only.shape[0] in (-1, 1)
        return DIGIT if m.modality == "image" and flat else OIP_JSON
    if m.modality == "audio":
        return AUDIO
    return CHAT if m.task == "text-generation" else TEXT


@dataclass(frozen=True, slots=True)
class Shown:
    """One output of an answer as the page shows it."""

    name: str
    text: str | None = None
    values: list[tuple[int, float]] | None = None
    cut: bool = False


def playground_pages(ctx: DashboardContext) -> list[Page]:
    async def index(view: View) -> Response:
        catalogue = ctx.parts.state.catalogue
        models = []
        for name in catalogue.names():
            latest = catalogue.resolve(name)
            models.append({"name": name, "kind": playground_kind(latest), "summary": latest.manifest.card.summary})
        return view.render("playground_index.html", models=models)

    async def page(view: View) -> Response:
        version = ctx.parts.state.catalogue.resolve(view.request.path_params["name"])
        return view.render("playground.html", **_form_values(version), result=None)

    async def call(view: View) -> Response:
        version = ctx.parts.state.catalogue.resolve(view.request.path_params["name"])
        kind = playground_kind(version)
        form = await view.request.form()
        result = await _call(ctx, view, version, kind, form)
        template = ("_chat_turn.html" if kind == CHAT else "_answer.html") if view.is_htmx else "playground.html"
        values = {"kind": kind} if view.is_htmx else _form_values(version)
        return view.render(template, status_code=result["status"], result=result, **values)

    return [
        Page("/playground", index, label="Playground", roles=ALL_ROLES),
        Page("/playground/{name}", page, roles=ALL_ROLES),
        Page(
            "/playground/{name}",
            call,
            roles=ALL_ROLES,
            methods=("POST",),
            max_body_bytes=UPLOAD_MAX_BYTES + JSON_MAX_BYTES,
        ),
    ]


async def _call(ctx: DashboardContext, view: View, version: VersionRecord, kind: str, form: FormData) -> dict[str, Any]:
    session = view.session
    if session is None:  # the app signs the viewer in before any POST reaches a page
        raise InvalidInput("sign in to call a model")
    said = _said(kind, form)
    try:
        request = await _request(version, kind, form)
        answer = await ctx.parts.dataplane.infer(
            session.account, version.model_name, None, request, key_id=session.key_id
        )
    except DomainError as exc:
        return {"status": status_for(exc) or 400, "error": message_for(exc), "said": said}
    info = current()
    if info is not None:  # the request log and metrics count this call like any other billed call
        note_answer_headers(info, answer.headers)
    return {"status": 200, "error": None, "said": said, **_answer(answer)}


async def _request(version: VersionRecord, kind: str, form: FormData) -> InferRequest:
    spec = version.inputs[0] if version.inputs else None
    if kind == AUDIO and spec is not None:
        return _binary_request(spec.name, await _upload(form, "audio"))
    if kind == OIP_JSON:
        raw = _field(form, "request", JSON_MAX_BYTES)
        return InferRequest(raw.encode("utf-8"), b"application/json")
    if spec is None:
        raise InvalidInput(f"model {version.model_name!r} declares no input")
    doc: dict[str, Any] = {}
    if kind == DIGIT:
        tensor = {"name": spec.name, "datatype": spec.datatype, "shape": [1, DIGIT_PIXELS], "data": _pixels(form)}
    else:
        text = _text(form, "message", CHAT_MAX_CHARS) if kind == CHAT else _text(form, "text", TEXT_MAX_CHARS)
        tensor = {"name": spec.name, "datatype": "BYTES", "shape": [1], "data": [text]}
    if kind == CHAT:
        doc["parameters"] = {"max_tokens": CHAT_MAX_TOKENS}
    return InferRequest(orjson.dumps({"inputs": [tensor], **doc}), b"application/json")


def _field(form: FormData, name: str, max_chars: int) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: missing")
    if len(value) > max_chars:
        raise InvalidInput(f"{name}: {len(value):,} characters; at most {max_chars:,}")
    return value


def _text(form: FormData, name: str, max_chars: int) -> str:
    text = _field(form, name, max_chars).strip()
    if not text:
        raise InvalidInput(f"{name}: type something first")
    return text


def _pixels(form: FormData) -> list[float]:
    """64 values 0..16, row by row, separated by commas or spaces."""
    raw = _field(form, "pixels", 2_000).strip()
    parts = [p for p in _NUMBER_SPLIT_RE.split(raw) if p]
    if len(parts) != DIGIT_PIXELS:
        raise InvalidInput(f"pixels: {len(parts)} values; draw a digit or give {DIGIT_PIXELS} values 0..16")
    values = []
    for i, part in enumerate(parts):
        try:
            value = float(part)
        except ValueError:
            raise InvalidInput(f"pixels[{i}]: {part[:20]!r} is not a number") from None
        if not 0 <= value <= DIGIT_MAX_VALUE:
            raise InvalidInput(f"pixels[{i}]: {part[:20]} is outside 0..{DIGIT_MAX_VALUE}")
        values.append(value)
    if not any(values):
        raise InvalidInput("pixels: the drawing is empty; draw a digit first")
    return values


async def _upload(form: FormData, name: str) -> bytes:
    upload = form.get(name)
    if not isinstance(upload, UploadFile):
        raise InvalidInput(f"{name}: choose a WAV file")
    data = await upload.read(UPLOAD_MAX_BYTES + 1)
    if len(data) > UPLOAD_MAX_BYTES:
        raise InvalidInput(f"{name}: larger than {UPLOAD_MAX_BYTES:,} bytes")
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidInput(f"{name}: not a WAV file (it must start with RIFF....WAVE)")
    return data


def _binary_request(input_name: str, data: bytes) -> InferRequest:
    """One BYTES element in the OIP binary extension: a JSON header, then the element with its 4-byte length."""
    size = 4 + len(data)
    head = orjson.dumps(
        {"inputs": [{"name": input_name, "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": size}}]}
    )
    body = head + struct.pack("<I", len(data)) + data
    return InferRequest(body, b"application/octet-stream", str(len(head)).encode("ascii"))


def _said(kind: str, form: FormData) -> str | None:
    """What the viewer sent, to show beside the answer in a chat (never kept anywhere)."""
    value = form.get("message") if kind == CHAT else None
    return value[:CHAT_MAX_CHARS] if isinstance(value, str) else None


def _answer(answer: InferAnswer) -> dict[str, Any]:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in answer.headers}
    outputs: list[Shown] = []
    if answer.content_type.startswith(b"application/json"):
        try:
            doc = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            doc = {}
        for output in doc.get("outputs") or []:
            if isinstance(output, dict):
                outputs.append(_shown(output))
    else:
        outputs.append(Shown("answer", text=f"{len(answer.body):,} bytes of binary data"))
    return {
        "outputs": outputs,
        "iu": headers.get("x-modelmarket-iu"),
        "cost": headers.get("x-modelmarket-cost"),
        "request_id": headers.get("x-request-id", answer.request_id),
        "route": headers.get("x-modelmarket-route"),
        "steps_billed": len([e for e in headers.get(USAGE_EVENTS_HEADER.decode(), "").split(",") if e]),
    }


def _shown(output: dict[str, Any]) -> Shown:
    name = str(output.get("name", "?"))[:100]
    data = output.get("data")
    flat = data if isinstance(data, list) else [data]
    if all(isinstance(x, int | float) and not isinstance(x, bool) for x in flat) and flat:
        values = [(i, float(x)) for i, x in enumerate(flat[:ANSWER_VALUES_MAX])]
        if len(values) == 1:
            return Shown(name, text=_number(values[0][1]))
        return Shown(name, values=values, cut=len(flat) > ANSWER_VALUES_MAX)
    text = " | ".join(str(x) for x in flat)
    return Shown(name, text=text[:ANSWER_TEXT_MAX_CHARS], cut=len(text) > ANSWER_TEXT_MAX_CHARS)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:.4g}"


def _form_values(version: VersionRecord) -> dict[str, Any]:
    """What the playground page shows before a call: the kind of form and a first example to start from."""
    kind = playground_kind(version)
    example = _example(version)
    first = example["inputs"][0]["data"] if example else None
    values: dict[str, Any] = {"version": version, "kind": kind, "example_text": "", "example_pixels": ""}
    if kind in (TEXT, CHAT) and isinstance(first, list) and first and isinstance(first[0], str):
        values["example_text"] = first[0]
    if kind == DIGIT and isinstance(first, list):
        values["example_pixels"] = " ".join(_number(float(x)) for x in _flatten(first))
    values["example_json"] = orjson.dumps(example, option=orjson.OPT_INDENT_2).decode() if example else ""
    values["upload_max_bytes"] = UPLOAD_MAX_BYTES
    values["input_specs"] = [(t.name, t.datatype, list(t.shape)) for t in version.inputs]
    return values


def _example(version: VersionRecord) -> dict[str, Any] | None:
    """The manifest's first example given inline, as an OIP request (a file example is left out)."""
    specs = {t.name: t for t in version.inputs}
    for example in version.manifest.examples or ():
        if all(x.data is not None and x.name in specs for x in example.inputs):
            return {
                "inputs": [
                    {"name": x.name, "datatype": specs[x.name].datatype, "shape": x.shape, "data": x.data}
                    for x in example.inputs
                ]
            }
    return None


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [y for x in value for y in _flatten(x)]
    return [value]
