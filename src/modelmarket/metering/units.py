"""Inference Unit counting. Pure functions of the request's input tensors.

Unit kinds:

- ``image``: one IU per image; the images are the first dimension (the batch) of the first input tensor when
  it has two or more dimensions or holds BYTES (one encoded image per element); a numeric rank-1 tensor is one
  image. The first input is the first one the manifest *declares*, whatever order the client sends.
- ``tokens_1k``: one IU per 1,000 tokens of input text. Tokenizer: every BYTES element of every input is
  decoded as UTF-8 and split with the regular expression ``\\w+|[^\\w\\s]`` — a run of letters/digits/underscore
  is one token, and each other non-space character is one token (an element with none counts as one).
  IU = tokens / 1000, exact.
- ``audio_minute``: one IU per minute of audio, prorated per started second: each BYTES element is a WAV file,
  its duration is rounded up to the whole second (at least one), IU = seconds / 60.
- ``request``: one IU per call.

Every element costs at least one base unit: an empty text is one token, a WAV shorter than a second is one
second, so a call is never served for free however its inputs are shaped.

Counting yields a whole number of *base units* (images, tokens, seconds, requests); IU = base units / divisor.
The base count is what is billed: an amount is ``base units x price per IU / divisor``, kept as an exact
fraction until the invoice line rounds it once (1/60 has no exact decimal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from fractions import Fraction

from modelmarket.core.errors import InvalidInput
from modelmarket.core.tensors import Tensor
from modelmarket.core.wav import wav_duration_s

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MIN_BASE_UNITS_PER_ELEMENT = 1
"""The least an element is billed: an empty text is one token, a sub-second WAV one second."""


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def _utf8(tensor: Tensor, item: bytes) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {tensor.name!r}: text is not valid UTF-8") from None


def _count_tokens(inputs: Sequence[Tensor]) -> int:
    tokens = 0
    for tensor in inputs:
        if tensor.datatype != "BYTES":
            continue
        for item in tensor.data.reshape(-1):
            tokens += max(MIN_BASE_UNITS_PER_ELEMENT, count_tokens(_utf8(tensor, item)))
    return tokens


def _count_seconds(inputs: Sequence[Tensor]) -> int:
    seconds = 0
    for tensor in inputs:
        if tensor.datatype != "BYTES":
            continue
        for item in tensor.data.reshape(-1):
            seconds += max(MIN_BASE_UNITS_PER_ELEMENT, math.ceil(wav_duration_s(item)))
    return seconds


def _count_images(inputs: Sequence[Tensor]) -> int:
    first = inputs[0]
    batched = len(first.shape) >= 2 or first.datatype == "BYTES"
    return max(MIN_BASE_UNITS_PER_ELEMENT, first.shape[0]) if batched and first.shape else 1


def _count_requests(inputs: Sequence[Tensor]) -> int:
    return 1


class UnitKind(StrEnum):
    """The Inference Unit a model is priced in: its base unit, how many base units make one IU, its counter."""

    IMAGE = "image"
    TOKENS_1K = "tokens_1k"
    AUDIO_MINUTE = "audio_minute"
    REQUEST = "request"

    @property
    def divisor(self) -> int:
        """Base units per IU: 1 image, 1000 tokens, 60 seconds, 1 request."""
        return _DIVISOR[self]

    @property
    def base_unit(self) -> str:
        return _BASE_UNIT[self]

    def measure(self, inputs: Sequence[Tensor]) -> int:
        """The request's size in base units. ``inputs`` in the manifest's declared order (see module doc)."""
        if not inputs and self is not UnitKind.REQUEST:
            raise InvalidInput("a request needs at least one input tensor")
        return max(MIN_BASE_UNITS_PER_ELEMENT, _COUNTER[self](inputs))  # a served call is never free

    def iu(self, base_units: int) -> Fraction:
        """IU for a base-unit count, exactly."""
        return Fraction(base_units, self.divisor)

    @classmethod
    def parse(cls, value: str) -> UnitKind:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise InvalidInput(f"unknown unit kind {value!r} (known: {known})") from None


_DIVISOR = {UnitKind.IMAGE: 1, UnitKind.TOKENS_1K: 1000, UnitKind.AUDIO_MINUTE: 60, UnitKind.REQUEST: 1}
_BASE_UNIT = {
    UnitKind.IMAGE: "image",
    UnitKind.TOKENS_1K: "token",
    UnitKind.AUDIO_MINUTE: "second",
    UnitKind.REQUEST: "request",
}
_COUNTER: dict[UnitKind, Callable[[Sequence[Tensor]], int]] = {
    UnitKind.IMAGE: _count_images,
    UnitKind.TOKENS_1K: _count_tokens,
    UnitKind.AUDIO_MINUTE: _count_seconds,
    UnitKind.REQUEST: _count_requests,
}


def count_iu(unit_kind: UnitKind | str, inputs: Sequence[Tensor]) -> Fraction:
    """The request's size in IU, exactly."""
    kind = UnitKind.parse(unit_kind)
    return kind.iu(kind.measure(inputs))
