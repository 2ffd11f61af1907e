"""The OpenAI-compatible data plane: chat and text completions (plain and streamed), embeddings, and the model
list, over the same catalogue, keys, limits and meter as the Open Inference Protocol.

One call: the model name resolves to a route (ordered targets with fallbacks) or to one catalogue version; each
attempt is admitted by the limiter (estimated at the prompt's tokens plus ``max_tokens``), sent to the version's
backend (its runner, or an upstream provider), and billed from the tokens the backend reports (recounted with
the platform's own counter when it reports none). A 5xx, a timeout, a 429 or an unreachable backend moves on to
the next attempt (retries with backoff, then the next target, then the fallbacks); anything else is the
caller's answer. A failed call appends nothing.

Streams: the backend is asked for the running usage in every chunk; chunks are relayed as they come, rewritten
to the caller's model name and answer id. At the end the usage event is committed, then (when the caller asked
with ``stream_options.include_usage``) the usage chunk is sent, then ``[DONE]``. A caller who hangs up stops the
backend, and the call is billed for the tokens generated until then, and nothing more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelmarket.accounts import Account
from modelmarket.core.errors import DomainError, InvalidInput, NotFound
from modelmarket.gateway.attempts import Attempt as _Attempt
from modelmarket.gateway.attempts import ModelFailed, RouterLike, UpstreamBusy, run_attempts
from modelmarket.gateway.backends import UPSTREAM_OPENAI, Backend, Backends
from modelmarket.gateway.dataplane import DataPlane, trace_id
from modelmarket.gateway.economy import Priced, call_figures
from modelmarket.metering.units import UnitKind
from modelmarket.observability import note
from modelmarket.observability.tracing import TRACEPARENT, client_call
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.runtime import openai as oa
from modelmarket.runtime.base import Embedder, TextGenerator
from modelmarket.runtime.plugins import load_runtime_class

DEFAULT_MAX_TOKENS = 256
"""The completion length of a generation without ``max_tokens``: reserved against limits, and sent to the backend
as its ``max_tokens``, so a call never generates more than it reserved."""
CHAT_TEMPLATE_TOKENS = 64
"""What the reservation adds to a prompt for the tokens a chat template wraps it in."""
TRANSCRIPTION = "transcription"
TRANSCRIPTION_TASK = "automatic-speech-recognition"
_PATHS = {
    oa.CHAT: "/chat/completions",
    oa.COMPLETION: "/completions",
    oa.EMBEDDING: "/embeddings",
    TRANSCRIPTION: "/audio/transcriptions",
}
_JSON = (b"content-type", b"application/json")
_OPERATIONS = {oa.CHAT: "chat", oa.COMPLETION: "text_completion", oa.EMBEDDING: "embeddings"}
"""The GenAI semantic conventions' ``gen_ai.operation.name`` of each kind of call."""


@dataclass(frozen=True, slots=True)
class Billed:
    """What the caller's answer headers say about the call."""

    request_id: str
    route: str
    iu: str
    """Exact text (``0.057``), as ``gateway.economy.call_figures`` gives it."""
    cost: str
    currency: str

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-request-id", self.request_id.encode()),
            (b"x-modelmarket-route", self.route.encode()),
            (b"x-modelmarket-iu", self.iu.encode()),
            (b"x-modelmarket-cost", f"{self.cost} {self.currency}".encode()),
        ]


@dataclass(slots=True)
class Answer:
    body: bytes
    billed: Billed


@dataclass(slots=True)
class Stream:
    """A streamed answer: send ``headers`` with status 200, then every piece of ``body``; closing ``body`` early
    (the caller hung up) bills what was generated so far."""

    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes]
    abandon: Callable[[], None] = lambda: None
    """Call once the stream is done with, read or not: a stream never read releases its backend and limits."""


@dataclass(slots=True)
class _Usage:
    prompt: int = 0
    completion: int = 0
    reported: bool = False
    texts: list[str] = field(default_factory=list)


def capability(runtime: str) -> frozenset[str]:
    """The OpenAI kinds (chat, completion, embedding) a runtime serves."""
    if runtime == UPSTREAM_OPENAI:
        return frozenset({oa.CHAT, oa.COMPLETION, oa.EMBEDDING})
    try:
        cls = load_runtime_class(runtime)
    except Exception:  # an unknown or broken plug-in serves nothing here
        return frozenset()
    kinds: set[str] = set()
    if issubclass(cls, TextGenerator):
        kinds |= {oa.CHAT, oa.COMPLETION}
    if issubclass(cls, Embedder):
        kinds.add(oa.EMBEDDING)
    return frozenset(kinds)


