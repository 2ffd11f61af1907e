"""The OpenAI-compatible protocol: request parsing with errors that name the parameter, answer and chunk
builders, and server-sent events. Shared by the gateway (which checks a request before any model sees it) and
the runner (which serves ``TextGenerator`` and ``Embedder`` runtimes under the same paths).

Only what the platform serves is accepted: ``n`` is 1, no tools, no logprobs. A parameter the platform does not
know is ignored (as the OpenAI API ignores unknown fields); a known one with a bad value is refused, naming it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import GenerationParams

CHAT = "chat"
COMPLETION = "completion"
EMBEDDING = "embedding"
MAX_MESSAGES = 256
MAX_STOP = 4
MAX_STOP_CHARS = 200
MAX_TOKENS_LIMIT = 32_768
MAX_EMBEDDING_INPUTS = 2048
MAX_TOKEN_ID = 2**31 - 1
ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})
SSE_DONE = b"data: [DONE]\n\n"


class OpenAIError(InvalidInput):
    """A bad request, with the parameter it is about (the OpenAI error object's ``param``)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A checked ``/v1/chat/completions`` or ``/v1/completions`` request."""

    kind: str
    model: str
    params: GenerationParams
    messages: tuple[Mapping[str, str], ...] = ()
    prompt: str = ""
    stream: bool = False
    include_usage: bool = False
    """``stream_options.include_usage``: the client wants a final chunk with the usage."""
    continuous_usage: bool = False
    """``stream_options.continuous_usage_stats``: usage in every chunk (the gateway asks its backends for it)."""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def text(self) -> str:
        """The prompt text (every message's content, one per line), for counting tokens when no model does."""
        if self.kind == COMPLETION:
            return self.prompt
        return "\n".join(m["content"] for m in self.messages)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...] | tuple[tuple[int, ...], ...]
    encoding_format: str = "float"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def text(self) -> str:
        return "\n".join(str(i) for i in self.inputs)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise OpenAIError("the request body must be a JSON object")
    return doc


def model_of(doc: Mapping[str, Any]) -> str:
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("'model' is required: the name of a model (GET /v1/models lists them)", "model")
    if len(model) > 200:
        raise OpenAIError("'model' is longer than 200 characters", "model")
    return model


