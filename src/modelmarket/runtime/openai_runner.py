"""The runner's OpenAI-compatible routes, for runtimes that generate text (``TextGenerator``) or embed it
(``Embedder``): ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``.

Token counts come from the model's own tokenizer. Streams are server-sent events; with
``stream_options.continuous_usage_stats`` (which the gateway always asks for) every chunk carries the running
usage, so a stream cut off anywhere is billed for exactly what was generated. The model runs in a worker thread,
one call at a time (a llama.cpp context is not thread-safe); when the caller goes away the thread stops after the
token in progress, so nobody's tokens are generated for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime import openai as oa
from modelmarket.runtime.asgi import Receive, Scope, Send, read_body, respond
from modelmarket.runtime.base import Embedder, GenerationChunk, Runtime, TextGenerator

PATHS = {"/v1/chat/completions": oa.CHAT, "/v1/completions": oa.COMPLETION, "/v1/embeddings": oa.EMBEDDING}
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_END = object()


def serves(runtime: Runtime, kind: str) -> bool:
    return isinstance(runtime, Embedder) if kind == oa.EMBEDDING else isinstance(runtime, TextGenerator)


def _error(send: Send, status: int, exc: Exception) -> Any:
    param = getattr(exc, "param", None)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return respond(send, status, orjson.dumps(oa.error_doc(str(exc), kind, param)))


class OpenAIRoutes:
    def __init__(self, runtime: Runtime, max_request_bytes: int) -> None:
        self.runtime = runtime
        self.max_request_bytes = max_request_bytes
        self.lock = asyncio.Lock()  # one model call at a time

    async def handle(self, kind: str, scope: Scope, receive: Receive, send: Send) -> None:
        if not serves(self.runtime, kind):
            message = f"model {self.runtime.spec.name!r} does not serve {kind} requests"
            await respond(send, 404, orjson.dumps(oa.error_doc(message, "invalid_request_error", "model")))
            return
        try:
            doc = oa.parse_json(await read_body(receive, self.max_request_bytes))
            if kind == oa.EMBEDDING:
                await self._embed(oa.parse_embeddings(doc), send)
                return
            req = oa.parse_chat(doc) if kind == oa.CHAT else oa.parse_completion(doc)
        except InvalidInput as exc:
            await _error(send, 400, exc)
            return
        except Exception as exc:  # the model failed: the caller gets its cause
            await _error(send, 500, exc)
            return
        if req.stream:
            await self._stream(req, receive, send)
        else:
            await self._complete(req, send)

    async def _embed(self, req: oa.EmbeddingRequest, send: Send) -> None:
        assert isinstance(self.runtime, Embedder)
        embedder = self.runtime
        if len(req.inputs) > embedder.max_batch:
            raise oa.OpenAIError(f"'input' holds more than {embedder.max_batch} items for this model", "input")
        async with self.lock:
            result = await asyncio.to_thread(embedder.embed, req.inputs)
        answer = oa.embeddings_answer(req.model, result.vectors, req.encoding_format, result.tokens)
        await respond(send, 200, orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))

    def _chunks(self, req: oa.GenerationRequest) -> Iterator[GenerationChunk]:
        generator = self.runtime
        assert isinstance(generator, TextGenerator)
        if req.kind == oa.CHAT:
            return generator.chat(req.messages, req.params)
        return generator.complete(req.prompt, req.params)

    async def _complete(self, req: oa.GenerationRequest, send: Send) -> None:
        def run() -> tuple[str, GenerationChunk | None]:
            parts, last = [], None
            for piece in self._chunks(req):
                parts.append(piece.text)
                last = piece
            return "".join(parts), last

        try:
            async with self.lock:
                text, last = await asyncio.to_thread(run)
        except InvalidInput as exc:
            await _error(send, 400, exc)
            return
        except Exception as exc:
            await _error(send, 500, exc)
            return
        prompt, completion = (last.prompt_tokens, last.completion_tokens) if last else (0, 0)
        finish = last.finish_reason if last else "stop"
        answer = oa.completion_answer(req, _answer_id(req.kind), text, finish, prompt, completion)
        await respond(send, 200, orjson.dumps(answer))

    async def _stream(self, req: oa.GenerationRequest, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            chunks: Iterator[GenerationChunk] | None = None
            try:  # the runtime refuses a request (a prompt over the context) when called: answer it, then end
                chunks = self._chunks(req)
                for piece in chunks:
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
                    if stop.is_set():
                        break
            except Exception as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                if chunks is not None:
                    with contextlib.suppress(Exception):
                        chunks.close()  # type: ignore[attr-defined]
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        async def watch() -> None:  # the caller hung up: stop generating
            while (await receive())["type"] != "http.disconnect":
                pass
            stop.set()

        answer_id, created = _answer_id(req.kind), int(time.time())
        async with self.lock:
            watcher = asyncio.create_task(watch())
            worker = asyncio.create_task(asyncio.to_thread(produce))
            try:
                await self._send_stream(req, queue, send, answer_id, created)
            finally:
                stop.set()
                watcher.cancel()
                await asyncio.gather(worker, return_exceptions=True)

    async def _send_stream(
        self, req: oa.GenerationRequest, queue: asyncio.Queue[Any], send: Send, answer_id: str, created: int
    ) -> None:
        first = await queue.get()
        if isinstance(first, Exception):  # refused before any token: a plain error answer
            await _error(send, 400 if isinstance(first, InvalidInput) else 500, first)
            await queue.get()
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        item, is_first, last = first, True, None
        while item is not _END:
            if isinstance(item, Exception):  # failed mid-stream: an error event, then the end
                error = oa.error_doc(f"the model failed: {item}", "server_error")
                await send({"type": "http.response.body", "body": oa.sse(error), "more_body": True})
            else:
                last = item
                usage = oa.usage_doc(item.prompt_tokens, item.completion_tokens) if req.continuous_usage else None
                doc = oa.chunk(
                    req.kind,
                    answer_id,
                    req.model,
                    created,
                    item.text,
                    item.finish_reason,
                    first=is_first,
                    usage=usage,
                    with_usage_field=req.include_usage,
                )
                is_first = False
                await send({"type": "http.response.body", "body": oa.sse(doc), "more_body": True})
            item = await queue.get()
        tail = b""
        if req.include_usage and last is not None:
            usage = oa.usage_doc(last.prompt_tokens, last.completion_tokens)
            tail = oa.sse(oa.chunk(req.kind, answer_id, req.model, created, None, None, usage=usage))
        await send({"type": "http.response.body", "body": tail + oa.SSE_DONE, "more_body": False})


def _answer_id(kind: str) -> str:
    return ("chatcmpl-" if kind == oa.CHAT else "cmpl-") + uuid.uuid4().hex[:24]
