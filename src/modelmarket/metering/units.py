"""Inference Unit counting. Pure functions of the request's input tensors.

Unit kinds:

- ``image``: one IU per image; the images are the first dimension (the batch) of the first input tensor when
  it has two or more dimensions or holds BYTES (one encoded image per element); a numeric rank-1 tensor is one
  image.
- ``tokens_1k``: one IU per 1,000 tokens of input text. Tokenizer: every BYTES element of every input is
  decoded as UTF-8 and split with the regular expression ``\\w+|[^\\w\\s]`` — a run of letters/digits/underscore
  is one token, and each other non-space character is one token. IU = tokens / 1000, exact.
- ``audio_minute``: one IU per minute of audio, prorated per started second: each BYTES element is a WAV file,
  its duration is rounded up to the whole second, IU = seconds / 60 (a Decimal at 28 significant digits).
- ``request``: one IU per call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Context, Decimal

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Tensor
from modelmarket.runtime.wav import wav_duration_s

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_CTX = Context(prec=28)
_THOUSAND = Decimal(1000)
_SIXTY = Decimal(60)


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def _text_elements(inputs: Sequence[Tensor]) -> list[str]:
    texts = []
    for tensor in inputs:
        if tensor.datatype != "BYTES":
            continue
        for item in tensor.data.reshape(-1):
            try:
                texts.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(f"input {tensor.name!r}: text is not valid UTF-8") from None
    return texts


def _audio_seconds(inputs: Sequence[Tensor]) -> int:
    seconds = 0
    for tensor in inputs:
        if tensor.datatype != "BYTES":
            continue
        for item in tensor.data.reshape(-1):
            seconds += math.ceil(wav_duration_s(item))
    return seconds


def count_iu(unit_kind: str, inputs: Sequence[Tensor]) -> Decimal:
    if unit_kind == "request":
        return Decimal(1)
    if unit_kind == "image":
        first = inputs[0]
        batched = len(first.shape) >= 2 or first.datatype == "BYTES"
        return Decimal(first.shape[0] if batched and first.shape else 1)
    if unit_kind == "tokens_1k":
        tokens = sum(count_tokens(text) for text in _text_elements(inputs))
        return Decimal(tokens) / _THOUSAND
    if unit_kind == "audio_minute":
        return _CTX.divide(Decimal(_audio_seconds(inputs)), _SIXTY)
    raise InvalidInput(f"unknown unit kind {unit_kind!r}")
