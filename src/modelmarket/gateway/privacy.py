"""The gateway's side of privacy: personal data replaced in a call's text before its model (a runner, or an
upstream provider) sees it, and the calls of accounts that opted in kept, redacted of every entity.

What is redacted: the entities of the version's manifest (``redact:``) and of the caller's key policy, together
(for a pipeline's step, the step model's and the key's: ``pipeline_steps.py`` calls ``redact_oip`` as a direct
call does). Where: each element of an OIP ``BYTES`` input, which must then be UTF-8 text without NUL characters
or a recognised audio or image file (``MEDIA_SIGNATURES``, passed on as it is); anything else is refused, naming
the input and element, since text in another encoding could not be read for what it holds. The OpenAI requests'
chat message contents (strings and text parts), a completion's prompt, and embedding inputs given as strings
(token ids cannot be read, and pass unchanged), which must hold no NUL character. When something was replaced, the
OIP request is re-encoded (binary tensor extension) and sent instead of the caller's bytes.

Bounds: at most ``max_chars`` characters of text per call (more: 413) and ``timeout_s`` of work (more: 400, the
call never reaches the model); text over ``OFFLOAD_CHARS`` in all, or in more than ``INLINE_TEXTS_MAX`` elements
or strings, is redacted in a worker thread. IU are counted on the
request as the caller sent it, before redaction (the limiter admits it on that count), except where the model
reports its own token counts (OpenAI-compatible backends, token-priced runners): those count what it saw.

Policies are read from memory (``PrivacyPolicies``, loaded with the key snapshot): no database read per call.
Captured calls go through a bounded queue to a background task that redacts and stores them off the event loop;
when the queue is full a captured call is dropped (counted in ``dropped``), never the call itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import orjson

from modelmarket.core.errors import InvalidInput
from modelmarket.core.pii import PII_ENTITIES
from modelmarket.core.tensors import Tensor
from modelmarket.privacy import CallToKeep, PrivacyPolicies, Redacted, Redactor, RedactorCache
from modelmarket.privacy.redaction import OVERLAP_CHARS
from modelmarket.registry.catalogue import Catalogue, VersionRecord
from modelmarket.runtime import oip
from modelmarket.runtime.asgi import BodyTooLarge

log = logging.getLogger(__name__)

OFFLOAD_CHARS = 1024
"""Text longer than this (in one call) is redacted in a worker thread, never on the event loop."""
INLINE_TEXTS_MAX = 4
"""A call with more texts than this (elements, messages) is redacted in a worker thread, however short they are:
each costs a pass of the analyzer."""
MEDIA_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"II*\x00"),  # TIFF
    (0, b"MM\x00*"),
    (0, b"fLaC"),
    (0, b"OggS"),
    (0, b"ID3"),  # MP3 with a tag
    (0, b"\x1a\x45\xdf\xa3"),  # WebM, Matroska
    (4, b"ftyp"),  # MP4, M4A, HEIC, AVIF
)
"""(offset, bytes) a recognised audio or image file holds; with ``_riff_media`` (WAV, WebP) and BMP. Such a
``BYTES`` element is passed on as it is when a policy applies (no text of it is read)."""
CAPTURE_QUEUE_MAX = 1024
"""Captured calls waiting to be stored; beyond it a captured call is dropped (the call itself is served)."""
CAPTURE_BATCH_MAX = 64
"""Captured calls stored in one transaction."""
CAPTURE_STOP_S = 10.0
"""How long stopping the gateway waits to store the captured calls still queued."""


class PrivacyStore(Protocol):
    """The privacy service as the gateway uses it (``privacy.PrivacyService``)."""

    redactors: RedactorCache
    capture_max_chars: int

    def policies(self) -> PrivacyPolicies: ...

    def keep(self, calls: Sequence[CallToKeep]) -> int: ...


@dataclass(frozen=True, slots=True)
class RedactedRequest:
    """An OIP request after redaction: the body to send, its framing, and the decoded request it holds."""

    body: bytes
    content_type: bytes
    header_length: bytes
    decoded: oip.InferRequest
    counts: Mapping[str, int]


class PrivacyGuard:
    def __init__(self, store: PrivacyStore, *, max_chars: int, timeout_s: float, now: Callable[[], datetime]) -> None:
        self.store = store
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self.now = now
        self.policies = PrivacyPolicies()
        self.loaded = False
        """Whether ``load`` has succeeded once (until then no call may be served: policies unknown)."""
        self.dropped = 0
        """Captured calls dropped because the queue was full."""
        self._queue: asyncio.Queue[CallToKeep] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- policies ---------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the key policies and capture opt-ins (blocking: called with the key snapshot, in a thread). On
        failure the policies in force stay as they were."""
        self.policies = self.store.policies()
        self.loaded = True

    def entities(self, version: VersionRecord, key_id: str | None) -> frozenset[str]:
        """What a call of ``version`` with key ``key_id`` has redacted: the model's ``redact:`` and the key's."""
        declared = version.manifest.redact
        by_key = self.policies.for_key(key_id)
        if not declared:
            return by_key
        return by_key.union(declared)

    async def _redactor(self, entities: frozenset[str]) -> Redactor:
        found = self.store.redactors.peek(entities)
        if found is None:  # the first use of this set: building it imports Presidio (seconds), off the loop
            found = await asyncio.to_thread(self.store.redactors.get, entities)
        return found

    async def redact_texts(self, entities: frozenset[str], texts: Sequence[str]) -> list[Redacted]:
        """Each text redacted of ``entities``, under the call's bounds (``max_chars`` in all, ``timeout_s``)."""
        total = sum(len(t) for t in texts)
        if total > self.max_chars:
            raise BodyTooLarge(
                f"the call holds {total:,} characters of text to redact, more than the limit of {self.max_chars:,} "
                "(MODELMARKET_REDACT_MAX_CHARS); send less text per call"
            )
        redactor = await self._redactor(entities)
        deadline = time.monotonic() + self.timeout_s

        def run() -> list[Redacted]:
            return [redactor.redact(t, deadline) for t in texts]

        if total > OFFLOAD_CHARS or len(texts) > INLINE_TEXTS_MAX:
            return await asyncio.to_thread(run)
        return run()

    # -- OIP ------------------------------------------------------------------------------------------------------

    async def redact_oip(
        self, version: VersionRecord, key_id: str | None, decoded: oip.InferRequest | None
    ) -> RedactedRequest | None:
        """The request to send instead of the caller's, or None when nothing is to be (or was) replaced."""
        entities = self.entities(version, key_id)
        if not entities or decoded is None:
            return None
        places, texts = _bytes_texts(decoded.inputs, version)
        if not texts:
            return None
        done = await self.redact_texts(entities, texts)
        if not any(d.changed for d in done):
            return None
        inputs = _replaced(decoded.inputs, places, done)
        redacted = oip.InferRequest(decoded.id, inputs, decoded.parameters, decoded.outputs)
        body, header_length = encode_request(redacted)
        counts: dict[str, int] = {}
        for d in done:
            for entity, n in d.counts.items():
                counts[entity] = counts.get(entity, 0) + n
        return RedactedRequest(body, b"application/octet-stream", str(header_length).encode(), redacted, counts)

    # -- OpenAI ---------------------------------------------------------------------------------------------------

    async def redact_openai(
        self, version: VersionRecord, key_id: str | None, raw: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """The OpenAI request body with its text redacted (the same object when nothing is to be replaced)."""
        entities = self.entities(version, key_id)
        if not entities:
            return raw
        texts = _openai_texts(raw)
        if not texts:
            return raw
        if any("\x00" in t for t in texts):
            raise InvalidInput(
                f"the request's text holds a NUL character (U+0000): model {version.model_name!r} has personal "
                "data redacted from its text, which must be free of NUL characters"
            )
        done = await self.redact_texts(entities, texts)
        if not any(d.changed for d in done):
            return raw
        return _openai_replaced(raw, iter([d.text for d in done]))

    # -- capture --------------------------------------------------------------------------------------------------

    def capture(self, account_id: str, version: VersionRecord, call_id: str, input_text: str, output_text: str) -> None:
        """Queue a served call of an account that opted in (no-op otherwise); it is redacted and stored later."""
        if account_id not in self.policies.capture or self._queue is None:
            return
        bound = self.store.capture_max_chars + OVERLAP_CHARS + 1  # enough to redact and cut it exactly
        item = CallToKeep(
            call_id,
            account_id,
            version.model_name,
            version.version,
            self.now().isoformat(),
            input_text[:bound],
            output_text[:bound],
        )
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("the capture queue is full: a captured call of account %s was not kept", account_id)

    def capture_oip(
        self,
        account_id: str,
        version: VersionRecord,
        call_id: str,
        decoded: oip.InferRequest | None,
        answer: bytes,
        header_length: bytes | None,
    ) -> None:
        if account_id not in self.policies.capture or decoded is None:
            return
        self.capture(
            account_id, version, call_id, describe_inputs(decoded.inputs), describe_answer(answer, header_length)
        )

    async def _store_captures(self, queue: asyncio.Queue[CallToKeep]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < CAPTURE_BATCH_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            await self._keep(batch)

    async def _keep(self, batch: list[CallToKeep]) -> None:
        try:
            await asyncio.to_thread(self.store.keep, batch)
        except Exception as exc:  # never log the error's text: a database error quotes the values it was given
            log.error("storing %d captured calls failed (%s); they are not kept", len(batch), type(exc).__name__)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self, catalogue: Catalogue | None = None) -> None:
        self._queue = asyncio.Queue(maxsize=CAPTURE_QUEUE_MAX)
        self._tasks.append(asyncio.create_task(self._store_captures(self._queue)))
        wanted = self._known_sets(catalogue)
        if wanted:  # build the redactors now, in the background, rather than in the first call that needs one
            self._tasks.append(asyncio.create_task(self._warm(wanted)))

    def _known_sets(self, catalogue: Catalogue | None) -> set[frozenset[str]]:
        sets = {s for s in self.policies.by_key.values() if s}
        if self.policies.capture:
            sets.add(frozenset(PII_ENTITIES))
        if catalogue is not None:
            for name in catalogue.names():
                declared = catalogue.resolve(name).manifest.redact
                if declared:
                    sets.add(frozenset(declared))
        return sets

    async def _warm(self, sets: set[frozenset[str]]) -> None:
        for entities in sorted(sets, key=sorted):
            try:
                await asyncio.to_thread(self.store.redactors.get, entities)
            except Exception:
                log.exception("building a redactor failed; it is built again on first use")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        queue, self._queue = self._queue, None
        if queue is not None and not queue.empty():
            rest = [queue.get_nowait() for _ in range(queue.qsize())]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._keep(rest), CAPTURE_STOP_S)


