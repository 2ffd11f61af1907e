"""VADER rule-based sentiment (PyPI ``vaderSentiment``), with its lexicons shipped as model artifacts.

Input ``text`` BYTES [-1], each element UTF-8 text. Outputs ``scores`` FP32 [-1, 4] (neg, neu, pos, compound)
and ``label`` BYTES [-1]: ``positive`` when compound >= 0.05, ``negative`` when compound <= -0.05, else
``neutral`` (the thresholds of the VADER paper).

Parameters (manifest ``parameters:``):

- ``lexicon``: artifact path of the word lexicon (default ``vader_lexicon.txt``)
- ``emoji_lexicon``: artifact path of the emoji lexicon (default ``emoji_utf8_lexicon.txt``)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Runtime, Tensor, bytes_tensor

__all__ = ["VaderRuntime", "sentiment_label"]

POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05
_SCORE_KEYS = ("neg", "neu", "pos", "compound")


def sentiment_label(compound: float) -> bytes:
    """The label VADER's authors recommend for a compound score."""
    if compound >= POSITIVE_THRESHOLD:
        return b"positive"
    if compound <= NEGATIVE_THRESHOLD:
        return b"negative"
    return b"neutral"


def _decode(item: object, index: int) -> str:
    if isinstance(item, bytes | bytearray):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"text element {index} is not valid UTF-8") from None
    if isinstance(item, str):
        return item
    raise InvalidInput(f"text element {index} is {type(item).__name__}, expected UTF-8 bytes")


class VaderRuntime(Runtime):
    name: ClassVar[str] = "vader"

    _analyzer: SentimentIntensityAnalyzer
    _input_name: str

    def load(self) -> None:
        lexicon = self.spec.artifact(str(self.spec.parameters.get("lexicon", "vader_lexicon.txt")))
        emoji = self.spec.artifact(str(self.spec.parameters.get("emoji_lexicon", "emoji_utf8_lexicon.txt")))
        for path in (lexicon, emoji):
            if not path.is_file():
                raise InvalidInput(f"lexicon {path.name!r} of model {self.spec.name!r} is missing")
        # vaderSentiment joins the names to its own package directory; absolute paths win that join.
        self._analyzer = SentimentIntensityAnalyzer(
            lexicon_file=str(lexicon.resolve()), emoji_lexicon=str(emoji.resolve())
        )
        self._input_name = self.spec.inputs[0].name if self.spec.inputs else "text"

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        tensor = next((t for t in inputs if t.name == self._input_name), None)
        if tensor is None:
            raise InvalidInput(f"missing input {self._input_name!r}")
        items = tensor.data.reshape(-1)
        scores = np.empty((len(items), len(_SCORE_KEYS)), dtype=np.float32)
        labels: list[bytes] = []
        for index, item in enumerate(items):
            polarity = self._analyzer.polarity_scores(_decode(item, index))
            scores[index] = [polarity[key] for key in _SCORE_KEYS]
            labels.append(sentiment_label(polarity["compound"]))
        return [
            Tensor(name="scores", datatype="FP32", shape=list(scores.shape), data=scores),
            bytes_tensor("label", labels),
        ]
