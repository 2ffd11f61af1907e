"""Chat models in GGUF files through llama.cpp (PyPI ``llama-cpp-python``), on the CPU.

Parameters (manifest ``parameters:``):

- ``model_file`` (required): artifact path of the ``.gguf`` file
- ``n_ctx``: context in tokens, prompt and reply together, ``MIN_N_CTX`` to ``MAX_N_CTX`` (default 2,048); a
  value above the context the model was trained with is lowered to it at load (``context_length`` says which)
- ``max_tokens``: reply length when a caller gives none, 1 to ``n_ctx`` (default 256)
- ``n_threads``: CPU threads for the prompt and for generation, 1 to ``MAX_THREADS`` (default 1, as the onnx
  runtime: the runner scales by replicas; llama.cpp's threads spin while they wait, so on a busy machine more
  threads than free cores is several times slower, measured 5x on the shared 2-core development machine)

The chat template is the GGUF's own (metadata ``tokenizer.chat_template``, rendered with the GGUF's bos and eos
tokens). A GGUF without one is refused at load: this runtime serves chat models, and its OIP interface is a
chat turn. Over the Open Inference Protocol the input ``text`` BYTES [1] is one user message and the output
``text`` BYTES [1] the reply; request parameters ``max_tokens``, ``temperature``, ``top_p`` and ``seed`` are
honoured, and ``last_usage`` holds ``(prompt_tokens, completion_tokens)`` of the last ``predict``.

Generation (``chat``, ``complete``): chunks are produced lazily, one per generated token, with exact running
counts: ``prompt_tokens`` are the tokens of the formatted prompt by the model's tokenizer, ``completion_tokens``
every token the model produced so far, an end-of-generation token included (it was sampled like any other).
Text is released in whole UTF-8 characters (a character split over tokens waits for its last byte; one cut off
by ``max_tokens`` is dropped) and with stop strings cut (text that may begin a stop string is held back until
it cannot). The last chunk has ``finish_reason``: ``stop`` (an end-of-generation token or a stop string) or
``length`` (``max_tokens``, or the room left in the context). Sampling: ``temperature`` 0 is greedy; otherwise
llama.cpp's chain of top-k ``TOP_K``, ``top_p`` (default ``DEFAULT_TOP_P``), min-p ``MIN_P``, ``temperature``
(default ``DEFAULT_TEMPERATURE``) with no repetition penalty. A ``seed`` (taken modulo 2**32, llama.cpp's seeds
being 32-bit) makes a reply reproducible: every generation starts from an empty context, so the same prompt,
parameters and seed give the same text. Without a seed llama.cpp draws one.

One generation at a time: the ``Llama`` object is not thread-safe, and the runner serialises calls. A lock is
held while a generation's iterator runs; starting a second one meanwhile raises ``RuntimeError`` instead of
waiting (waiting would freeze an event loop that interleaved the two). Close an iterator you stop early
(``close()``, or drop it) and the model is free again: no token is computed after the last one taken.
"""

from __future__ import annotations

import codecs
import ctypes
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import (
    GenerationChunk,
    GenerationParams,
    InputLimits,
    ModelSpec,
    Runtime,
    Tensor,
    TextGenerator,
    artifact_parameter,
    bytes_tensor,
    int_parameter,
    number_parameter,
    text_element,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_N_CTX",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_THREADS",
    "DEFAULT_TOP_P",
    "MAX_N_CTX",
    "MAX_PROMPT_BYTES",
    "MAX_TEMPERATURE",
    "MAX_THREADS",
    "MIN_N_CTX",
    "LlamaCppRuntime",
]

DEFAULT_N_CTX = 2048
MIN_N_CTX = 128
MAX_N_CTX = 32_768
DEFAULT_MAX_TOKENS = 256
MAX_THREADS = 64
DEFAULT_THREADS = 1
MAX_PROMPT_BYTES = 256 * 1024
"""One OIP message: ~8 bytes per token of the largest context; the context check then counts real tokens."""
DEFAULT_TEMPERATURE = 0.8  # llama.cpp's default
DEFAULT_TOP_P = 0.95  # llama.cpp's default
MAX_TEMPERATURE = 2  # as the OpenAI API
TOP_K = 40
MIN_P = 0.05
_SEED_MODULUS = 2**32
_SEED_LIMIT = 2**63  # seeds are 64-bit integers on the wire, as in the OpenAI API
_PIECE_BUFFER_BYTES = 64


@dataclass(frozen=True, slots=True)
class _Settings:
    model_file: str
    n_ctx: int
    max_tokens: int
    n_threads: int


def _settings(parameters: Mapping[str, Any], artifacts: Sequence[str]) -> _Settings:
    """The manifest parameters, checked; errors name the field."""
    model_file = artifact_parameter(parameters, "model_file", None, artifacts)
    if model_file is None:
        raise InvalidInput("parameters.model_file: required: name the package's .gguf file")
    if not model_file.endswith(".gguf"):
        raise InvalidInput(f"parameters.model_file: {model_file!r} is not a .gguf file; this runtime loads GGUF")
    n_ctx = int_parameter(parameters, "n_ctx", DEFAULT_N_CTX, MIN_N_CTX, MAX_N_CTX)
    max_tokens = int_parameter(parameters, "max_tokens", min(DEFAULT_MAX_TOKENS, n_ctx), 1, n_ctx)
    n_threads = int_parameter(parameters, "n_threads", DEFAULT_THREADS, 1, MAX_THREADS)
    return _Settings(model_file, n_ctx, max_tokens, n_threads)