# -- OIP requests -------------------------------------------------------------------------------------------------


def _bytes_texts(inputs: Sequence[Tensor], version: VersionRecord) -> tuple[list[tuple[int, int]], list[str]]:
    """(input index, element index) and text of every text element of every BYTES input: each element must be
    UTF-8 text without NUL characters, or an audio or image file (``is_media``, left out); anything else is
    refused, naming it."""
    places: list[tuple[int, int]] = []
    texts: list[str] = []
    for i, tensor in enumerate(inputs):
        if tensor.datatype != "BYTES":
            continue
        for j, item in enumerate(tensor.data.reshape(-1)):
            text = _text_of(item)
            if text is None and isinstance(item, bytes) and is_media(item):
                continue  # a WAV, an image: no text of it is read, and it is sent as it is
            if text is None or "\x00" in text:
                model = version.model_name
                raise InvalidInput(
                    f"input {tensor.name!r} element {j}: model {model!r} has personal data redacted from its text "
                    "inputs, so each element must be UTF-8 text without NUL characters (or a WAV, FLAC, OGG, MP3, "
                    "MP4, WebM, PNG, JPEG, GIF, WebP, BMP or TIFF file); re-encode the text as UTF-8"
                )
            places.append((i, j))
            texts.append(text)
    return places, texts


