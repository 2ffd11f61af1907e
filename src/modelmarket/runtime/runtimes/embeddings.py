"""Sentence embeddings from a BERT-style sentence-transformers model (all-MiniLM-L6-v2 and its kin), in numpy.

The model is read from its Hugging Face files: ``model.safetensors`` (the weights, with or without the ``bert.``
prefix), ``tokenizer.json`` (run by ``tokenizers``) and ``config.json`` (sizes, ``layer_norm_eps``). The forward
pass is float32 numpy, no torch: word + position + token-type embeddings and LayerNorm, then per layer
self-attention with the attention mask, a residual and LayerNorm, a GELU feed-forward (the exact erf form, BERT's
``gelu``), a residual and LayerNorm; then mean pooling over the attention mask and L2 normalisation. That is what
sentence-transformers computes for this model (``Transformer`` -> ``Pooling(mean)`` -> ``Normalize``).

Inputs are strings, or token id lists: the text's tokens without the special tokens (``[CLS]`` and ``[SEP]`` are
added to both, and both are truncated to ``max_seq_length`` tokens, the special ones included). Inputs are
sorted by length and run in chunks padded to the longest in the chunk (as sentence-transformers does), so a
batch gives what one-by-one calls give, to float32 rounding.

OIP interface: input ``text`` BYTES [-1] (UTF-8), output ``embedding`` FP32 [-1, dimensions]. After each
``predict``, ``last_usage`` is ``(tokens, 0)``: the tokens processed (after truncation, special tokens included).

Parameters (manifest ``parameters:``):

- ``model_file``, ``tokenizer_file``, ``config_file``: artifact paths (defaults ``model.safetensors``,
  ``tokenizer.json``, ``config.json``)
- ``max_seq_length``: tokens per input, special tokens included, ``MIN_SEQ_LENGTH`` to ``MAX_SEQ_LENGTH``
  (default 256, the model's own); at most the config's ``max_position_embeddings``
- ``pooling``: ``mean`` (the only one)
- ``n_threads``: BLAS threads of one call, 1 to ``MAX_THREADS`` (default 1, as the onnx runtime: the runner
  scales by replicas; OpenBLAS threads spin while they wait, so on a busy machine more threads than free cores is
  several times slower, measured 4x on the shared 2-core development machine)

Bounds on one call: ``MAX_BATCH`` inputs, ``MAX_ELEMENT_BYTES`` per text (longer texts are truncated anyway,
so the bound only caps the tokenizer's work), ``MAX_CALL_BYTES`` in all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from threadpoolctl import ThreadpoolController
from tokenizers import Tokenizer

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import (
    Embedder,
    Embeddings,
    InputLimits,
    Runtime,
    Tensor,
    artifact_parameter,
    int_parameter,
    text_element,
    text_parameter,
)

__all__ = [
    "DEFAULT_MAX_SEQ_LENGTH",
    "MAX_BATCH",
    "MAX_CALL_BYTES",
    "MAX_ELEMENT_BYTES",
    "MAX_SEQ_LENGTH",
    "MAX_THREADS",
    "MIN_SEQ_LENGTH",
    "SentenceEmbeddingRuntime",
    "erf",
    "gelu",
]

DEFAULT_MODEL_FILE = "model.safetensors"
DEFAULT_TOKENIZER_FILE = "tokenizer.json"
DEFAULT_CONFIG_FILE = "config.json"
DEFAULT_MAX_SEQ_LENGTH = 256
MIN_SEQ_LENGTH = 8
MAX_SEQ_LENGTH = 512
MAX_BATCH = 256
DEFAULT_THREADS = 1
MAX_THREADS = 64
MAX_ELEMENT_BYTES = 64 * 1024
MAX_CALL_BYTES = 4 * 1024 * 1024
POOLINGS = ("mean",)
CHUNK_SCORE_ELEMENTS = 4 * 1024 * 1024
"""Attention scores (inputs x heads x tokens x tokens) held at once: 16 MiB of float32 per chunk of inputs."""
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps, as sentence-transformers' Normalize uses it
_POOL_EPS = 1e-9  # sentence-transformers' Pooling clamps the token count to this

# Abramowitz and Stegun 7.1.26: |error| <= 1.5e-7 (with float32 rounding, 5e-7 measured), about 4 float32 ulp of
# values near 1. Beyond |x| = 4, erf(x) rounds to +-1 in float32, so |x| is clamped there (no denormals in exp).
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))
_ERF_CLAMP = np.float32(4.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_SQRT_HALF = np.float32(1.0 / math.sqrt(2.0))

Array = npt.NDArray[np.float32]


def erf(x: Array) -> Array:
    """The error function, elementwise in float32, to within 5e-7 (numpy has none; scipy's is 3x slower)."""
    ax = np.minimum(np.abs(x), _ERF_CLAMP)
    t = np.multiply(ax, _ERF_P)
    t += _ONE
    np.reciprocal(t, out=t)
    poly = np.multiply(t, _ERF_A[0])
    for coefficient in _ERF_A[1:]:  # Horner, in place: one pass over the array per step
        poly += coefficient
        poly *= t
    np.multiply(ax, ax, out=ax)
    np.negative(ax, out=ax)
    np.exp(ax, out=ax)
    poly *= ax  # erfc(|x|)
    np.subtract(_ONE, poly, out=poly)
    np.copysign(poly, x, out=poly)
    return poly


def gelu(x: Array) -> Array:
    """BERT's ``gelu``: ``x * (1 + erf(x / sqrt(2))) / 2`` (the exact form, not the tanh approximation)."""
    out = erf(np.multiply(x, _SQRT_HALF))
    out += _ONE
    out *= _HALF
    out *= x
    return out


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return np.asarray(centred / np.sqrt(variance + np.float32(eps)) * weight + bias, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_weight: Array  # (hidden, 3 * hidden): query, key and value in one matmul
    qkv_bias: Array
    out_weight: Array
    out_bias: Array
    attention_norm: tuple[Array, Array]
    up_weight: Array
    up_bias: Array
    down_weight: Array
    down_bias: Array
    output_norm: tuple[Array, Array]


@dataclass(frozen=True, slots=True)
class _Bert:
    word: Array
    position: Array
    token_type: Array
    embedding_norm: tuple[Array, Array]
    layers: tuple[_Layer, ...]
    heads: int
    eps: float

    def encode(self, ids: npt.NDArray[np.int64], mask: Array) -> Array:
        """Hidden states (batch, tokens, hidden) for ``ids`` padded to one length, ``mask`` 1 for real tokens."""
        batch, length = ids.shape
        hidden = self.word.shape[1]
        h = self.word[ids] + self.position[:length] + self.token_type[0]
        h = _layer_norm(h.reshape(batch * length, hidden), *self.embedding_norm, self.eps)
        # Masked keys get the lowest float32, as transformers does: exp() of it is exactly 0.
        key_bias = ((1.0 - mask) * np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        for layer in self.layers:
            h = self._layer(layer, h, key_bias, batch, length)
        return h.reshape(batch, length, hidden)

    def _layer(self, layer: _Layer, h: Array, key_bias: Array, batch: int, length: int) -> Array:
        hidden = h.shape[1]
        size = hidden // self.heads
        qkv = (h @ layer.qkv_weight + layer.qkv_bias).reshape(batch, length, 3, self.heads, size)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (batch, heads, tokens, size)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(size)) + key_bias
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
        h = _layer_norm(context @ layer.out_weight + layer.out_bias + h, *layer.attention_norm, self.eps)
        up = gelu(h @ layer.up_weight + layer.up_bias)
        return _layer_norm(up @ layer.down_weight + layer.down_bias + h, *layer.output_norm, self.eps)


def _weights(path: Path, config: Mapping[str, Any]) -> _Bert:
    """The BERT encoder in ``path`` (tensor names with or without the ``bert.`` prefix), weights transposed."""
    raw = load_file(str(path))
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in raw else ""

    def get(name: str) -> Array:
        tensor = raw.get(prefix + name)
        if tensor is None:
            raise InvalidInput(f"model file {path.name!r} has no tensor {prefix + name!r}: it is not a BERT model")
        return np.ascontiguousarray(tensor, dtype=np.float32)

    def norm(name: str) -> tuple[Array, Array]:
        return get(f"{name}.LayerNorm.weight"), get(f"{name}.LayerNorm.bias")

    def linear_t(name: str) -> Array:  # torch's Linear stores (out, in); x @ W.T, contiguous
        return np.ascontiguousarray(get(f"{name}.weight").T)

    layers = []
    for index in range(int(config["num_hidden_layers"])):
        base = f"encoder.layer.{index}"
        attention = f"{base}.attention.self"
        layers.append(
            _Layer(
                qkv_weight=np.ascontiguousarray(
                    np.concatenate([linear_t(f"{attention}.{part}") for part in ("query", "key", "value")], axis=1)
                ),
                qkv_bias=np.concatenate([get(f"{attention}.{part}.bias") for part in ("query", "key", "value")]),
                out_weight=linear_t(f"{base}.attention.output.dense"),
                out_bias=get(f"{base}.attention.output.dense.bias"),
                attention_norm=norm(f"{base}.attention.output"),
                up_weight=linear_t(f"{base}.intermediate.dense"),
                up_bias=get(f"{base}.intermediate.dense.bias"),
                down_weight=linear_t(f"{base}.output.dense"),
                down_bias=get(f"{base}.output.dense.bias"),
                output_norm=norm(f"{base}.output"),
            )
        )
    return _Bert(
        word=get("embeddings.word_embeddings.weight"),
        position=get("embeddings.position_embeddings.weight"),
        token_type=get("embeddings.token_type_embeddings.weight"),
        embedding_norm=norm("embeddings"),
        layers=tuple(layers),
        heads=int(config["num_attention_heads"]),
        eps=float(config.get("layer_norm_eps", 1e-12)),
    )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"config file {path.name!r} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"config file {path.name!r} is not a JSON object")
    wanted = ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")
    missing = [key for key in wanted if not isinstance(config.get(key), int)]
    if missing:
        raise InvalidInput(f"config file {path.name!r} lacks {', '.join(missing)}: it is not a BERT config")
    if config.get("hidden_act", "gelu") != "gelu":
        raise InvalidInput(f"config file {path.name!r}: hidden_act {config['hidden_act']!r}; this runtime runs gelu")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise InvalidInput(f"config file {path.name!r}: only absolute position embeddings are supported")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise InvalidInput(f"config file {path.name!r}: hidden_size is not a multiple of num_attention_heads")
    return config


class SentenceEmbeddingRuntime(Runtime, Embedder):
    """A BERT sentence-transformers model: mean-pooled, L2-normalised sentence vectors."""

    name: ClassVar[str] = "sentence-embeddings"
    parameter_names: ClassVar[frozenset[str]] = frozenset(
        {"model_file", "tokenizer_file", "config_file", "max_seq_length", "pooling", "n_threads"}
    )
    input_limits: ClassVar[InputLimits] = InputLimits(
        max_elements_per_call=MAX_BATCH, max_element_bytes=MAX_ELEMENT_BYTES, max_call_bytes=MAX_CALL_BYTES
    )
    max_batch = MAX_BATCH

    last_usage: tuple[int, int] | None = None
    _bert: _Bert
    _tokenizer: Tokenizer
    _max_seq_length: int
    _cls_id: int
    _sep_id: int
    _pad_id: int
    _input_name: str
    _n_threads: int
    _blas: Any

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        artifact_parameter(parameters, "model_file", DEFAULT_MODEL_FILE, artifacts)
        artifact_parameter(parameters, "tokenizer_file", DEFAULT_TOKENIZER_FILE, artifacts)
        artifact_parameter(parameters, "config_file", DEFAULT_CONFIG_FILE, artifacts)
        int_parameter(parameters, "max_seq_length", DEFAULT_MAX_SEQ_LENGTH, MIN_SEQ_LENGTH, MAX_SEQ_LENGTH)
        text_parameter(parameters, "pooling", "mean", POOLINGS)
        int_parameter(parameters, "n_threads", DEFAULT_THREADS, 1, MAX_THREADS)

    def load(self) -> None:
        params = self.spec.parameters
        paths = {
            key: self.spec.artifact(params.get(key, default), key)
            for key, default in (
                ("model_file", DEFAULT_MODEL_FILE),
                ("tokenizer_file", DEFAULT_TOKENIZER_FILE),
                ("config_file", DEFAULT_CONFIG_FILE),
            )
        }
        for path in paths.values():
            if not path.is_file():
                raise InvalidInput(f"artifact {path.name!r} of model {self.spec.name!r} is missing")
        text_parameter(params, "pooling", "mean", POOLINGS)
        self._n_threads = int_parameter(params, "n_threads", DEFAULT_THREADS, 1, MAX_THREADS)
        self._blas = ThreadpoolController()
        config = _read_config(paths["config_file"])
        max_seq_length = int_parameter(params, "max_seq_length", DEFAULT_MAX_SEQ_LENGTH, MIN_SEQ_LENGTH, MAX_SEQ_LENGTH)
        if max_seq_length > config["max_position_embeddings"]:
            raise InvalidInput(
                f"parameters.max_seq_length: {max_seq_length} is more than the model's max_position_embeddings"
                f" ({config['max_position_embeddings']})"
            )
        self._max_seq_length = max_seq_length
        self._bert = _weights(paths["model_file"], config)
        self._load_tokenizer(paths["tokenizer_file"])
        vocab, hidden = self._bert.word.shape
        if self._tokenizer.get_vocab_size() > vocab or hidden != config["hidden_size"]:
            raise InvalidInput(
                f"the tokenizer ({self._tokenizer.get_vocab_size():,} tokens), the config (hidden_size"
                f" {config['hidden_size']}) and the weights ({vocab:,} x {hidden}) do not belong together"
            )
        self.dimensions = hidden
        self._input_name = self.spec.inputs[0].name if self.spec.inputs else "text"

    def _load_tokenizer(self, path: Path) -> None:
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()  # tokenizer.json pads to 128; the runtime pads per chunk itself
        tokenizer.enable_truncation(max_length=self._max_seq_length)
        ids: list[int] = []
        for token in ("[CLS]", "[SEP]", "[PAD]"):
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise InvalidInput(f"tokenizer file {path.name!r} has no {token} token: it is not a BERT tokenizer")
            ids.append(int(token_id))
        self._cls_id, self._sep_id, self._pad_id = ids
        self._tokenizer = tokenizer

    # -- Embedder -------------------------------------------------------------------------------------------------

    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> Embeddings:
        """Embed each input (a string, or token ids without special tokens); see the module docstring."""
        sequences = self._token_ids(inputs)
        vectors = np.empty((len(sequences), self.dimensions), dtype=np.float32)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        with self._blas.limit(limits=self._n_threads, user_api="blas"):
            self._embed_sorted(sequences, order, vectors)
        return Embeddings(vectors=vectors, tokens=sum(len(s) for s in sequences))

    def _embed_sorted(self, sequences: list[list[int]], order: list[int], vectors: Array) -> None:
        """Fill ``vectors`` chunk by chunk along ``order`` (inputs sorted by length, so chunks pad little)."""
        start = 0
        while start < len(order):
            longest = len(sequences[order[start]])
            end = start + 1
            while end < len(order):  # grow the chunk while its padded scores stay within the bound
                longest = max(longest, len(sequences[order[end]]))
                if (end + 1 - start) * self._bert.heads * longest * longest > CHUNK_SCORE_ELEMENTS:
                    break
                end += 1
            chunk = order[start:end]
            vectors[chunk] = self._embed_padded([sequences[i] for i in chunk])
            start = end

    def _token_ids(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Each input's ids with ``[CLS]``/``[SEP]``, truncated to ``max_seq_length``; bad input refused."""
        if len(inputs) == 0:
            raise InvalidInput("input: no inputs; give at least one text or token id list")
        if len(inputs) > self.max_batch:
            raise InvalidInput(
                f"input: {len(inputs):,} inputs; the limit is {self.max_batch:,} per call: split the request"
            )
        texts = {i: item for i, item in enumerate(inputs) if isinstance(item, str)}
        for index, text in texts.items():
            if not text:
                raise InvalidInput(f"input {index}: empty text; give at least one character")
        encoded = dict(zip(texts, self._tokenizer.encode_batch(list(texts.values())), strict=True))
        vocab = self._bert.word.shape[0]
        out: list[list[int]] = []
        for index, item in enumerate(inputs):
            if index in encoded:
                out.append(list(encoded[index].ids))
                continue
            ids = _id_list(item, index, vocab)
            out.append([self._cls_id, *ids[: self._max_seq_length - 2], self._sep_id])
        return out

    def _embed_padded(self, sequences: list[list[int]]) -> Array:
        length = max(len(s) for s in sequences)
        ids = np.full((len(sequences), length), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.float32)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1.0
        hidden = self._bert.encode(ids, mask)
        summed = np.einsum("bth,bt->bh", hidden, mask)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), _POOL_EPS)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, _NORM_EPS), dtype=np.float32)

    # -- Open Inference Protocol ----------------------------------------------------------------------------------

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        self.check_inputs(inputs)
        self.last_usage = None
        tensor = next((t for t in inputs if t.name == self._input_name), None)
        if tensor is None:
            raise InvalidInput(f"missing input {self._input_name!r}")
        texts = [text_element(item, index) for index, item in enumerate(tensor.data.reshape(-1))]
        result = self.embed(texts)
        self.last_usage = (result.tokens, 0)
        vectors = result.vectors
        return [Tensor(name="embedding", datatype="FP32", shape=list(vectors.shape), data=vectors)]


def _id_list(item: object, index: int, vocab: int) -> list[int]:
    """``item`` as a list of token ids in ``[0, vocab)``, or ``InvalidInput`` naming the input and position."""
    if isinstance(item, str | bytes | bytearray) or not isinstance(item, Sequence | np.ndarray):
        raise InvalidInput(f"input {index}: must be a string or a list of token ids, not {type(item).__name__}")
    ids: list[int] = []
    for position, value in enumerate(item):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InvalidInput(f"input {index}: token {position} is {value!r}, not a token id (a whole number)")
        if not 0 <= value < vocab:
            raise InvalidInput(
                f"input {index}: token id {value} at position {position} is outside the vocabulary (0 to {vocab - 1})"
            )
        ids.append(int(value))
    if not ids:
        raise InvalidInput(f"input {index}: empty token id list; give at least one token")
    return ids