@dataclass(frozen=True, slots=True)
class _Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]


def _llama_seed(seed: int | None) -> int:
    """A caller's seed as llama.cpp's 32-bit seed; ``LLAMA_DEFAULT_SEED`` (which means "draw one") is avoided."""
    if seed is None:
        return int(llama_cpp.LLAMA_DEFAULT_SEED)
    folded = seed % _SEED_MODULUS
    return folded - 1 if folded == llama_cpp.LLAMA_DEFAULT_SEED else folded


def _request_params(parameters: Mapping[str, Any], context_length: int) -> GenerationParams:
    """OIP request parameters as ``GenerationParams``; others (``binary_data_output``, ...) are not ours."""
    seed = parameters.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not -_SEED_LIMIT <= seed < _SEED_LIMIT
    ):
        raise InvalidInput(f"parameters.seed: must be a whole number of at most 64 bits, not {seed!r}")
    temperature = parameters.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= MAX_TEMPERATURE
    ):
        raise InvalidInput(f"parameters.temperature: must be a number from 0 to {MAX_TEMPERATURE}, not {temperature!r}")
    has = parameters.__contains__
    return GenerationParams(
        max_tokens=int_parameter(parameters, "max_tokens", 1, 1, context_length) if has("max_tokens") else None,
        temperature=None if temperature is None else float(temperature),
        top_p=number_parameter(parameters, "top_p", 1.0, 0.0, 1.0) if has("top_p") else None,
        seed=seed,
    )


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` that begin some stop string (and so may not be released yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class _TextStream:
    """Token bytes in, releasable text out: whole characters only, stop strings cut, their beginnings held back."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""

    def feed(self, data: bytes) -> tuple[str, bool]:
        """The text ``data`` releases, and whether a stop string ended it (the text is then what precedes it)."""
        text = self._held + self._decoder.decode(data)
        cuts = [at for at in (text.find(stop) for stop in self._stops) if at >= 0]
        if cuts:
            self._held = ""
            return text[: min(cuts)], True
        keep = _held_back(text, self._stops)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text at the end of a generation; the bytes of an unfinished character are dropped."""
        text, self._held = self._held, ""
        self._decoder.reset()
        return text


class LlamaCppRuntime(Runtime, TextGenerator):
    """A GGUF chat model; see the module docstring for parameters, counting and sampling."""

    name: ClassVar[str] = "llama-cpp"
    parameter_names: ClassVar[frozenset[str]] = frozenset({"model_file", "n_ctx", "max_tokens", "n_threads"})
    input_limits: ClassVar[InputLimits] = InputLimits(
        max_elements_per_call=1, max_element_bytes=MAX_PROMPT_BYTES, max_call_bytes=MAX_PROMPT_BYTES
    )

    last_usage: tuple[int, int] | None = None
    _llama: Llama
    _vocab: Any
    _formatter: Any
    _default_max_tokens: int
    _input_name: str

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self._lock = threading.Lock()  # held while a generation's iterator runs

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        _settings(parameters, artifacts)

    def load(self) -> None:
        settings = _settings(self.spec.parameters, self.spec.artifacts)
        path = self.spec.artifact(settings.model_file, "model_file")
        if not path.is_file():
            raise InvalidInput(f"model file {path.name!r} of model {self.spec.name!r} is missing")
        n_ctx = settings.n_ctx
        llama = self._open(path, n_ctx, settings.n_threads)
        trained = int(llama_cpp.llama_model_n_ctx_train(llama.model))
        if 0 < trained < n_ctx:  # beyond its training the model's positions mean nothing
            llama.close()
            n_ctx = max(trained, MIN_N_CTX)
            llama = self._open(path, n_ctx, settings.n_threads)
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            llama.close()
            raise InvalidInput(
                f"model file {path.name!r} has no chat template (GGUF metadata tokenizer.chat_template): the"
                " llama-cpp runtime serves chat models; package a chat or instruct GGUF"
            )
        self._llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(llama.token_eos()),
            bos_token=self._token_text(llama.token_bos()),
            add_generation_prompt=True,
        )
        self.context_length = min(n_ctx, int(llama.n_ctx()))  # llama.cpp rounds its context up to 256s
        self._default_max_tokens = min(settings.max_tokens, self.context_length)
        self._input_name = self.spec.inputs[0].name if self.spec.inputs else "text"

    @staticmethod
    def _open(path: Path, n_ctx: int, n_threads: int) -> Llama:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama_cpp.llama_vocab_get_text(self._vocab, token)).decode("utf-8", errors="replace")

    def _piece(self, token: int) -> bytes:
        """The bytes token ``token`` stands for in text (special tokens: none)."""
        buffer = ctypes.create_string_buffer(_PIECE_BUFFER_BYTES)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if size < 0:  # the piece is longer than the buffer: -size is its length
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    # -- TextGenerator --------------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def chat(self, messages: Sequence[Mapping[str, str]], params: GenerationParams) -> Iterator[GenerationChunk]:
        """The reply to ``messages`` with the model's chat template. Checks (and ``InvalidInput``) happen here, at
        the call; the model runs only as the returned iterator is advanced."""
        prompt = self._render(messages)
        tokens = self._llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        return self._start(tokens, params)

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[GenerationChunk]:
        """``prompt`` continued as plain text (special-token text in it is plain text too)."""
        tokens = self._llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        if not tokens:
            raise InvalidInput("prompt: empty; give some text to continue")
        return self._start(tokens, params)

    def _render(self, messages: Sequence[Mapping[str, str]]) -> str:
        if not messages:
            raise InvalidInput("messages: empty; give at least one message")
        plain: list[dict[str, str]] = []
        for index, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise InvalidInput(f"messages[{index}]: needs a role and a content, both strings")
            plain.append({"role": role, "content": content})
        try:
            return str(self._formatter(messages=plain).prompt)
        except (ValueError, jinja2.TemplateError) as exc:  # raise_exception() in a template raises ValueError
            raise InvalidInput(f"messages: the model's chat template refused them: {exc}") from None

    def _sampling(self, prompt_tokens: int, params: GenerationParams) -> _Sampling:
        room = self.context_length - prompt_tokens
        if room < 1:
            raise InvalidInput(
                f"the prompt is {prompt_tokens:,} tokens; the model's context is {self.context_length:,} tokens for"
                " prompt and reply together: shorten the prompt"
            )
        wanted = self._default_max_tokens if params.max_tokens is None else params.max_tokens
        if wanted < 1:
            raise InvalidInput(f"max_tokens: must be at least 1, not {wanted}")
        temperature = DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidInput(f"temperature: must be a number from 0 to {MAX_TEMPERATURE:g}, not {temperature}")
        top_p = DEFAULT_TOP_P if params.top_p is None else params.top_p
        if not 0 < top_p <= 1:
            raise InvalidInput(f"top_p: must be a number above 0 and at most 1, not {top_p}")
        return _Sampling(min(wanted, room), temperature, top_p, _llama_seed(params.seed), tuple(params.stop))

    def _start(self, tokens: list[int], params: GenerationParams) -> Iterator[GenerationChunk]:
        sampling = self._sampling(len(tokens), params)  # refuse now, before the caller starts a stream
        return self._generate(list(tokens), sampling)

    def _generate(self, tokens: list[int], sampling: _Sampling) -> Iterator[GenerationChunk]:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                "llama-cpp: a generation is already running on this model; run one at a time (finish or close the"
                " previous iterator first)"
            )
        try:
            yield from self._token_loop(tokens, sampling)
        finally:
            self._lock.release()

    def _token_loop(self, tokens: list[int], sampling: _Sampling) -> Iterator[GenerationChunk]:
        llama = self._llama
        # An empty context every time (no reuse of the last prompt), so a seed reproduces; reset() is unannotated.
        llama.reset()  # type: ignore[no-untyped-call]
        llama.set_seed(sampling.seed)
        prompt_tokens = len(tokens)
        stream = _TextStream(sampling.stop)
        generated = llama.generate(
            tokens, top_k=TOP_K, top_p=sampling.top_p, min_p=MIN_P, temp=sampling.temperature, repeat_penalty=1.0
        )
        produced = 0
        try:
            for token in generated:  # llama.cpp computes the next token only when asked for it
                produced += 1
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    yield GenerationChunk(stream.flush(), prompt_tokens, produced, "stop")
                    return
                text, stopped = stream.feed(self._piece(token))
                if stopped:
                    yield GenerationChunk(text, prompt_tokens, produced, "stop")
                    return
                if produced >= sampling.max_tokens:
                    yield GenerationChunk(text + stream.flush(), prompt_tokens, produced, "length")
                    return
                yield GenerationChunk(text, prompt_tokens, produced)
        finally:
            generated.close()

    # -- Open Inference Protocol ----------------------------------------------------------------------------------

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        """One user message in ``text``, the reply out; ``last_usage`` holds the token counts."""
        self.check_inputs(inputs)
        self.last_usage = None
        tensor = next((t for t in inputs if t.name == self._input_name), None)
        if tensor is None:
            raise InvalidInput(f"missing input {self._input_name!r}")
        items = tensor.data.reshape(-1)
        if len(items) != 1:
            raise InvalidInput(f"input {tensor.name!r}: one message per call, not {len(items)}")
        params = _request_params(parameters, self.context_length)
        chunks = list(self.chat([{"role": "user", "content": text_element(items[0])}], params))
        self.last_usage = (chunks[-1].prompt_tokens, chunks[-1].completion_tokens)
        reply = "".join(chunk.text for chunk in chunks)
        return [bytes_tensor("text", [reply.encode("utf-8")])]