def _text_of(item: Any) -> str | None:
    if not isinstance(item, bytes):
        return str(item)
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return None


def is_media(item: bytes) -> bool:
    """Whether ``item`` starts as an audio or image file does (``MEDIA_SIGNATURES``, RIFF WAVE or WEBP, BMP)."""
    if item[:4] == b"RIFF" and item[8:12] in (b"WAVE", b"WEBP"):
        return True
    if item[:2] == b"BM" and item[6:10] == b"\x00\x00\x00\x00" and len(item) >= 26:  # BMP: reserved words zero
        return True
    return any(item[at : at + len(magic)] == magic for at, magic in MEDIA_SIGNATURES)


def _replaced(inputs: Sequence[Tensor], places: list[tuple[int, int]], done: list[Redacted]) -> list[Tensor]:
    out = list(inputs)
    copies: dict[int, np.ndarray[Any, Any]] = {}
    for (i, j), redacted in zip(places, done, strict=True):
        if not redacted.changed:
            continue
        flat = copies.get(i)
        if flat is None:
            flat = copies[i] = inputs[i].data.reshape(-1).copy()
        flat[j] = redacted.text.encode("utf-8")
    for i, flat in copies.items():
        t = inputs[i]
        out[i] = Tensor(t.name, t.datatype, list(t.shape), flat.reshape(t.data.shape), dict(t.parameters))
    return out