def _int(doc: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OpenAIError(f"'{name}' must be an integer from {low} to {high}, not {value!r}", name)
    return value


def _number(doc: Mapping[str, Any], name: str, low: float, high: float, *, open_low: bool = False) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value <= high
    ok = ok and (value > low if open_low else value >= low)
    if not ok:
        lower = f"above {low:g}" if open_low else f"from {low:g}"
        raise OpenAIError(f"'{name}' must be a number {lower} to {high:g}, not {value!r}", name)
    return float(value)


def _stop(doc: Mapping[str, Any]) -> tuple[str, ...]:
    stop = doc.get("stop")
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or len(items) > MAX_STOP or not all(isinstance(s, str) and s for s in items):
        raise OpenAIError(f"'stop' must be a string or a list of up to {MAX_STOP} non-empty strings", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in items):
        raise OpenAIError(f"'stop' strings are at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(items)


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(
                    f"{where}[{i}]: only text parts ({{'type': 'text', 'text': ...}}) are supported", where
                )
            texts.append(part["text"])
        return "".join(texts)
    if value is None:
        return ""
    raise OpenAIError(f"{where} must be a string or a list of text parts", where)


def _generation_params(doc: Mapping[str, Any]) -> GenerationParams:
    n = doc.get("n")
    if n is not None and n != 1:
        raise OpenAIError("'n' must be 1: one choice per call", "n")
    for unsupported in ("tools", "functions", "logprobs", "tool_choice"):
        if doc.get(unsupported) not in (None, False, [], "none"):
            raise OpenAIError(f"'{unsupported}' is not supported by this model", unsupported)
    max_tokens = _int(doc, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = _int(doc, "max_tokens", 1, MAX_TOKENS_LIMIT)
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=_number(doc, "temperature", 0, 2),
        top_p=_number(doc, "top_p", 0, 1, open_low=True),
        stop=_stop(doc),
        seed=_int(doc, "seed", -(2**63), 2**63 - 1),
    )


def _stream(doc: Mapping[str, Any]) -> tuple[bool, bool, bool]:
    stream = doc.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise OpenAIError("'stream' must be true or false", "stream")
    options = doc.get("stream_options")
    if options is None:
        return stream, False, False
    if not isinstance(options, dict):
        raise OpenAIError("'stream_options' must be an object", "stream_options")
    if not stream:
        raise OpenAIError("'stream_options' is only allowed with 'stream': true", "stream_options")
    include = options.get("include_usage", False)
    continuous = options.get("continuous_usage_stats", False)
    if not isinstance(include, bool) or not isinstance(continuous, bool):
        raise OpenAIError("'stream_options' flags must be true or false", "stream_options")
    return stream, include, continuous


def parse_chat(doc: dict[str, Any]) -> GenerationRequest:
    model = model_of(doc)
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("'messages' must be a non-empty list of {'role', 'content'} objects", "messages")
    if len(messages) > MAX_MESSAGES:
        raise OpenAIError(f"'messages' holds more than {MAX_MESSAGES} messages", "messages")
    checked = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise OpenAIError(f"{where} must be an object with 'role' and 'content'", "messages")
        role = message.get("role")
        if role not in ROLES:
            raise OpenAIError(f"{where}.role must be one of {', '.join(sorted(ROLES))}, not {role!r}", "messages")
        checked.append({"role": str(role), "content": _content(message.get("content"), f"{where}.content")})
    stream, include, continuous = _stream(doc)
    return GenerationRequest(
        CHAT,
        model,
        _generation_params(doc),
        messages=tuple(checked),
        stream=stream,
        include_usage=include,
        continuous_usage=continuous,
        raw=doc,
    )


def parse_completion(doc: dict[str, Any]) -> GenerationRequest:
    model = model_of(doc)
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError("'prompt' must be a string (one prompt per call)", "prompt")
    for unsupported in ("echo", "suffix"):
        if doc.get(unsupported):
            raise OpenAIError(f"'{unsupported}' is not supported", unsupported)
    if doc.get("best_of") not in (None, 1):
        raise OpenAIError("'best_of' must be 1: one completion per call", "best_of")
    stream, include, continuous = _stream(doc)
    return GenerationRequest(
        COMPLETION,
        model,
        _generation_params(doc),
        prompt=prompt,
        stream=stream,
        include_usage=include,
        continuous_usage=continuous,
        raw=doc,
    )


def parse_embeddings(doc: dict[str, Any]) -> EmbeddingRequest:
    model = model_of(doc)
    raw = doc.get("input")
    fmt = doc.get("encoding_format", "float") or "float"
    if fmt not in ("float", "base64"):
        raise OpenAIError(f"'encoding_format' must be 'float' or 'base64', not {fmt!r}", "encoding_format")
    if doc.get("dimensions") is not None:
        raise OpenAIError("'dimensions' is not supported: the model's own dimensions are returned", "dimensions")
    inputs: tuple[str, ...] | tuple[tuple[int, ...], ...]
    if isinstance(raw, str):
        inputs = (raw,)
    elif isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw):
        inputs = tuple(raw)
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        inputs = (tuple(raw),)
    elif isinstance(raw, list) and raw and all(isinstance(s, list) and s and all(map(_is_token, s)) for s in raw):
        inputs = tuple(tuple(s) for s in raw)
    else:
        raise OpenAIError(
            "'input' must be a string, a list of strings, a list of token ids or a list of lists of token ids"
            " (none empty)",
            "input",
        )
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise OpenAIError(f"'input' holds more than {MAX_EMBEDDING_INPUTS} items", "input")
    if any(isinstance(i, str) and not i for i in inputs):
        raise OpenAIError("'input' must not contain empty strings", "input")
    return EmbeddingRequest(model, inputs, fmt, raw=doc)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


# -- answers ----------------------------------------------------------------------------------------------------


def usage_doc(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_answer(
    req: GenerationRequest, answer_id: str, text: str, finish: str | None, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    created = int(time.time())
    if req.kind == CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish or "stop",
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish or "stop"}
        obj = "text_completion"
    return {
        "id": answer_id,
        "object": obj,
        "created": created,
        "model": req.model,
        "choices": [choice],
        "usage": usage_doc(prompt_tokens, completion_tokens),
    }


def chunk(
    kind: str,
    answer_id: str,
    model: str,
    created: int,
    text: str | None,
    finish: str | None,
    *,
    first: bool = False,
    usage: dict[str, int] | None = None,
    with_usage_field: bool = False,
) -> dict[str, Any]:
    """One streamed chunk. ``text`` None with ``usage`` gives the final usage chunk (no choices)."""
    doc: dict[str, Any] = {
        "id": answer_id,
        "object": "chat.completion.chunk" if kind == CHAT else "text_completion",
        "created": created,
        "model": model,
    }
    if text is None and finish is None:
        doc["choices"] = []
    elif kind == CHAT:
        delta: dict[str, Any] = {"content": text or ""} if text or not finish else {}
        if first:
            delta["role"] = "assistant"
        doc["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    else:
        doc["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
    if usage is not None or with_usage_field:
        doc["usage"] = usage
    return doc


def sse(doc: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def embeddings_answer(model: str, vectors: Any, encoding_format: str, tokens: int) -> dict[str, Any]:
    matrix = np.asarray(vectors, dtype=np.float32)
    data = []
    for i, row in enumerate(matrix):
        if encoding_format == "base64":
            value: Any = base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def error_doc(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# -- server-sent events --------------------------------------------------------------------------------------------


class SseParser:
    """Incremental reader of an event stream: feed bytes, get the ``data`` of each complete event.

    Lines are split on LF (a CR before it is dropped); an event ends at a blank line; ``data:`` lines of one event
    are joined with LF; comments and other fields are ignored. ``max_event_bytes`` bounds one event."""

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._max = max_event_bytes

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._max:
                    raise ValueError(f"an event-stream line is longer than {self._max} bytes")
                return
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
            if not line:
                if self._data:
                    event, self._data = b"\n".join(self._data), []
                    yield event
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
                if sum(map(len, self._data)) > self._max:
                    raise ValueError(f"an event is larger than {self._max} bytes")


def count_text_tokens(texts: Sequence[str]) -> int:
    """Tokens by the platform's own text counter (``metering.units``): used when no model's tokenizer reports."""
    from modelmarket.metering.units import count_tokens

    return sum(max(1, count_tokens(t)) for t in texts)