class OpenAIPlane:
    def __init__(
        self,
        dataplane: DataPlane,
        backends: Backends,
        router: Callable[[], RouterLike | None] = lambda: None,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.dp = dataplane
        self.backends = backends
        self.router = router
        self.sleep = sleep
        self._kinds: dict[str, frozenset[str]] = {}

    # -- the model list -------------------------------------------------------------------------------------
    def kinds(self, version: VersionRecord) -> frozenset[str]:
        """The OpenAI endpoints the version answers: by its runtime's capabilities, and transcriptions for a
        speech-to-text model (served through OIP)."""
        runtime = version.manifest.runtime
        found = self._kinds.get(runtime)
        if found is None:
            found = self._kinds[runtime] = capability(runtime)
        if version.manifest.task == TRANSCRIPTION_TASK and version.manifest.kind != "pipeline":
            return found | {TRANSCRIPTION}
        return found

    def models(self) -> dict[str, Any]:
        catalogue = self.dp.catalogue.catalogue
        data = []
        for name in catalogue.names():
            version = catalogue.resolve(name)
            kinds = self.kinds(version)
            if not kinds:
                continue
            pricing = version.manifest.pricing
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": _epoch(version.created_at),
                    "owned_by": version.manifest.provider,
                    "version": version.version,
                    "endpoints": sorted(_PATHS[k] for k in kinds),
                    "pricing": pricing.to_json(),
                }
            )
        router = self.router()
        for name in router.table.names() if router is not None else []:
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "route", "route": True})
        return {"object": "list", "data": data}

    # -- calls ----------------------------------------------------------------------------------------------
    async def _version(self, ref: str, kind: str) -> VersionRecord:
        name, _, version_ref = ref.partition("@")
        try:
            version = await self.dp.resolve(name, version_ref or None)
        except NotFound:
            raise NotFound(f"The model '{ref}' does not exist (GET /v1/models lists the models)") from None
        if kind not in self.kinds(version):
            raise InvalidInput(
                f"model {ref!r} does not serve {_PATHS[kind].lstrip('/')} (its runtime is {version.manifest.runtime})"
            )
        unit = version.manifest.pricing.unit
        if unit not in (UnitKind.TOKENS_1K, UnitKind.REQUEST):
            raise InvalidInput(f"model {ref!r} is priced per {unit.value}: call it over /v2 (OIP)")
        return version

    async def _with_attempts(self, model: str, key_id: str | None, kind: str, call: Callable[[_Attempt], Any]) -> Any:
        return await run_attempts(self.router(), model, key_id, lambda ref: self._version(ref, kind), call, self.sleep)

    async def _redacted(self, attempt: _Attempt, key_id: str | None, raw: dict[str, Any]) -> Mapping[str, Any]:
        """The request as the attempt's backend may see it: its text redacted of the model's and the key's
        entities (``gateway/privacy.py``); counted and estimated as the caller sent it."""
        privacy = self.dp.privacy
        return raw if privacy is None else await privacy.redact_openai(attempt.version, key_id, raw)

    def _capture(self, account: Account, attempt: _Attempt, call_id: str, text_in: str, text_out: str) -> None:
        if self.dp.privacy is not None:  # kept only for an account that opted in, redacted of every entity
            self.dp.privacy.capture(account.id, attempt.version, call_id, text_in, text_out)

    def _admit(self, account: Account, key_id: str | None, attempt: _Attempt, units: int) -> tuple[Any, Any]:
        return self.dp.admit(account, key_id, attempt.version, units, attempt.first)

    async def _bill(
        self,
        account: Account,
        key_id: str | None,
        attempt: _Attempt,
        usage: _Usage,
        started: float,
        ticket: Any,
        priced: Priced | None,
        traceparent: bytes | None,
        event_id: str | None = None,
    ) -> Billed:
        version = attempt.version
        pricing = version.manifest.pricing
        if pricing.unit is UnitKind.TOKENS_1K:
            units, out = max(1, usage.prompt + usage.completion), usage.completion
        else:
            units, out = 1, 0
        event_id = event_id or self.dp.request_ids.next()
        event = self.dp.usage_event(
            event_id, account, version, units, started, trace_id(traceparent), priced, quantity_out=out
        )
        await asyncio.shield(self.dp.writer.append(event.id, event.encode()))
        self.dp.settle(ticket, units)
        iu, cost = call_figures(version, units, out, priced)
        note(
            model=version.model_name,
            version=version.version,
            iu=iu,
            cost=cost,
            currency=pricing.currency,
            tokens_in=usage.prompt,
            tokens_out=usage.completion,
            request_id=event_id,
        )
        return Billed(event_id, attempt.route, iu, cost, pricing.currency)

    async def generate(
        self,
        account: Account,
        key_id: str | None,
        req: oa.GenerationRequest,
        traceparent: bytes | None = None,
    ) -> Answer | Stream:
        max_tokens = req.params.max_tokens or DEFAULT_MAX_TOKENS
        estimate = prompt_bound(req.text()) + max_tokens
        note(operation=_OPERATIONS[req.kind])

        async def once(attempt: _Attempt) -> Answer | Stream:
            units = estimate if attempt.version.manifest.pricing.unit is UnitKind.TOKENS_1K else 1
            ticket, priced = self._admit(account, key_id, attempt, units)
            started = time.perf_counter()
            try:
                backend = await self.backends.backend(attempt.version)
                raw = await self._redacted(attempt, key_id, req.raw)
                body = _backend_body(raw, backend, req.stream, max_tokens)
                if req.stream:
                    return await self._open_stream(
                        account, key_id, req, attempt, backend, body, ticket, priced, started, traceparent
                    )
                async with attempt.backend_bound():
                    answer = await _call(backend, attempt.version, _PATHS[req.kind], body)
                if answer.status != 200:
                    raise _backend_error(answer.status, answer.body, answer.headers, attempt.version, backend)
                doc = _json_answer(answer.body, backend)
                usage = _usage_of(doc, req, [_answer_text(doc)])
                billed = await self._bill(account, key_id, attempt, usage, started, ticket, priced, traceparent)
            except BaseException:
                self.dp.release(ticket)
                raise
            self._capture(account, attempt, billed.request_id, req.text(), _answer_text(doc))
            doc["id"] = ("chatcmpl-" if req.kind == oa.CHAT else "cmpl-") + billed.request_id
            doc["model"] = req.model
            doc["usage"] = oa.usage_doc(usage.prompt, usage.completion)
            return Answer(orjson.dumps(doc), billed)

        result: Answer | Stream = await self._with_attempts(req.model, key_id, req.kind, once)
        return result

    async def _open_stream(
        self,
        account: Account,
        key_id: str | None,
        req: oa.GenerationRequest,
        attempt: _Attempt,
        backend: Backend,
        body: bytes,
        ticket: Any,
        priced: Priced | None,
        started: float,
        traceparent: bytes | None,
    ) -> Stream:
        async with attempt.backend_bound():
            answer = await _call(backend, attempt.version, _PATHS[req.kind], body, stream=True)
        if answer.status != 200:
            try:
                async with attempt.backend_bound():
                    raw = await answer.read()
            except (DomainError, TimeoutError):
                raw = b""
            finally:
                answer.close()
            raise _backend_error(answer.status, raw, answer.headers, attempt.version, backend)
        request_id = self.dp.request_ids.next()
        answer_id = ("chatcmpl-" if req.kind == oa.CHAT else "cmpl-") + request_id
        relayed = False

        async def relay() -> AsyncIterator[bytes]:
            nonlocal relayed
            relayed = True
            usage = _Usage()
            billed: Billed | None = None
            parser = oa.SseParser()
            failure: str | None = None
            chunks = answer.chunks()
            try:
                async for piece in chunks:
                    done = False
                    for data in parser.feed(piece):
                        if data.strip() == b"[DONE]":
                            done = True
                            break
                        out = _relay_chunk(data, req, answer_id, usage)
                        if out is not None:
                            yield out
                    if done:
                        break
            except (DomainError, ValueError) as exc:  # the backend broke off midway: end the stream cleanly
                failure = f"the model's stream broke off: {exc}"
            finally:
                await chunks.aclose()
                answer.close()
                if usage.reported or usage.texts:  # tokens were generated (and sent): they are billed
                    if not usage.reported:
                        usage.prompt = oa.count_text_tokens([req.text()])
                        usage.completion = oa.count_text_tokens(usage.texts) if "".join(usage.texts) else 0
                    try:
                        billed = await self._bill(
                            account, key_id, attempt, usage, started, ticket, priced, traceparent, request_id
                        )
                        self._capture(account, attempt, request_id, req.text(), "".join(usage.texts))
                    except BaseException as exc:
                        self.dp.release(ticket)
                        if not isinstance(exc, Exception):
                            raise
                        failure = f"the call could not be billed, so it is not answered further: {exc}"
                else:  # not a single token: nothing to bill
                    self.dp.release(ticket)
            if failure is not None:
                yield oa.sse(oa.error_doc(failure, "server_error"))
            elif billed is not None and req.include_usage:
                tail = oa.chunk(
                    req.kind,
                    answer_id,
                    req.model,
                    int(time.time()),
                    None,
                    None,
                    usage=oa.usage_doc(usage.prompt, usage.completion),
                )
                tail["x_modelmarket"] = {
                    "request_id": billed.request_id,
                    "route": billed.route,
                    "iu": billed.iu,
                    "cost": billed.cost,
                    "currency": billed.currency,
                }
                yield oa.sse(tail)
            yield oa.SSE_DONE

        def abandon() -> None:
            """The stream was never read (the client went away, or sending the head failed): release all."""
            if not relayed:
                answer.close()
                self.dp.release(ticket)

        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            (b"x-modelmarket-route", attempt.route.encode()),
            (b"x-request-id", request_id.encode()),
        ]
        return Stream(headers, relay(), abandon)

    async def embed(
        self, account: Account, key_id: str | None, req: oa.EmbeddingRequest, traceparent: bytes | None = None
    ) -> Answer:
        estimate = sum(len(i) if isinstance(i, tuple) else max(1, oa.count_text_tokens([i])) for i in req.inputs)
        note(operation=_OPERATIONS[oa.EMBEDDING])

        async def once(attempt: _Attempt) -> Answer:
            units = estimate if attempt.version.manifest.pricing.unit is UnitKind.TOKENS_1K else 1
            ticket, priced = self._admit(account, key_id, attempt, units)
            started = time.perf_counter()
            try:
                backend = await self.backends.backend(attempt.version)
                body = _backend_body(await self._redacted(attempt, key_id, req.raw), backend, False)
                async with attempt.backend_bound():
                    answer = await _call(backend, attempt.version, "/embeddings", body)
                if answer.status != 200:
                    raise _backend_error(answer.status, answer.body, answer.headers, attempt.version, backend)
                doc = _json_answer(answer.body, backend)
                reported = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
                tokens = reported.get("prompt_tokens") if reported else None
                prompt = tokens if isinstance(tokens, int) and _count(tokens) else None
                usage = _Usage(prompt=estimate if prompt is None else prompt, reported=prompt is not None)
                billed = await self._bill(account, key_id, attempt, usage, started, ticket, priced, traceparent)
            except BaseException:
                self.dp.release(ticket)
                raise
            self._capture(account, attempt, billed.request_id, req.text(), f"<{len(req.inputs)} embedding(s)>")
            doc["model"] = req.model
            doc["usage"] = {"prompt_tokens": usage.prompt, "total_tokens": usage.prompt}
            return Answer(orjson.dumps(doc), billed)

        result: Answer = await self._with_attempts(req.model, key_id, oa.EMBEDDING, once)
        return result


