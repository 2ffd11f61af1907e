"""The OpenAI-compatible edge (``/v1``): it authenticates with the same keys, parses the request, calls the
OpenAI plane (or, for transcriptions, the OIP data plane) and answers, errors as OpenAI error objects
(``{"error": {"message", "type", "param", "code"}}``) with the status of the gateway's one error table.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings``, ``/v1/audio/transcriptions`` (multipart: ``file`` a WAV, ``model``, ``response_format``
``json`` or ``text``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import orjson
from starlette.requests import Request

from modelmarket.core.errors import DomainError, NotFound, QuotaExceeded, RateLimited, Unauthenticated
from modelmarket.gateway.auth import authenticate_key
from modelmarket.gateway.dataplane import DataPlane, InferRequest
from modelmarket.gateway.errors import headers_for, message_for, status_for
from modelmarket.gateway.openai_plane import TRANSCRIPTION_TASK, Answer, OpenAIPlane, Stream
from modelmarket.gateway.state import GatewayState
from modelmarket.metering.ports import EventLogFull
from modelmarket.observability import note
from modelmarket.runtime import openai as oa
from modelmarket.runtime.asgi import BodyTooLarge, Receive, Scope, Send, header, read_body, respond

log = logging.getLogger(__name__)
MAX_FORM_FIELDS = 16
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {401: "invalid_api_key", 402: "insufficient_quota", 404: "model_not_found", 429: "rate_limit_exceeded"}


def error_answer(exc: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    status = status_for(exc) or 500
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None) or _CODES.get(status)
    if status == 404 and not isinstance(exc, NotFound):
        code = None
    message = (
        message_for(exc)
        if status < 500 or isinstance(exc, DomainError | EventLogFull)
        else (f"internal error ({type(exc).__name__}); see the gateway log")
    )
    headers = headers_for(exc)
    if isinstance(exc, RateLimited | QuotaExceeded):
        code = exc.limit
    return status, orjson.dumps(oa.error_doc(message, kind, param, code)), headers


class OpenAIEdge:
    def __init__(self, plane: OpenAIPlane, dataplane: DataPlane, state: GatewayState, max_request_bytes: int) -> None:
        self.plane = plane
        self.dataplane = dataplane
        self.state = state
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            account, key_id = await authenticate_key(self.state, scope)
            traceparent = header(scope, b"traceparent")
            if method == "GET" and path == "/v1/models":
                await respond(send, 200, orjson.dumps(self.plane.models()))
            elif method == "GET" and path.startswith("/v1/models/"):
                await self._model(send, path.removeprefix("/v1/models/"))
            elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
                doc = oa.parse_json(await read_body(receive, self.max_request_bytes))
                req = oa.parse_chat(doc) if path == "/v1/chat/completions" else oa.parse_completion(doc)
                result = await self.plane.generate(account, key_id, req, traceparent)
                if isinstance(result, Answer):
                    await respond(send, 200, result.body, extra_headers=result.billed.headers())
                else:
                    await _send_stream(result, receive, send)
            elif method == "POST" and path == "/v1/embeddings":
                doc = oa.parse_json(await read_body(receive, self.max_request_bytes))
                answer = await self.plane.embed(account, key_id, oa.parse_embeddings(doc), traceparent)
                await respond(send, 200, answer.body, extra_headers=answer.billed.headers())
            elif method == "POST" and path == "/v1/audio/transcriptions":
                await self._transcribe(scope, receive, send, account, key_id, traceparent)
            else:
                raise NotFound(f"no route {method} {path}")
        except (DomainError, BodyTooLarge, EventLogFull) as exc:
            note(error_type=type(exc).__name__)
            status, body, headers = error_answer(exc)
            if isinstance(exc, Unauthenticated):
                headers = [*headers, (b"www-authenticate", b"Bearer")]
            await respond(send, status, body, extra_headers=headers)
        except Exception as exc:
            note(error_type=type(exc).__name__)
            log.exception("unhandled error on %s %s", method, path)
            status, body, headers = error_answer(exc)
            await respond(send, status, body, extra_headers=headers)

    async def _model(self, send: Send, model_id: str) -> None:
        for entry in self.plane.models()["data"]:
            if entry["id"] == model_id:
                await respond(send, 200, orjson.dumps(entry))
                return
        raise NotFound(f"The model '{model_id}' does not exist")

    async def _transcribe(
        self, scope: Scope, receive: Receive, send: Send, account: Any, key_id: str | None, traceparent: bytes | None
    ) -> None:
        body = await read_body(receive, self.max_request_bytes)
        ctype = header(scope, b"content-type") or b""
        if not ctype.lower().startswith(b"multipart/form-data"):
            raise oa.OpenAIError("send the audio as multipart/form-data with a 'file' field", "file")
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request(scope, replay)
        try:
            form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=self.max_request_bytes)
        except Exception as exc:  # python-multipart's and starlette's parse errors
            raise oa.OpenAIError(f"the multipart form cannot be read: {exc}", "file") from None
        try:
            upload = form.get("file")
            model = form.get("model")
            fmt = form.get("response_format") or "json"
            if not isinstance(model, str) or not model:
                raise oa.OpenAIError("'model' is required", "model")
            if upload is None or isinstance(upload, str):
                raise oa.OpenAIError("'file' is required: the audio, a WAV file", "file")
            if fmt not in ("json", "text", "verbose_json"):
                raise oa.OpenAIError("'response_format' must be json, text or verbose_json", "response_format")
            wav = await upload.read()
        finally:
            await form.close()
        name, _, ref = model.partition("@")
        version = await self.dataplane.resolve(name, ref or None)
        if version.manifest.task != TRANSCRIPTION_TASK:
            raise oa.OpenAIError(
                f"model {model!r} does not transcribe audio (its task is {version.manifest.task})", "model"
            )
        audio = version.inputs[0]
        text_out = next((t.name for t in version.outputs if t.datatype == "BYTES"), None)
        if audio.datatype != "BYTES" or text_out is None:
            raise oa.OpenAIError(f"model {model!r} does not take audio bytes and answer text", "model")
        head = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": audio.name,
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4 + len(wav)},
                    }
                ],
                "outputs": [{"name": text_out}],
            }
        )
        request_body = head + struct.pack("<I", len(wav)) + wav
        answer = await self.dataplane.infer(
            account,
            name,
            ref or None,
            InferRequest(request_body, b"application/octet-stream", str(len(head)).encode(), traceparent),
            key_id=key_id,
        )
        doc = orjson.loads(
            answer.body[: int(dict(answer.headers).get(b"inference-header-content-length", b"0")) or None]
        )
        output = next(o for o in doc["outputs"] if o["name"] == text_out)
        data = output.get("data") or [""]
        text = data[0] if isinstance(data[0], str) else str(data[0])
        headers = list(answer.headers)
        if fmt == "text":
            await respond(send, 200, text.encode(), b"text/plain; charset=utf-8", headers)
        else:
            extra = {"task": "transcribe", "language": "english"} if fmt == "verbose_json" else {}
            await respond(send, 200, orjson.dumps({"text": text, **extra}), extra_headers=headers)


async def _send_stream(stream: Stream, receive: Receive, send: Send) -> None:
    """Relay a stream; when the client hangs up, stop reading it (which bills what was generated). Once the head
    is sent nothing else may answer: a failure ends the body, and whatever happens the stream is let go."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    body = stream.body
    try:
        await send({"type": "http.response.start", "status": 200, "headers": stream.headers})
        async for piece in body:
            if gone.is_set():
                break
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception:  # the client went away while we wrote, or the relay failed: the stream ends here
        log.warning("a streamed answer ended early", exc_info=True)
    finally:
        watcher.cancel()
        await body.aclose()  # type: ignore[attr-defined]
        stream.abandon()