def encode_request(request: oip.InferRequest) -> tuple[bytes, int]:
    """An OIP request in the binary tensor extension (every input as binary data): the body and the length of
    its JSON header. The request's id, parameters and requested outputs are kept as sent."""
    docs, blobs = [], []
    for tensor in request.inputs:
        if tensor.datatype == "BYTES":
            items = [x if isinstance(x, bytes) else str(x).encode("utf-8") for x in tensor.data.reshape(-1)]
            blob = b"".join(struct.pack("<I", len(x)) + x for x in items)
        else:
            dtype = oip.NUMPY_DTYPES[tensor.datatype].newbyteorder("<")
            blob = np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()
        parameters = {**tensor.parameters, "binary_data_size": len(blob)}
        docs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "parameters": parameters}
        )
        blobs.append(blob)
    head: dict[str, Any] = {"inputs": docs}
    if request.id is not None:
        head["id"] = request.id
    if request.parameters:
        head["parameters"] = request.parameters
    if request.outputs is not None:
        head["outputs"] = request.outputs
    header = orjson.dumps(head)
    return header + b"".join(blobs), len(header)


def describe_inputs(inputs: Sequence[Tensor]) -> str:
    """A call's inputs as text for capture: each BYTES input's text elements (an element that is not UTF-8, a WAV
    or an image, by its size), other inputs by type and shape."""
    lines = []
    for tensor in inputs:
        if tensor.datatype == "BYTES":
            for item in tensor.data.reshape(-1):
                text = _text_of(item)
                lines.append(f"{tensor.name}: {f'<{len(item)} bytes>' if text is None else text}")
        else:
            lines.append(f"{tensor.name}: <{tensor.datatype} {list(tensor.shape)}>")
    return "\n".join(lines)


def describe_answer(body: bytes, header_length: bytes | None) -> str:
    """An OIP answer as text for capture: its JSON (the header only, for a binary answer)."""
    if header_length is not None and header_length.isdigit():
        size = int(header_length)
        return body[:size].decode("utf-8", "replace") + f" (+{len(body) - size} bytes of binary tensor data)"
    return body.decode("utf-8", "replace")


# -- OpenAI requests ----------------------------------------------------------------------------------------------


_OPENAI_TEXT_FIELDS = ("messages", "prompt", "input", "stop")
"""The request fields a backend receives that can hold the caller's text (``openai_plane.FORWARDED``)."""
_OPENAI_KEPT_KEYS = frozenset({"role", "type"})
"""Keys whose string values are protocol words, never the caller's text: left as they are."""


def _openai_texts(raw: Mapping[str, Any]) -> list[str]:
    """Every string a backend would receive in the text fields (message contents, text parts, a message's name,
    prompts, string inputs, stop strings), in the order ``_openai_replaced`` puts them back."""
    texts: list[str] = []
    for name in _OPENAI_TEXT_FIELDS:
        if name in raw:
            _strings(raw[name], texts)
    return texts


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _OPENAI_KEPT_KEYS:
                _strings(item, out)


def _put_back(value: Any, texts: Iterator[str]) -> Any:
    if isinstance(value, str):
        return next(texts)
    if isinstance(value, list):
        return [_put_back(item, texts) for item in value]
    if isinstance(value, dict):
        return {k: v if k in _OPENAI_KEPT_KEYS else _put_back(v, texts) for k, v in value.items()}
    return value


def _openai_replaced(raw: Mapping[str, Any], texts: Iterator[str]) -> dict[str, Any]:
    out = dict(raw)
    for name in _OPENAI_TEXT_FIELDS:
        if name in raw:
            out[name] = _put_back(raw[name], texts)
    return out