# -- helpers ------------------------------------------------------------------------------------------------------


def _epoch(created_at: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _headers(backend: Backend) -> list[tuple[bytes, bytes]]:
    return [_JSON, *backend.headers]


async def _call(backend: Backend, version: VersionRecord, path: str, body: bytes, stream: bool = False) -> Any:
    """POST ``body`` to the backend's ``path`` (answered whole, or its head when ``stream``), inside the call's
    CLIENT span when the request is traced (``observability/tracing.py``; a stream's span ends at its head)."""
    headers = _headers(backend)
    call = client_call(version.model_name, version.version, "/v1" + path, backend.upstream)
    if call is not None and call.propagate:
        headers.append((TRACEPARENT, call.traceparent))
    send = backend.pool.stream if stream else backend.pool.request
    try:
        answer = await send("POST", backend.prefix + path, body, headers)
    except BaseException as exc:
        if call is not None:
            call.end(None, error=type(exc).__name__)
        raise
    if call is not None:
        call.end(answer.status, answer.headers)
    return answer


FORWARDED = frozenset(
    {
        "messages",
        "prompt",
        "input",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "stream",
        "n",
        "encoding_format",
    }
)
"""The request fields a backend receives: those the platform checked (anything else a caller sends, an
upstream's premium tier or its storage of the conversation, never reaches a provider the operator pays)."""


def _backend_body(raw: Mapping[str, Any], backend: Backend, stream: bool, max_tokens: int | None = None) -> bytes:
    body = {k: v for k, v in raw.items() if k in FORWARDED}
    body["model"] = backend.model
    if max_tokens is not None:  # what the limiter reserved is what the model may generate
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = max_tokens
    if stream:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return orjson.dumps(body)


def prompt_bound(text: str) -> int:
    """A generous estimate of a prompt's tokens by any tokenizer, for the limiter's reservation: the platform's
    word count or a third of its UTF-8 bytes, whichever is more, plus ``CHAT_TEMPLATE_TOKENS`` for the chat
    template's own tokens."""
    return max(oa.count_text_tokens([text]), len(text.encode("utf-8")) // 3) + CHAT_TEMPLATE_TOKENS


def _json_answer(body: bytes, backend: Backend) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise ModelFailed(f"{backend.describe()} answered something that is not a JSON object")
    return doc


def _answer_text(doc: Mapping[str, Any]) -> str:
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return str(message["content"])
    return str(first.get("text") or "")


def _usage_of(doc: Mapping[str, Any], req: oa.GenerationRequest, texts: list[str]) -> _Usage:
    reported = doc.get("usage")
    if (
        isinstance(reported, dict)
        and _count(reported.get("prompt_tokens"))
        and _count(reported.get("completion_tokens"))
    ):
        return _Usage(int(reported["prompt_tokens"]), int(reported["completion_tokens"]), True)
    completion = oa.count_text_tokens(texts) if "".join(texts) else 0
    return _Usage(oa.count_text_tokens([req.text()]), completion, False)


def _relay_chunk(data: bytes, req: oa.GenerationRequest, answer_id: str, usage: _Usage) -> bytes | None:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if "error" in doc:  # failed midway: pass the error on; what was generated is billed
        return oa.sse({"error": doc["error"]})
    reported = doc.get("usage")
    if (
        isinstance(reported, dict)
        and _count(reported.get("prompt_tokens"))
        and _count(reported.get("completion_tokens"))
    ):
        usage.prompt, usage.completion, usage.reported = reported["prompt_tokens"], reported["completion_tokens"], True
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        return None  # the backend's own usage chunk: ours follows once the call is billed
    for choice in choices:
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str) and text:
                usage.texts.append(text)
    doc["id"] = answer_id
    doc["model"] = req.model
    if req.include_usage:
        doc["usage"] = None
    else:
        doc.pop("usage", None)
    return oa.sse(doc)


def _backend_error(
    status: int, body: bytes, headers: Mapping[bytes, bytes], version: VersionRecord, backend: Backend
) -> Exception:
    """The error a backend's non-200 answer becomes. Its message is passed on with the platform's credentials
    cut out (an upstream may quote the key it was sent); a 4xx keeps the parameter it names."""
    message, param = _error_message(body)
    message = backend.redact(message)
    where = f"model {version.ref} ({backend.describe()})"
    if status == 429:
        retry = headers.get(b"retry-after")
        return UpstreamBusy(f"{where} is busy (429): {message}", retry.decode("latin-1") if retry else None)
    if status in (401, 403) and backend.upstream:
        return ModelFailed(f"{where} refused the platform's credentials ({status}); an operator must check them")
    if status == 404 and backend.upstream:
        return ModelFailed(f"{where} does not know model {backend.model!r} (404): {message}")
    if 400 <= status < 500:
        return oa.OpenAIError(f"{where}: {message}", param)
    return ModelFailed(f"{where} failed ({status}): {message}")


def _error_message(body: bytes) -> tuple[str, str | None]:
    """The message of an OpenAI error object (or of ``{"error": "..."}``) and the parameter it names."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace") or "no message", None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            param = error.get("param")
            return str(error["message"])[:2000], param[:100] if isinstance(param, str) else None
        if isinstance(error, str):
            return error[:2000], None
    return body[:200].decode("utf-8", "replace"), None
