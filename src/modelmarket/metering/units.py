"""Inference Unit counting. Pure functions of the request's input tensors.

Unit kinds:

- ``image``: one IU per image; the images are the first dimension (the batch) of the first input tensor when
  it has two or more dimensions or holds BYTES (one encoded image per element); a numeric rank-1 tensor is one
  image.
- ``tokens_1k``: one IU per 1,000 tokens of input text. Tokenizer: every BYTES element of every input is
  decoded as UTF-8 and split with the regular expression ``\\w+|[^\\w\\s]`` — a run of letters/digits/underscore
  is one token, and each other non-space character is one token. IU = tokens / 1000, exact.
- ``audio_minute``: one IU per minute of audio, prorated per started second: each BYTES element is a WAV file,
  its duration is rounded up to the whole second, IU = seconds / 60.
- ``request``: one IU per call.

Counting yields a whole number of *base units* (images, tokens, seconds, requests); IU = base units / divisor.
The base count is what is billed: an amount is ``base units x price per IU / divisor``, kept as an exact
fraction until the invoice line rounds it once (1/60 has no exact decimal).
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
UNIT_DIVISOR = {"image": 1, "tokens_1k": 1000, "audio_minute": 60, "request": 1}
BASE_UNIT = {"image": "image", "tokens_1k": "token", "audio_minute": "second", "request": "request"}


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


def count_units(unit_kind: str, inputs: Sequence[Tensor]) -> int:
    """The request's size in base units of ``unit_kind`` (see the module docstring)."""
    if unit_kind == "request":
        return 1
    if unit_kind == "image":
        first = inputs[0]
        batched = len(first.shape) >= 2 or first.datatype == "BYTES"
        return first.shape[0] if batched and first.shape else 1
    if unit_kind == "tokens_1k":
        return sum(count_tokens(text) for text in _text_elements(inputs))
    if unit_kind == "audio_minute":
        return _audio_seconds(inputs)
    raise InvalidInput(f"unknown unit kind {unit_kind!r}")


def iu_from_units(unit_kind: str, units: int) -> Decimal:
    """IU for a base-unit count: exact when the divisor is a power of ten, else 28 significant digits."""
    return _CTX.divide(Decimal(units), Decimal(UNIT_DIVISOR[unit_kind]))


def count_iu(unit_kind: str, inputs: Sequence[Tensor]) -> Decimal:
    return iu_from_units(unit_kind, count_units(unit_kind, inputs))
